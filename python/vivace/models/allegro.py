"""Allegro (Musaelian et al., Nat. Commun. 14, 579, 2023): a strictly local equivariant potential.

Every quantity lives on an edge ij (center i, neighbor j within r_max). Scalar latents h_ij and tensor
features V_ij are refined layer by layer through tensor products with the density of the center's
neighborhood, rho_i = sum_k w_ik Y(r_ik) / sqrt(avg neighbors). The energy of atom i is a sum of edge
energies over its own edges, so E_i depends only on atoms within r_max of i.
"""

from typing import List

import torch
from e3nn import o3
from torch import nn

from ..nn import MLP, BesselBasis, ChannelwiseTensorProduct, Linear, PolynomialCutoff, irreps_dim, scatter_sum
from ..nn.tensor_product import degree_of_component
from .scale_shift import PerSpeciesScaleShift


class AllegroLayer(nn.Module):
    def __init__(self, num_scalar: int, num_tensor: int, l_max: int, l_out: int, latent_hidden: List[int]):
        super().__init__()
        self.env_weights = Linear(num_scalar, num_tensor * (l_max + 1))
        self.tensor_product = ChannelwiseTensorProduct(l_max, l_out, num_tensor)
        self.latent_mlp = MLP([num_scalar + num_tensor] + latent_hidden + [num_scalar])
        self.tensor_weights = Linear(num_scalar, num_tensor * (l_out + 1))
        self.num_tensor = num_tensor
        self.l_max = l_max
        self.l_out = l_out
        self.register_buffer("degree_in", degree_of_component(l_max), persistent=False)
        self.register_buffer("degree_out", degree_of_component(l_out), persistent=False)

    def forward(
        self,
        latents: torch.Tensor,  # (E, num_scalar)
        features: torch.Tensor,  # (E, C, (l_max+1)^2)
        sh: torch.Tensor,  # (E, (l_max+1)^2)
        cutoff: torch.Tensor,  # (E, 1)
        center: torch.Tensor,  # (E,)
        num_nodes: int,
        density_norm: float,
    ):
        num_edges = latents.shape[0]
        w = self.env_weights(latents).view(num_edges, self.num_tensor, self.l_max + 1)[:, :, self.degree_in]
        density = scatter_sum(w * sh.unsqueeze(1), center, num_nodes) * density_norm
        product = self.tensor_product(features, density[center])
        latents = self.latent_mlp(torch.cat([latents, product[:, :, 0]], dim=-1)) * cutoff
        scale = self.tensor_weights(latents).view(num_edges, self.num_tensor, self.l_out + 1)[:, :, self.degree_out]
        return latents, product * scale


class Allegro(nn.Module):
    """Atomic energies (float64) of the nodes of a graph given its edge vectors r_ij = x_j - x_i."""

    def __init__(
        self,
        num_types: int,
        r_max: float,
        l_max: int = 2,
        num_layers: int = 2,
        num_scalar_features: int = 64,
        num_tensor_features: int = 16,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        type_embedding_dim: int = 16,
        two_body_hidden: List[int] = [64],
        latent_hidden: List[int] = [64],
        readout_hidden: List[int] = [32],
        avg_num_neighbors: float = 10.0,
        energy_shift: List[float] = [],
        energy_scale: List[float] = [],
    ):
        super().__init__()
        self.r_max = float(r_max)
        self.l_max = l_max
        self.num_tensor = num_tensor_features
        self.density_norm = float(avg_num_neighbors) ** -0.5
        self.edge_energy_norm = float(2.0 * avg_num_neighbors) ** -0.5

        self.bessel = BesselBasis(r_max, num_bessel)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)
        self.sh = o3.SphericalHarmonics(o3.Irreps.spherical_harmonics(l_max), normalize=True, normalization="component")
        self.center_embedding = nn.Parameter(torch.randn(num_types, type_embedding_dim))
        self.neighbor_embedding = nn.Parameter(torch.randn(num_types, type_embedding_dim))
        self.two_body = MLP([num_bessel + 2 * type_embedding_dim] + two_body_hidden + [num_scalar_features])
        self.initial_tensor_weights = Linear(num_scalar_features, num_tensor_features * (l_max + 1))
        self.layers = nn.ModuleList(
            [
                AllegroLayer(
                    num_scalar_features,
                    num_tensor_features,
                    l_max,
                    0 if k == num_layers - 1 else l_max,
                    latent_hidden,
                )
                for k in range(num_layers)
            ]
        )
        self.readout = MLP([num_scalar_features] + readout_hidden + [1])
        self.scale_shift = PerSpeciesScaleShift(num_types, energy_scale, energy_shift)
        self.register_buffer("degree", degree_of_component(l_max), persistent=False)
        assert irreps_dim(l_max) == self.sh.irreps_out.dim

    def forward(self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        dtype = self.center_embedding.dtype
        center, neighbor = edge_index[0], edge_index[1]
        num_nodes = atom_types.shape[0]
        num_edges = edge_vectors.shape[0]

        vectors = edge_vectors.to(dtype)
        r = torch.linalg.vector_norm(vectors, dim=-1)
        cutoff = self.cutoff(r).unsqueeze(-1)
        sh = self.sh(vectors)

        two_body_input = torch.cat(
            [
                self.bessel(r) * cutoff,
                self.center_embedding[atom_types[center]],
                self.neighbor_embedding[atom_types[neighbor]],
            ],
            dim=-1,
        )
        latents = self.two_body(two_body_input) * cutoff
        weights = self.initial_tensor_weights(latents).view(num_edges, self.num_tensor, self.l_max + 1)
        features = weights[:, :, self.degree] * sh.unsqueeze(1)

        for layer in self.layers:
            latents, features = layer(latents, features, sh, cutoff, center, num_nodes, self.density_norm)

        edge_energy = self.readout(latents).squeeze(-1) * self.edge_energy_norm
        atomic_energy = scatter_sum(edge_energy.to(torch.float64), center, num_nodes)
        return self.scale_shift(atomic_energy, atom_types)
