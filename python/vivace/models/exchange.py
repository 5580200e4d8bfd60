"""NequIP cut at its layers, for LAMMPS ranks that exchange node features instead of recomputing a ghost shell.

A rank's graph holds its own atoms as centers, nodes [0, Nc), and after them the other nodes that their edges
reach (ghost atoms within one cutoff), nodes [Nc, N). Every edge starts at a center. Each program below gives
the centers' features after one block; between programs the caller fills the other nodes' rows with the
features their owners computed (forward exchange), and on the way back adds the gradients with respect to
those rows to their owners (reverse exchange):

    h_1 = layer_0(g)                                             fill h_1
    h_k+1 = layer_k(g, h_k)                  k = 1 .. L-1        fill h_k+1 (not h_L)
    e, dE/dh_L, dE/dr = readout(g, h_L)
    dE/dh_k, dE/dr += layer_k_vjp(g, h_k, dE/dh_k+1)    k = L-1 .. 1    drain dE/dh_k
    dE/dr += layer_0_vjp(g, dE/dh_1)

E is the sum of the centers' energies. A vector-Jacobian program runs its block forward again: nothing is
kept between programs, so every program has plain tensors in and out and compiles on its own.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn



def program_names(num_layers: int) -> List[str]:
    names = [f"exchange_layer_{k}" for k in range(num_layers)]
    names += [f"exchange_layer_{k}_vjp" for k in range(num_layers)]
    return names + ["exchange_readout"]


def feature_widths(model: nn.Module) -> List[int]:
    """The width of h_k, k = 1 .. L: the features after each block."""
    return [block.irreps_out.dim for block in model.blocks]


class _Program(nn.Module):
    def __init__(self, model: nn.Module, k: int = 0):
        super().__init__()
        self.model = model
        self.k = k

    def block(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        center_types: torch.Tensor,
        other_types: torch.Tensor,
        h_centers: Optional[torch.Tensor],
        h_others: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """The centers' features after block k."""
        atom_types = torch.cat([center_types, other_types])
        _, _, basis, sh = self.model.edge_geometry(edge_vectors, edge_index, atom_types)
        if h_centers is None or h_others is None:  # block 0 starts from the species embedding
            h_centers, h_all = self.model.initial_features(center_types), self.model.initial_features(atom_types)
        else:
            h_all = torch.cat([h_centers, h_others])
        # the radial MLP on every edge: a program runs on a group of centers, which seldom holds an edge's reverse
        return self.model.layer(self.k, h_centers, h_all, center_types, atom_types, sh, (basis, None), edge_index)


class FirstLayer(_Program):
    """(edge_vectors, edge_index, center_types, other_types) -> h_1 of the centers."""

    def forward(self, edge_vectors, edge_index, center_types, other_types) -> torch.Tensor:
        return self.block(edge_vectors, edge_index, center_types, other_types, None, None)


class Layer(_Program):
    """(..., h_k of the centers, h_k of the others) -> h_k+1 of the centers, k >= 1."""

    def forward(self, edge_vectors, edge_index, center_types, other_types, h_centers, h_others) -> torch.Tensor:
        return self.block(edge_vectors, edge_index, center_types, other_types, h_centers, h_others)


class FirstLayerVJP(_Program):
    """(..., dE/dh_1 of the centers) -> dE/dr through block 0."""

    def forward(self, edge_vectors, edge_index, center_types, other_types, grad) -> torch.Tensor:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        h = self.block(edge_vectors, edge_index, center_types, other_types, None, None)
        cotangent: List[Optional[torch.Tensor]] = [grad.to(h.dtype)]
        grads = torch.autograd.grad([h], [edge_vectors], cotangent, allow_unused=True)
        return _or_zeros(grads[0], edge_vectors)


