"""Allegro (Musaelian et al., Nat. Commun. 14, 579, 2023): a strictly local equivariant potential.

Every quantity lives on an edge ij (center i, neighbor j within the cutoff). Scalar latents h_ij and
tensor features V_ij (E, components, channels) are refined layer by layer through tensor products with the
density of the center's neighborhood, rho_i = sum_k w_ik Y(r_ik) / sqrt(avg neighbors of i's type). The
energy of atom i is a sum of edge energies over its own edges, so E_i depends only on atoms within the
cutoff of i.

The envelope u(r) (1 at short range, vanishing with two derivatives at the cutoff) enters once, through the
radial basis: the two-body embedding is [e_center, e_neighbor] * W B(r) u(r) ("product", upstream's form), so
every quantity of an edge is a bias-free function of quantities that vanish with u. The older form ("concat")
reads [B(r), e_center, e_neighbor], whose two-body output must be multiplied by u, and layer_envelope true
multiplies every layer's latent update by u again, which damps a second neighbor shell as u^k (for Cu at r_max
5, u = 0.39 at 3.6 A): checkpoints written before version 3 of the format are that network.
"""

import math
from typing import List, Optional, Union

import torch
from e3nn import o3
from torch import nn

from ..nn import MLP, ChannelwiseTensorProduct, Linear, scatter_sum
from ..nn.tensor_product import (
    component_index,
    irreps_of,
    neighbor_slots,
    scalar_components,
    spread_over_components,
)
from ..nn.execution import in_python
from .common import CutoffSpec, EdgeGeometry, EnergyHead, per_type

LATENT_UPDATES = ("concat", "residual")
READOUT_LATENTS = ("all", "last")
TWO_BODY_EMBEDDINGS = ("concat", "product")


class IrrepWeights(nn.Module):
    """Per-edge, per-channel weights for each irrep of `irreps`, made from the scalar latents and spread
    over the irreps' components: (E, num_scalar) -> (E, irreps.dim, channels)."""

    execution: str

    def __init__(self, num_scalar: int, irreps: o3.Irreps, channels: int):
        super().__init__()
        self.linear = Linear(num_scalar, len(irreps) * channels)
        self.dims: List[int] = [ir.dim for _, ir in irreps]
        self.register_buffer("components", component_index(self.dims), persistent=False)
        self.channels = channels
        self.execution = "eager"

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        w = self.linear(latents).view(latents.shape[0], len(self.dims), self.channels)
        return spread_over_components(w, self.components, self.dims if self.execution == "export" else None)


class AllegroLayer(nn.Module):
    def __init__(
        self,
        num_scalar: int,
        num_latent_inputs: int,
        channels: int,
        irreps_sh: o3.Irreps,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        latent_hidden: List[int],
        latent_update: str,
        last: bool,
        layer_envelope: bool = True,
        tensor_gating: bool = True,
    ):
        super().__init__()
        self.env_weights = IrrepWeights(num_scalar, irreps_sh, channels)
        self.tensor_product = ChannelwiseTensorProduct(irreps_in, irreps_sh, irreps_out, channels)
        irreps_out = self.tensor_product.irreps_out
        self.irreps_out = irreps_out
        assert scalar_components(irreps_out) == [0], "the 0e scalars lead the irreps"
        self.latent_mlp = MLP([num_latent_inputs * num_scalar + channels] + latent_hidden + [num_scalar])
        # the last layer's tensor features feed nothing; without gating they pass on as the product made them
        self.tensor_weights = None if last or not tensor_gating else IrrepWeights(num_scalar, irreps_out, channels)
        self.layer_envelope = layer_envelope
        self.residual = latent_update == "residual"
        self.update_ratio = nn.Parameter(torch.ones(())) if self.residual else None

    def forward(
        self,
        latents: List[torch.Tensor],  # all earlier latents, each (E, num_scalar); the last is the current one
        features: torch.Tensor,  # (E, irreps_in.dim, channels)
        sh: torch.Tensor,  # (E, irreps_sh.dim, 1)
        cutoff: torch.Tensor,  # (E, 1)
        center: torch.Tensor,  # (E,)
        density_norm: torch.Tensor,  # (N, 1, 1)
        slots: Optional[torch.Tensor],
        width: int,
    ):
        current = latents[-1]
        env = self.env_weights(current) * sh
        density = scatter_sum(env, center, density_norm.shape[0]) * density_norm
        product = self.tensor_product(features, density, center, slots, width)

        scalars = product[:, 0]
        mlp_input = latents if not self.residual else [current]
        update = self.latent_mlp(torch.cat(mlp_input + [scalars], dim=-1))
        if self.layer_envelope:
            update = update * cutoff
        if self.update_ratio is not None:
            c = self.update_ratio
            update = (current + c * update) * torch.rsqrt(1.0 + c * c)
        if self.tensor_weights is None:
            return update, product
        return update, product * self.tensor_weights(update)


