"""NequIP cut at its layers, for LAMMPS ranks that exchange node features instead of recomputing a ghost shell.

A rank's graph holds its own atoms as centers, nodes [0, Nc), and after them the other nodes that their edges
reach (ghost atoms within one cutoff), nodes [Nc, N). Every edge starts at a center. Each layer program below
gives the centers' features after one block; between programs the caller fills the other nodes' rows with the
features their owners computed (forward exchange), and on the way back adds the gradients with respect to
those rows to their owners (reverse exchange). The radial MLPs of all blocks depend on |r_ij| only: they run
once per row of a table (one row per pair i <-> j where both edges are the rank's, else one per edge), and
the layer programs read each edge's row w_k:

    W = radial(rows)                                             w_k = W_k[slot]
    h_1 = layer_0(g, w_0)                                        fill h_1
    h_k+1 = layer_k(g, h_k, w_k)             k = 1 .. L-1        fill h_k+1 (not h_L)
    e, dE/dh_L, dE/dr = readout(g, h_L)
    dE/dh_k, dE/dr, dE/dw_k += layer_k_vjp(g, h_k, w_k, dE/dh_k+1)    k = L-1 .. 1    drain dE/dh_k
    dE/dr, dE/dw_0 += layer_0_vjp(g, w_0, dE/dh_1)
    dE/dr[rows] += radial_vjp(rows, dE/dW)                       dE/dW_k = sum of dE/dw_k over each row's edges

E is the sum of the centers' energies. A vector-Jacobian program runs its block forward again: nothing is
kept between programs, so every program has plain tensors in and out and compiles on its own.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .common import reverse_pair_rows


def program_names(num_layers: int) -> List[str]:
    names = ["exchange_radial"] + [f"exchange_layer_{k}" for k in range(num_layers)]
    names += [f"exchange_layer_{k}_vjp" for k in range(num_layers)]
    return names + ["exchange_readout", "exchange_radial_vjp"]


def feature_widths(model: nn.Module) -> List[int]:
    """The width of h_k, k = 1 .. L: the features after each block."""
    return [block.irreps_out.dim for block in model.blocks]


class Radial(nn.Module):
    """(vectors, center types, neighbor types) of R rows -> (R, sum of `widths`): every block's radial weights,
    block after block."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.widths: List[int] = model.radial_widths()

    def weights(self, edge_vectors, center_types, neighbor_types) -> torch.Tensor:
        _, _, basis, _ = self.model.geometry(edge_vectors, center_types, neighbor_types, self.model.one_hot.dtype)
        blocks = [self.model.radial_weights(k, (basis, None)).flatten(1) for k in range(len(self.widths))]
        return torch.cat(blocks, dim=1)

    def forward(self, edge_vectors, center_types, neighbor_types) -> torch.Tensor:
        return self.weights(edge_vectors, center_types, neighbor_types)


class RadialVJP(Radial):
    """(..., dE/dW) -> dE/dr of the rows through the radial MLPs."""

    def forward(self, edge_vectors, center_types, neighbor_types, grad) -> torch.Tensor:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        w = self.weights(edge_vectors, center_types, neighbor_types)
        cotangent: List[Optional[torch.Tensor]] = [grad.to(w.dtype)]
        grads = torch.autograd.grad([w], [edge_vectors], cotangent, allow_unused=True)
        return _or_zeros(grads[0], edge_vectors)


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
        w: torch.Tensor,
    ) -> torch.Tensor:
        """The centers' features after block k, given its radial weights w of the edges."""
        atom_types = torch.cat([center_types, other_types])
        _, _, _, sh = self.model.edge_geometry(edge_vectors, edge_index, atom_types)
        if h_centers is None or h_others is None:  # block 0 starts from the species embedding
            h_centers, h_all = self.model.initial_features(center_types), self.model.initial_features(atom_types)
        else:
            h_all = torch.cat([h_centers, h_others])
        return self.model.layer(self.k, h_centers, h_all, center_types, atom_types, sh, w, edge_index)


class FirstLayer(_Program):
    """(edge_vectors, edge_index, center_types, other_types, w_0) -> h_1 of the centers."""

    def forward(self, edge_vectors, edge_index, center_types, other_types, w) -> torch.Tensor:
        return self.block(edge_vectors, edge_index, center_types, other_types, None, None, w)