class LayerVJP(_Program):
    """(..., h_k of centers and others, dE/dh_k+1 of the centers) -> (dE/dh_k of centers, of others, dE/dr)."""

    def forward(
        self, edge_vectors, edge_index, center_types, other_types, h_centers, h_others, grad
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        h_centers = h_centers.detach().requires_grad_(True)
        h_others = h_others.detach().requires_grad_(True)
        h = self.block(edge_vectors, edge_index, center_types, other_types, h_centers, h_others)
        cotangent: List[Optional[torch.Tensor]] = [grad.to(h.dtype)]
        grads = torch.autograd.grad([h], [h_centers, h_others, edge_vectors], cotangent, allow_unused=True)
        return _or_zeros(grads[0], h_centers), _or_zeros(grads[1], h_others), _or_zeros(grads[2], edge_vectors)


class Readout(_Program):
    """(..., h_L of the centers) -> (energies of the centers (float64), dE/dh_L, dE/dr), E their sum."""

    def forward(
        self, edge_vectors, edge_index, center_types, other_types, h_centers
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        h_centers = h_centers.detach().requires_grad_(True)
        atom_types = torch.cat([center_types, other_types])
        r, envelope, _, _ = self.model.edge_geometry(edge_vectors, edge_index, atom_types)
        energy = self.model.node_energies(h_centers, atom_types, r, envelope, edge_index)
        grads = torch.autograd.grad([energy.sum()], [h_centers, edge_vectors], allow_unused=True)

        return energy.detach(), _or_zeros(grads[0], h_centers), _or_zeros(grads[1], edge_vectors).to(torch.float64)


def _or_zeros(grad: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def exchange_programs(model: nn.Module) -> Dict[str, nn.Module]:
    """The 2L + 1 programs of a NequIP model, by the names the artifact stores them under."""
    num_layers = len(model.blocks)
    programs: Dict[str, nn.Module] = {"exchange_layer_0": FirstLayer(model), "exchange_layer_0_vjp": FirstLayerVJP(model)}
    for k in range(1, num_layers):
        programs[f"exchange_layer_{k}"] = Layer(model, k)
        programs[f"exchange_layer_{k}_vjp"] = LayerVJP(model, k)
    programs["exchange_readout"] = Readout(model)
    return {name: programs[name] for name in program_names(num_layers)}


def images_as_nodes(edge_index: np.ndarray, shifts: np.ndarray, num_atoms: int) -> Tuple[np.ndarray, np.ndarray]:
    """A periodic graph's edges with every periodic image (atom j, shift s != 0) as a node of its own after
    the atoms, as a LAMMPS rank sees ghosts. Returns (edge_index, owner), owner[m] the atom of image node
    num_atoms + m."""
    image = np.any(np.abs(shifts) > 1e-9, axis=1)
    keys = np.concatenate([edge_index[1, image, None], np.round(shifts[image], 6)], axis=1)
    unique, which = np.unique(keys, axis=0, return_inverse=True)
    neighbor = edge_index[1].copy()
    neighbor[image] = num_atoms + which.reshape(-1)
    return np.stack([edge_index[0], neighbor]), unique[:, 0].astype(np.int64)


def evaluate_exchanging(programs: Dict[str, nn.Module], edge_vectors, edge_index, atom_types, num_centers: int, owner):
    """Atomic energies (N,) and edge forces (E, 3) through the programs, for a graph whose nodes
    [num_centers, N) are images of the centers `owner[j - num_centers]`: the exchange a single rank does
    with its own periodic images. Every edge must start at a center. The reference for the C++ core."""
    num_layers = sum(1 for name in programs if name.endswith("_vjp"))
    center_types, other_types = atom_types[:num_centers], atom_types[num_centers:]
    g = (edge_vectors, edge_index, center_types, other_types)
    hs = [None, programs["exchange_layer_0"](*g)]
    for k in range(1, num_layers):
        hs.append(programs[f"exchange_layer_{k}"](*g, hs[k], hs[k][owner]))
    energy, grad, forces = programs["exchange_readout"](*g, hs[num_layers])
    for k in range(num_layers - 1, 0, -1):
        grad, grad_others, g_k = programs[f"exchange_layer_{k}_vjp"](*g, hs[k], hs[k][owner], grad)
        grad = grad.index_add(0, owner, grad_others)
        forces = forces + g_k.to(torch.float64)
    forces = forces + programs["exchange_layer_0_vjp"](*g, grad).to(torch.float64)
    energies = torch.cat([energy, energy.new_zeros(atom_types.shape[0] - num_centers)])
    return energies, forces