def useful_irreps(irreps_hidden: o3.Irreps, irreps_sh: o3.Irreps, num_layers: int) -> List[o3.Irreps]:
    """For each layer, the output irreps that can still reach the last layer's 0e through the remaining
    tensor products with the density (which carries the spherical-harmonic irreps). With parity, e.g.,
    1e x 1o gives no 0e, so the 1e features of the second-to-last layer would be computed for nothing."""
    wanted = [o3.Irreps("0e")]
    for _ in range(num_layers - 1):
        after = wanted[0]
        wanted.insert(
            0,
            o3.Irreps([(1, ir) for _, ir in irreps_hidden if any(o.ir in ir * s.ir for o in after for s in irreps_sh)]),
        )
    return wanted


class Allegro(nn.Module):
    """Atomic energies (float64) of the nodes of a graph given its edge vectors r_ij = x_j - x_i."""

    message_passing_depth = 1  # strictly local: see `center_energies`
    execution: str
    edges_per_group: int
    tensor_product_kernel: str

    def __init__(
        self,
        type_names: List[str],
        r_max: float,
        l_max: int = 2,
        parity: bool = True,
        num_layers: int = 2,
        num_scalar_features: int = 64,
        num_tensor_features: int = 16,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        type_embedding_dim: int = 16,
        two_body_hidden: List[int] = [64],
        latent_hidden: List[int] = [64],
        readout_hidden: List[int] = [32],
        latent_update: str = "concat",
        readout_latents: str = "last",
        two_body_embedding: str = "product",
        layer_envelope: bool = False,
        tensor_gating: bool = True,
        avg_num_neighbors: Union[float, List[float]] = 10.0,
        edge_type_cutoffs: Optional[CutoffSpec] = None,
        energy_shift: List[float] = [],
        energy_scale: List[float] = [],
        zbl: bool = False,
        units: str = "metal",
        cohesion: List[float] = [],
        mean_coordination: List[float] = [],
        cohesion_form: str = "none",
        core_repulsion: bool = True,
        shortest_distances: List[List[float]] = [],
    ):
        super().__init__()
        if not 0 <= l_max <= 3:
            raise ValueError(f"Allegro l_max must be 0 to 3, not {l_max}")
        if not 1 <= num_layers <= 4:
            raise ValueError(f"Allegro num_layers must be 1 to 4, not {num_layers}")
        if latent_update not in LATENT_UPDATES:
            raise ValueError(f"latent_update must be one of {LATENT_UPDATES}, not '{latent_update}'")
        if readout_latents not in READOUT_LATENTS:
            raise ValueError(f"readout_latents must be one of {READOUT_LATENTS}, not '{readout_latents}'")
        if two_body_embedding not in TWO_BODY_EMBEDDINGS:
            raise ValueError(f"two_body_embedding must be one of {TWO_BODY_EMBEDDINGS}, not '{two_body_embedding}'")
        num_types = len(type_names)
        self.r_max = float(r_max)
        avg = per_type(avg_num_neighbors, num_types, "avg_num_neighbors")
        self.register_buffer("density_norm", avg.rsqrt())
        self.register_buffer("edge_energy_norm", (2.0 * avg).rsqrt())
        self.geometry = EdgeGeometry(type_names, r_max, l_max, num_bessel, polynomial_p, edge_type_cutoffs)
        irreps_sh = self.geometry.irreps_sh
        irreps_hidden = irreps_of(l_max, parity)
        self.center_embedding = nn.Parameter(torch.randn(num_types, type_embedding_dim))
        self.neighbor_embedding = nn.Parameter(torch.randn(num_types, type_embedding_dim))
        # the two-body MLP reads [B(r), e_center, e_neighbor] ("concat") or [e_center, e_neighbor] * W B(r) ("product")
        self.basis_projection = Linear(num_bessel, 2 * type_embedding_dim) if two_body_embedding == "product" else None
        self.layer_envelope = layer_envelope
        two_body_width = 2 * type_embedding_dim + (num_bessel if self.basis_projection is None else 0)
        self.two_body = MLP([two_body_width] + two_body_hidden + [num_scalar_features])
        self.initial_weights = IrrepWeights(num_scalar_features, irreps_sh, num_tensor_features)
        wanted = useful_irreps(irreps_hidden, irreps_sh, num_layers)
        layers = []
        irreps = irreps_sh
        for k in range(num_layers):
            layer = AllegroLayer(
                num_scalar_features,
                k + 1 if latent_update == "concat" else 1,
                num_tensor_features,
                irreps_sh,
                irreps,
                wanted[k],
                latent_hidden,
                latent_update,
                last=k == num_layers - 1,
                layer_envelope=layer_envelope,
                tensor_gating=tensor_gating,
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        # the edge energy reads the last layer's scalar latents, or every layer's, the two-body one included ("all")
        self.readout_all = readout_latents == "all"
        readout_width = (num_layers + 1 if self.readout_all else 1) * num_scalar_features
        self.readout = MLP([readout_width] + readout_hidden + [1])
        self.head = EnergyHead(type_names, energy_scale, energy_shift, zbl, units, cohesion, mean_coordination,
                               cohesion_form, shortest_distances if core_repulsion else [])
        self.tensor_product_kernel = "torch"
        self.execution = "eager"
        self.edges_per_group = self.cpu_edges_per_group()

    def use_kernel(self, kernel: str) -> None:
        """The tensor products' implementation (see ChannelwiseTensorProduct): "torch" or "fused"."""
        for layer in self.layers:
            layer.tensor_product.use_kernel(kernel)
        self.tensor_product_kernel = kernel

    def forward(self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        center, neighbor = edge_index[0], edge_index[1]
        return self.center_energies(edge_vectors, center, atom_types[center], atom_types[neighbor], atom_types)

    def cpu_edges_per_group(self) -> int:
        """Edges per group of whole centers for inference on a CPU (eager, the core, LAMMPS): 1024 for 32 tensor features at l_max 2 (the
        fastest, and least memory, in benchmarks/model_speed.py), scaled inversely with the per-edge width
        of the tensor features (channels x spherical-harmonic components), a power of two up to 16384.
        Narrower models then run fewer, larger groups, where each group's fixed cost would dominate."""
        width = self.initial_weights.channels * self.geometry.irreps_sh.dim
        edges = 1024 * 32 * 9 / width
        return int(min(16384, max(1024, 2 ** round(math.log2(edges)))))

    def isolated_energies(self, node_types: torch.Tensor) -> torch.Tensor:
        """The atomic energies of nodes without edges: their shifts."""
        zero = torch.zeros(node_types.shape, dtype=torch.float64, device=node_types.device)
        return self.head.scale_shift(zero, node_types)

    def center_energies(
        self,
        edge_vectors: torch.Tensor,  # (E, 3)
        center: torch.Tensor,  # (E,) index into node_types
        center_type: torch.Tensor,  # (E,)
        neighbor_type: torch.Tensor,  # (E,)
        node_types: torch.Tensor,  # (N,)
    ) -> torch.Tensor:
        """Atomic energies of the nodes from their own edges. A neighbor enters only through its type, so
        any subset of centers, each with all its edges, gives those centers' exact energies."""
        dtype = self.center_embedding.dtype
        num_nodes = node_types.shape[0]

        r, envelope, basis, sh = self.geometry(edge_vectors, center_type, neighbor_type, dtype)
        cutoff = envelope.to(dtype).unsqueeze(-1)
        sh = sh.unsqueeze(-1)

        center_embedding = self.center_embedding[center_type]
        neighbor_embedding = self.neighbor_embedding[neighbor_type]
        if self.basis_projection is None:
            two_body = self.two_body(torch.cat([basis, center_embedding, neighbor_embedding], dim=-1)) * cutoff
        else:  # vanishes with the basis at the cutoff
            types = torch.cat([center_embedding, neighbor_embedding], dim=-1)
            two_body = self.two_body(types * self.basis_projection(basis))
            if self.layer_envelope:
                two_body = two_body * cutoff
        latents = [two_body]
        features = self.initial_weights(latents[0]) * sh
        density_norm = self.density_norm[node_types].view(num_nodes, 1, 1)

        slots, width = None, 1
        if not torch.jit.is_scripting() and in_python(self.execution) and self.tensor_product_kernel == "torch":
            slots, width = neighbor_slots(center, num_nodes)
        for layer in self.layers:
            new_latents, features = layer(latents, features, sh, cutoff, center, density_norm, slots, width)
            latents.append(new_latents)

        readout_input = torch.cat(latents, dim=-1) if self.readout_all else latents[-1]
        edge_energy = self.readout(readout_input).squeeze(-1).to(torch.float64)
        energy = scatter_sum(edge_energy, center, num_nodes) * self.edge_energy_norm[node_types].to(torch.float64)
        return self.head(energy, node_types, r, envelope, center, center_type, neighbor_type)
