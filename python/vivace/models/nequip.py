"""NequIP (Batzner et al., Nat. Commun. 13, 2453, 2022): an equivariant message-passing potential.

Node features are irreps; each interaction block is

    x = Linear(h);  m_i = sum_j TP(x_j, Y(r_ij); w = radial MLP(B(r_ij))) / sqrt(avg neighbors of i's type)
    h_i <- Gate(Linear(m_i) + SelfConnection(h_i, species_i))

with a "uvu" convolution (one weight per channel and path, made per edge by the radial MLP). The last
block keeps only even scalars, read out as one energy per node, minus the same readout for an isolated
atom of that type (so an atom without neighbors has exactly its shift). After L blocks atom i depends on atoms
up to L x r_max away, so a LAMMPS rank needs a ghost shell that deep (message_passing_depth = L).
"""

import math
from typing import List, Optional, Tuple, Union

import torch
from e3nn import o3
from torch import nn

from ..nn import MLP, gather, scatter_sum
from ..nn.gate import Gate
from ..nn.execution import CenterGroup, center_groups, in_python, sorted_by_center
from ..nn.tensor_product import SparseContraction, checked_kernel, component_index, spread_over_components
from .common import CutoffSpec, EdgeGeometry, EnergyHead, per_type, reverse_pair_rows

# The radial MLP's input: the basis of the edges it runs on, and the row of its output each edge reads
# (reverse_pair_rows: one row per pair i <-> j where the graph allows; None: a row per edge).
RadialInput = Tuple[torch.Tensor, Optional[torch.Tensor]]

# Eager inference and training run the convolution over groups of whole centers of about this many edges:
# each per-edge tensor (paths' components x channels per edge) then stays small enough to be reused from
# the heap instead of being mapped and zero-filled anew. The core's layer programs (LAMMPS exchanging
# features, large graphs) run in groups of the same size, read from the artifact. 4096 against 1024, on
# lammps_speed.py's model (32 features, l_max 2, float32, 2 threads) and alloy: a training step 0.94 vs
# 1.46 s and eager inference 0.30 vs 0.42 s at 1536 atoms; the core's layer programs 0.18 vs 0.23 s.
EDGES_PER_GROUP = 4096


def hidden_irreps(num_features: int, l_max: int, parity: bool) -> o3.Irreps:
    parities = lambda l: (1, -1) if parity else ((-1) ** l,)  # noqa: E731
    return o3.Irreps([(num_features, (l, p)) for l in range(l_max + 1) for p in parities(l)])


def channels_last(x: torch.Tensor, dims: List[int], channels: int) -> torch.Tensor:
    """e3nn layout (rows, sum over irreps of channels x dim, multiplicity-major) -> (rows, sum of dims, channels)."""
    blocks = torch.split(x, [channels * d for d in dims], dim=1)
    return torch.cat([b.view(x.shape[0], channels, d).transpose(1, 2) for b, d in zip(blocks, dims)], dim=1)


def channels_first(x: torch.Tensor, dims: List[int]) -> torch.Tensor:
    """The inverse of `channels_last`."""
    blocks = torch.split(x, dims, dim=1)
    return torch.cat([b.transpose(1, 2).flatten(1) for b in blocks], dim=1)