class Layer(_Program):
    """(..., h_k of the centers, h_k of the others, w_k) -> h_k+1 of the centers, k >= 1."""

    def forward(self, edge_vectors, edge_index, center_types, other_types, h_centers, h_others, w) -> torch.Tensor:
        return self.block(edge_vectors, edge_index, center_types, other_types, h_centers, h_others, w)


class FirstLayerVJP(_Program):
    """(..., w_0, dE/dh_1 of the centers) -> (dE/dr, dE/dw_0) through block 0."""

    def forward(
        self, edge_vectors, edge_index, center_types, other_types, w, grad
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        w = w.detach().requires_grad_(True)
        h = self.block(edge_vectors, edge_index, center_types, other_types, None, None, w)
        cotangent: List[Optional[torch.Tensor]] = [grad.to(h.dtype)]
        grads = torch.autograd.grad([h], [edge_vectors, w], cotangent, allow_unused=True)
        return _or_zeros(grads[0], edge_vectors), _or_zeros(grads[1], w)


class LayerVJP(_Program):
    """(..., h_k of centers and others, w_k, dE/dh_k+1 of the centers) -> (dE/dh_k of centers, of others,
    dE/dr, dE/dw_k)."""

    def forward(
        self, edge_vectors, edge_index, center_types, other_types, h_centers, h_others, w, grad
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        edge_vectors = edge_vectors.detach().requires_grad_(True)
        h_centers = h_centers.detach().requires_grad_(True)
        h_others = h_others.detach().requires_grad_(True)
        w = w.detach().requires_grad_(True)
        h = self.block(edge_vectors, edge_index, center_types, other_types, h_centers, h_others, w)
        cotangent: List[Optional[torch.Tensor]] = [grad.to(h.dtype)]
        grads = torch.autograd.grad([h], [h_centers, h_others, edge_vectors, w], cotangent, allow_unused=True)
        return (_or_zeros(grads[0], h_centers), _or_zeros(grads[1], h_others), _or_zeros(grads[2], edge_vectors),
                _or_zeros(grads[3], w))  # fmt: skip


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
    """The 2L + 3 programs of a NequIP model, by the names the artifact stores them under."""
    num_layers = len(model.blocks)
    programs: Dict[str, nn.Module] = {"exchange_radial": Radial(model), "exchange_radial_vjp": RadialVJP(model)}
    programs.update(exchange_layer_0=FirstLayer(model), exchange_layer_0_vjp=FirstLayerVJP(model))
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
    num_layers = sum(1 for name in programs if name.startswith("exchange_layer_") and name.endswith("_vjp"))
    center_types, other_types = atom_types[:num_centers], atom_types[num_centers:]
    g = (edge_vectors, edge_index, center_types, other_types)
    rows, slot = reverse_pair_rows(edge_index, atom_types.shape[0])
    row_graph = (edge_vectors[rows], atom_types[edge_index[0, rows]], atom_types[edge_index[1, rows]])
    widths = programs["exchange_radial"].widths
    w = [table.index_select(0, slot) for table in programs["exchange_radial"](*row_graph).split(widths, dim=1)]
    grad_w: List[torch.Tensor] = [torch.zeros(0)] * num_layers

    hs = [None, programs["exchange_layer_0"](*g, w[0])]
    for k in range(1, num_layers):
        hs.append(programs[f"exchange_layer_{k}"](*g, hs[k], hs[k][owner], w[k]))
    energy, grad, forces = programs["exchange_readout"](*g, hs[num_layers])
    for k in range(num_layers - 1, 0, -1):
        grad, grad_others, g_k, grad_w[k] = programs[f"exchange_layer_{k}_vjp"](*g, hs[k], hs[k][owner], w[k], grad)
        grad = grad.index_add(0, owner, grad_others)
        forces = forces + g_k.to(torch.float64)
    g_0, grad_w[0] = programs["exchange_layer_0_vjp"](*g, w[0], grad)
    forces = forces + g_0.to(torch.float64)
    grad_table = torch.cat([gw.new_zeros(rows.shape[0], gw.shape[1]).index_add(0, slot, gw) for gw in grad_w], dim=1)
    forces = forces.index_add(0, rows, programs["exchange_radial_vjp"](*row_graph, grad_table).to(torch.float64))
    energies = torch.cat([energy, energy.new_zeros(atom_types.shape[0] - num_centers)])
    return energies, forces
