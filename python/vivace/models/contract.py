"""The artifact contract: edge vectors in, atomic energies and edge forces out (see docs in README).

`EdgeForceModel` is both what training differentiates through and what export compiles, so the
eager model, the artifact and LAMMPS share one definition of forces and virials.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..nn import scatter_sum


class EdgeForceModel(nn.Module):
    """(edge_vectors, edge_index, atom_types, n_local) -> (atomic_energy (N,), edge_forces (E,3))

    edge_forces = dE_local/dr_ij with E_local the sum of atomic energies of nodes [0, n_local).
    Both outputs are float64.
    """

    def __init__(self, model: nn.Module, create_graph: bool = False):
        super().__init__()
        self.model = model
        self.create_graph = create_graph

    def forward(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, atom_types: torch.Tensor, n_local: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if not edge_vectors.requires_grad:
            edge_vectors = edge_vectors.detach().requires_grad_(True)
        atomic_energy = self.model(edge_vectors, edge_index, atom_types)
        local = torch.arange(atomic_energy.shape[0], device=atomic_energy.device) < n_local
        local_energy = torch.where(local, atomic_energy, torch.zeros_like(atomic_energy)).sum()
        grads: List[Optional[torch.Tensor]] = torch.autograd.grad(
            [local_energy], [edge_vectors], create_graph=self.create_graph, allow_unused=True
        )
        edge_forces = grads[0]
        if edge_forces is None:
            edge_forces = torch.zeros_like(edge_vectors)
        return atomic_energy, edge_forces.to(torch.float64)


def atom_forces(edge_forces: torch.Tensor, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """F = -dE/dx from g_ij = dE/dr_ij, r_ij = x_j - x_i: F_i += g_ij, F_j -= g_ij."""
    return scatter_sum(edge_forces, edge_index[0], num_nodes) - scatter_sum(edge_forces, edge_index[1], num_nodes)


def edge_virials(edge_forces: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
    """Per-edge virial -r_ij (x) g_ij, shape (E, 3, 3); summed it is W = -V sigma."""
    return -edge_vectors.unsqueeze(-1) * edge_forces.unsqueeze(-2)