class Convolution(nn.Module):
    """m_i = sum_j TP(x_j, Y_ij; w_ij) over the edges into center i ("uvu": every path keeps its own
    channels, each weighted per edge and channel by the radial MLP).

    The product runs channels-last on the edges: the spherical harmonics carry no channels, so per edge
    they fix one (paths' components x input components) matrix applied to x_j for all channels at once.
    Export and TorchScript take it through `SparseContraction`; eager runs `messages_by_groups`. `kernel`
    "fused" runs the C++ operator vivace::nequip_conv instead (first derivatives only: inference on a CPU).
    """

    kernel: str

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_wanted: o3.Irreps, radial: List[int]):
        super().__init__()
        channels = irreps_in[0].mul
        assert all(mul == channels for mul, _ in irreps_in), "NequIP features share one multiplicity"
        sx, sy = irreps_in.slices(), irreps_sh.slices()
        entries, values, irreps_mid = [], [], []
        offset = 0
        for i, (_, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out not in irreps_wanted:
                        continue
                    block = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64) * math.sqrt(ir_out.dim)
                    for m, n, k in torch.nonzero(block.abs() > 1e-12).tolist():
                        entries.append((offset + k, sx[i].start // channels + m, sy[j].start + n))
                        values.append(float(block[m, n, k]))
                    irreps_mid.append((channels, ir_out))
                    offset += ir_out.dim
        self.irreps_in_dims: List[int] = [ir.dim for _, ir in irreps_in]
        self.irreps_out = o3.Irreps(irreps_mid)
        self.mid_dims: List[int] = [ir.dim for _, ir in self.irreps_out]
        self.register_buffer("components", component_index(self.mid_dims), persistent=False)
        dim_x, dim_sh = sum(self.irreps_in_dims), irreps_sh.dim
        self.contraction = SparseContraction(entries, (offset, dim_x, dim_sh))
        cg = torch.tensor(values, dtype=torch.get_default_dtype())
        self.register_buffer("cg", cg.unsqueeze(-1), persistent=False)
        self.channels = channels
        self.radial = MLP(radial + [len(irreps_mid) * channels])
        self.kernel = "torch"

        # the eager layout: paths sorted by output dimension, with one dense kernel per dimension
        dense = self.contraction.dense_kernel(self.cg, self.contraction.node_index, dim_sh)[0].view(dim_sh, offset, dim_x)
        starts = [sum(self.mid_dims[:p]) for p in range(len(self.mid_dims))]
        sorted_paths = sorted(range(len(self.mid_dims)), key=lambda p: self.mid_dims[p])
        self.paths_per_dim: List[Tuple[int, int]] = []
        sorted_components: List[int] = []
        for dim in sorted(set(self.mid_dims)):
            paths = [p for p in sorted_paths if self.mid_dims[p] == dim]
            rows = [starts[p] + q for p in paths for q in range(dim)]
            kernel = dense[:, rows, :].reshape(dim_sh, -1)
            self.register_buffer(f"kernel_{dim}", kernel, persistent=False)
            self.paths_per_dim.append((dim, len(paths)))
            sorted_components += rows
        self.register_buffer("sorted_paths", torch.tensor(sorted_paths), persistent=False)
        unsorted = torch.empty(offset, dtype=torch.long)
        unsorted[torch.tensor(sorted_components)] = torch.arange(offset)
        self.register_buffer("unsorted_components", unsorted, persistent=False)

    def use_kernel(self, kernel: str) -> None:
        self.kernel = checked_kernel(kernel, "convolution")

    def forward(self, x, sh, w, slot: Optional[torch.Tensor], edge_index, norm, groups: Optional[List[CenterGroup]]):
        """w: (rows, paths, channels) the radial weights (`radial_weights`), edge e reading row slot[e] (row e
        without slot)."""
        x = channels_last(x, self.irreps_in_dims, self.channels)
        if self.kernel == "fused":
            slot = slot if slot is not None else edge_index.new_zeros(0)
            messages = torch.ops.vivace.nequip_conv(x, sh, w, slot, edge_index[0], edge_index[1], norm.view(-1),
                                                    self.cg.view(-1), self.contraction.entries, self.components)
            return channels_first(messages, self.mid_dims)
        if slot is not None:
            w = w.index_select(0, slot)
        if groups is None:
            messages = self.messages(x, sh, w, edge_index, norm.shape[0])
        else:
            messages = self.messages_by_groups(x, sh, w, edge_index, norm.shape[0], groups)
        return channels_first(messages * norm.unsqueeze(-1), self.mid_dims)

    def radial_weights(self, basis: torch.Tensor) -> torch.Tensor:
        """(rows, paths, channels) the weight of every path and channel, for each row of the radial basis."""
        w = self.radial(basis)
        return w.view(w.shape[0], len(self.mid_dims), self.channels)

    def messages(self, x, sh, w, edge_index, num_nodes: int):
        """Summed messages (nodes, paths' components, channels) through the sparse contraction."""
        x = gather(x, edge_index[1])  # (E, dim_x, C)
        mid = self.contraction(x, sh.unsqueeze(-1), self.cg)
        # exported too, the index_select (not expanded blocks): the paths' dimensions alternate (1, 3, 5, 3, ...),
        # and a cat of one block per run cost 1.4x the time and 2.3 GB more at 1536-atom water (float64, AOTI);
        # in the layer programs (groups of 4096 edges, 12288 atoms) the two ran within noise of each other
        return scatter_sum(mid * spread_over_components(w, self.components), edge_index[0], num_nodes)

    @torch.jit.unused
    def messages_by_groups(self, x, sh, w, edge_index, num_nodes: int, groups: List[CenterGroup]):
        """The same sums, eager, one group of consecutive centers at a time (edges sorted by center): every
        per-edge tensor stays small enough to be reused from the heap, and each group's messages fill
        their own rows."""
        parts, done = [], 0
        # split, not sliced: the gradient of each slice would be a zero tensor the size of the whole (a 1536-atom
        # 4-layer NequIP's forces took 1.7x the time that way); that of a split is one concatenation
        sizes = [e1 - e0 for (e0, e1), _ in groups]
        for ((e0, e1), (n0, n1)), sh_g, w_g in zip(groups, torch.split(sh, sizes), torch.split(w, sizes)):
            if n0 > done:
                parts.append(x.new_zeros(n0 - done, sum(self.mid_dims), self.channels))
            center = edge_index[0, e0:e1] - n0
            parts.append(self.messages_by_dim(x, sh_g, w_g, center, edge_index[1, e0:e1], n1 - n0))
            done = n1
        if num_nodes > done:
            parts.append(x.new_zeros(num_nodes - done, sum(self.mid_dims), self.channels))
        return torch.cat(parts).index_select(1, self.unsorted_components)

    @torch.jit.unused
    def messages_by_dim(self, x, sh, w, center, neighbor, num_nodes: int):
        """Summed messages with the paths grouped by output dimension d: per edge one dense (paths x d,
        dim_x) matrix from Y_ij multiplies x_j for all channels, and each path's radial weight broadcasts
        over its d components. Components come out sorted by dimension (see `unsorted_components`)."""
        num_edges, dim_x = sh.shape[0], x.shape[1]
        x = gather(x, neighbor)  # (E, dim_x, C)
        w = w.index_select(1, self.sorted_paths)
        blocks, first_path = [], 0
        for dim, num_paths in self.paths_per_dim:
            kernel = getattr(self, f"kernel_{dim}")  # (dim_sh, paths x d x dim_x)
            a = torch.matmul(sh, kernel).view(num_edges, num_paths * dim, dim_x)
            product = torch.bmm(a, x).view(num_edges, num_paths, dim, self.channels)
            weighted = product * w[:, first_path : first_path + num_paths].unsqueeze(2)
            blocks.append(scatter_sum(weighted.view(num_edges, num_paths * dim, self.channels), center, num_nodes))
            first_path += num_paths
        return torch.cat(blocks, dim=1)


class InteractionBlock(nn.Module):
    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_target: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_types: int,
        radial: List[int],
        resnet: bool,
    ):
        super().__init__()
        reachable = o3.Irreps([(mul, ir) for mul, ir in irreps_target if any(ir in a.ir * b.ir for a in irreps_in for b in irreps_sh)])
        scalars = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in reachable if ir.l > 0])
        self.gate = Gate(scalars, gated)
        self.linear_in = o3.Linear(irreps_in, irreps_in)
        self.convolution = Convolution(irreps_in, irreps_sh, self.gate.irreps_in, radial)
        self.linear_out = o3.Linear(self.convolution.irreps_out, self.gate.irreps_in)
        self.self_connection = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{num_types}x0e"), self.gate.irreps_in)
        self.resnet = resnet and self.gate.irreps_out == irreps_in
        self.irreps_out = self.gate.irreps_out

    def forward(self, h, species, sh, w, edge_index, norm, groups: Optional[List[CenterGroup]]):
        return self.update(h, h, species, sh, w, None, edge_index, norm, groups)

    def update(self, h_centers, h, species_centers, sh, w, slot: Optional[torch.Tensor], edge_index, norm,
               groups: Optional[List[CenterGroup]]):
        """The new features of the centers, rows [0, len(norm)) of the graph, from the features h of all its
        nodes (centers first): a rank's graph holds its atoms as centers and their neighbors beyond them.
        w, slot: the convolution's radial weights, edge e reading row slot[e] (row e without slot)."""
        m = self.convolution(self.linear_in(h), sh, w, slot, edge_index, norm, groups)
        out = self.gate(self.linear_out(m) + self.self_connection(h_centers, species_centers))
        return h_centers + out if self.resnet else out


