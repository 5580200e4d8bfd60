"""The artifact contract: edge vectors in, atomic energies and edge forces out (see docs in README).

`EdgeForceModel` is both what training differentiates through and what export compiles, so the
eager model, the artifact and LAMMPS share one definition of forces and virials.
"""

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..nn import scatter_sum
from ..nn.execution import center_groups, in_python, sorted_by_center


class EdgeForceModel(nn.Module):
    """(edge_vectors, edge_index, atom_types, n_local) -> (atomic_energy (N,), edge_forces (E,3))

    edge_forces = dE_local/dr_ij with E_local the sum of atomic energies of nodes [0, n_local).
    Both outputs are float64. Eager inference of a strictly local model runs in groups of whole centers of
    the model's `edges_per_group` edges: every per-edge intermediate then stays cache- and allocator-sized,
    and peak memory no longer grows with the graph.
    """

    execution: str

    def __init__(self, model: nn.Module, create_graph: bool = False):
        super().__init__()
        self.model = model
        self.create_graph = create_graph
        self.execution = "eager"

    def forward(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, atom_types: torch.Tensor, n_local: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if (
            not torch.jit.is_scripting()
            and in_python(self.execution)
            and not self.create_graph
            and hasattr(self.model, "center_energies")
            and edge_vectors.shape[0] > self.model.edges_per_group > 0
        ):
            return self._by_center_groups(edge_vectors, edge_index, atom_types, n_local)
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

    @torch.jit.unused
    def _by_center_groups(self, edge_vectors, edge_index, atom_types, n_local):
        """The same outputs, computed group by group of consecutive centers (strictly local models only):
        a center's energy depends on its own edges alone, and an edge vector r_ij on E_i alone."""
        edge_vectors, edge_index, order = sorted_by_center(edge_vectors, edge_index)
        center = edge_index[0]
        center_type, neighbor_type = atom_types[center], atom_types[edge_index[1]]
        atomic_energy = self.model.isolated_energies(atom_types)
        edge_forces = torch.empty(edge_vectors.shape, dtype=torch.float64, device=edge_vectors.device)
        for (e0, e1), (n0, n1) in center_groups(center, atom_types.shape[0], self.model.edges_per_group):
            vectors = edge_vectors[e0:e1].detach().requires_grad_(True)
            energy = self.model.center_energies(
                vectors, center[e0:e1] - n0, center_type[e0:e1], neighbor_type[e0:e1], atom_types[n0:n1]
            )
            local = torch.arange(n0, n1, device=energy.device) < n_local
            (grad,) = torch.autograd.grad([torch.where(local, energy, torch.zeros_like(energy)).sum()], [vectors])
            edge_forces[e0:e1] = grad
            atomic_energy[n0:n1] = energy.detach()
        if order is not None:
            edge_forces = torch.empty_like(edge_forces).index_copy_(0, order, edge_forces)
        return atomic_energy, edge_forces


def atom_forces(edge_forces: torch.Tensor, edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """F = -dE/dx from g_ij = dE/dr_ij, r_ij = x_j - x_i: F_i += g_ij, F_j -= g_ij."""
    return scatter_sum(edge_forces, edge_index[0], num_nodes) - scatter_sum(edge_forces, edge_index[1], num_nodes)


def edge_virials(edge_forces: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
    """Per-edge virial -r_ij (x) g_ij, shape (E, 3, 3); summed it is W = -V sigma."""
    return -edge_vectors.unsqueeze(-1) * edge_forces.unsqueeze(-2)