class NequIP(nn.Module):
    """Atomic energies (float64) of the nodes of a graph given its edge vectors r_ij = x_j - x_i."""

    execution: str
    edges_per_group: int
    share_reverse_pairs: bool
    tensor_product_kernel: str

    def __init__(
        self,
        type_names: List[str],
        r_max: float,
        l_max: int = 2,
        parity: bool = True,
        num_layers: int = 4,
        num_features: int = 32,
        num_bessel: int = 8,
        polynomial_p: int = 6,
        radial_hidden: List[int] = [64, 64],
        resnet: bool = False,
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
            raise ValueError(f"NequIP l_max must be 0 to 3, not {l_max}")
        if num_layers < 1:
            raise ValueError(f"NequIP num_layers must be at least 1, not {num_layers}")
        num_types = len(type_names)
        self.r_max = float(r_max)
        self.message_passing_depth = num_layers
        self.execution = "eager"
        self.edges_per_group = EDGES_PER_GROUP
        self.share_reverse_pairs = True
        self.tensor_product_kernel = "torch"
        self.num_bessel = num_bessel
        self.register_buffer("message_norm", per_type(avg_num_neighbors, num_types, "avg_num_neighbors").rsqrt())
        self.register_buffer("one_hot", torch.eye(num_types), persistent=False)

        self.geometry = EdgeGeometry(type_names, r_max, l_max, num_bessel, polynomial_p, edge_type_cutoffs)
        irreps_sh = self.geometry.irreps_sh
        self.sh_dim = irreps_sh.dim
        irreps = o3.Irreps(f"{num_features}x0e")
        self.embedding = o3.Linear(o3.Irreps(f"{num_types}x0e"), irreps)
        blocks = []
        for k in range(num_layers):
            last = k == num_layers - 1
            target = o3.Irreps(f"{num_features}x0e") if last else hidden_irreps(num_features, l_max, parity)
            block = InteractionBlock(irreps, target, irreps_sh, num_types, [num_bessel] + radial_hidden, resnet)
            blocks.append(block)
            irreps = block.irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.readout = o3.Linear(irreps, o3.Irreps("0e"))
        self.head = EnergyHead(type_names, energy_scale, energy_shift, zbl, units, cohesion, mean_coordination,
                               cohesion_form, shortest_distances if core_repulsion else [])

    def use_kernel(self, kernel: str) -> None:
        """The convolutions' implementation (see Convolution): "torch" or "fused"."""
        for block in self.blocks:
            block.convolution.use_kernel(kernel)
        self.tensor_product_kernel = kernel

    def forward(self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        num_nodes = atom_types.shape[0]
        groups: Optional[List[CenterGroup]] = None
        if not torch.jit.is_scripting() and in_python(self.execution) and self.tensor_product_kernel == "torch":
            edge_vectors, edge_index, _ = sorted_by_center(edge_vectors, edge_index)
            groups = center_groups(edge_index[0], num_nodes, self.edges_per_group)
        r, envelope, radial_basis, sh = self.edge_geometry(edge_vectors, edge_index, atom_types)
        radial = self.radial_input(radial_basis, edge_index, num_nodes)
        h = self.initial_features(atom_types)
        for k in range(len(self.blocks)):
            w = self.radial_weights(k, radial)
            h = self.layer(k, h, h, atom_types, atom_types, sh, w, edge_index, groups, radial[1])
        return self.node_energies(h, atom_types, r, envelope, edge_index)

    def edge_geometry(self, edge_vectors, edge_index, atom_types) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r, envelope, radial basis, spherical harmonics) of every edge."""
        return self.geometry(edge_vectors, atom_types[edge_index[0]], atom_types[edge_index[1]], self.one_hot.dtype)

    def radial_input(self, radial_basis, edge_index, num_nodes: int) -> RadialInput:
        """The radial MLP once per pair i <-> j (`share_reverse_pairs`, the default), else once per edge: on a
        periodic graph half the MLP's work (float64, 1536 atoms, one LAMMPS rank: 217 -> 180-195 us/atom-step)."""
        if not self.share_reverse_pairs:
            return radial_basis, None
        rows, slot = reverse_pair_rows(edge_index, num_nodes)
        return radial_basis.index_select(0, rows), slot

    def initial_features(self, atom_types: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.one_hot[atom_types])

    def radial_weights(self, k: int, radial: RadialInput) -> torch.Tensor:
        """(rows, paths, channels) block k's radial weights of every row of `radial`."""
        w = radial[0].new_zeros(0)
        for j, block in enumerate(self.blocks):
            if j == k:
                w = block.convolution.radial_weights(radial[0])
        return w

    def radial_widths(self) -> List[int]:
        """Each block's radial weights per edge (paths x channels)."""
        return [len(block.convolution.mid_dims) * block.convolution.channels for block in self.blocks]

    def layer(self, k: int, h_centers, h, center_types, atom_types, sh, w, edge_index,
              groups: Optional[List[CenterGroup]] = None, slot: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Features after block k of the centers (the first len(center_types) nodes) from those of all nodes,
        given block k's radial weights w, edge e reading row slot[e] (row e without slot)."""
        norm = self.message_norm[center_types].unsqueeze(-1)
        for j, block in enumerate(self.blocks):
            if j == k:
                w = w.view(w.shape[0], len(block.convolution.mid_dims), block.convolution.channels)
                h_centers = block.update(h_centers, h, self.one_hot[center_types], sh, w, slot, edge_index, norm,
                                         groups)
        return h_centers

    def isolated_energies(self) -> torch.Tensor:
        """(types,) the readout of one atom of each type without neighbors, through the same blocks: it is
        subtracted, so that such an atom has exactly its shift and the energy goes smoothly there as
        neighbors leave."""
        h = self.embedding(self.one_hot)
        sh = self.one_hot.new_zeros(0, self.sh_dim)
        basis = self.one_hot.new_zeros(0, self.num_bessel)
        no_edges = torch.zeros(2, 0, dtype=torch.long, device=h.device)
        for block in self.blocks:
            w = block.convolution.radial_weights(basis)
            h = block(h, self.one_hot, sh, w, no_edges, self.message_norm.unsqueeze(-1), None)
        return self.readout(h).squeeze(-1)

    def node_energies(self, h_centers, atom_types, r, envelope, edge_index) -> torch.Tensor:
        """Atomic energies (float64) of the centers from their last features, with the head's edge terms."""
        center_types = atom_types[: h_centers.shape[0]]
        energy = (self.readout(h_centers).squeeze(-1) - self.isolated_energies()[center_types]).to(torch.float64)
        center_type, neighbor_type = atom_types[edge_index[0]], atom_types[edge_index[1]]
        return self.head(energy, center_types, r, envelope, edge_index[0], center_type, neighbor_type)
