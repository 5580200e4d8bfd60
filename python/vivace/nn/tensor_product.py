"""Tensor products over the non-zero Clebsch-Gordan entries.

Features are laid out (rows, components, channels), channels innermost. The core is a sparse bilinear
contraction

    out[e, k, c] = sum_q coef[q, c] x[e, m_q, c] y[e, n_q, c]      over the entries q = (k, m_q, n_q)

with three ways to evaluate it, chosen by where it runs:
- export (execution "export", see execution.py): a sum of gathered products, whose gradients are the same
  contraction with the roles of (out, x, y) permuted, so forward, backward and double backward are gathers
  that inductor fuses into single loops vectorised along channels (never atomic scatters);
- eager, y per node (Allegro's density): per node a small dense matrix times the node's padded edges;
- otherwise (eager NequIP, TorchScript): dense per-channel kernels and one batched matrix multiply.
"""

import math
from typing import Dict, List, Optional, Tuple

import torch
from e3nn import o3
from torch import nn

from .scatter import gather, scatter_sum


def irreps_of(l_max: int, parity: bool) -> o3.Irreps:
    """One copy of each irrep up to l_max: all parities (parity=True) or only the spherical-harmonic
    parity (-1)^l (parity=False)."""
    if parity:
        return o3.Irreps([(1, (l, p)) for l in range(l_max + 1) for p in (1, -1)])
    return o3.Irreps.spherical_harmonics(l_max)


def component_index(dims: List[int]) -> torch.Tensor:
    """For each component of irreps of dimensions `dims`, the index of its irrep: [0, 1, 1, 1, 2, ...]."""
    return torch.repeat_interleave(torch.arange(len(dims)), torch.tensor(dims, dtype=torch.long))


def spread_over_components(w: torch.Tensor, index: torch.Tensor, dims: Optional[List[int]] = None) -> torch.Tensor:
    """(rows, irreps, C) -> (rows, sum of dims, C): each irrep's value repeated over its components, with
    `index` from component_index. One index_select: its gradients to any order stay the size of w or of the
    output (a cat of expanded blocks would, in the double backward of training, zero-fill one output-sized
    tensor per irrep). Given the irreps' `dims` (exported models, first derivatives only), the cat of
    expanded blocks instead: its gradient sums each block, where the index_select's (an index_add) compiles
    into a loop of atomic adds, a quarter of a compiled Allegro's time."""
    if dims is None:
        return w.index_select(1, index)
    rows, channels = w.shape[0], w.shape[2]
    blocks: List[torch.Tensor] = []
    first = 0
    while first < len(dims):  # one expanded block per run of irreps of equal dimension
        last = first + 1
        while last < len(dims) and dims[last] == dims[first]:
            last += 1
        run = w[:, first:last].unsqueeze(2).expand(rows, last - first, dims[first], channels)
        blocks.append(run.reshape(rows, (last - first) * dims[first], channels))
        first = last
    return torch.cat(blocks, 1)


def scalar_components(irreps: o3.Irreps) -> List[int]:
    """Component indices of the even scalars 0e (the rotation- and reflection-invariant ones)."""
    return [int(s.start) for s, (_, ir) in zip(irreps.slices(), irreps) if ir == o3.Irrep("0e")]


def tensor_product_paths(irreps_x: o3.Irreps, irreps_y: o3.Irreps, irreps_out: o3.Irreps) -> List[Tuple[int, int, int]]:
    """Paths (i_x, i_y, i_out) allowed by O(3): l_out in |l_x - l_y|..l_x + l_y and p_out = p_x p_y."""
    return [
        (a, b, c)
        for a, (_, ir_x) in enumerate(irreps_x)
        for b, (_, ir_y) in enumerate(irreps_y)
        for c, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir_x * ir_y
    ]


ROLE_ORDERS = [(0, 1, 2), (1, 0, 2), (2, 0, 1), (0, 2, 1), (1, 2, 0), (2, 1, 0)]


class SparseContraction(nn.Module):
    """Gather tables for out[e, k, c] = sum_q coef[q, c] x[e, m_q, c] y[e, n_q, c] and its gradients.

    `entries` is a list of (k, m, n) in the three index spaces (out, x, y) of sizes `dims`. For each
    role order (o, a, b) a table groups the entries by their index in space o, padded to the largest
    group with entries that point at an extra all-zero coefficient row.
    """

    execution: str

    def __init__(self, entries: List[Tuple[int, int, int]], dims: Tuple[int, int, int]):
        super().__init__()
        self.execution = "eager"
        self.dims = dims
        self.widths: Dict[str, int] = {}
        for order in ROLE_ORDERS:
            o, a, b = order
            groups: List[List[Tuple[int, int, int]]] = [[] for _ in range(dims[o])]
            for q, entry in enumerate(entries):
                groups[entry[o]].append((entry[a], entry[b], q))
            width = max(1, max(len(g) for g in groups))
            padded = [g + [(0, 0, len(entries))] * (width - len(g)) for g in groups]
            table = torch.tensor(padded, dtype=torch.long).reshape(-1, 3)
            name = "".join(map(str, order))
            self.register_buffer(f"a_{name}", table[:, 0].contiguous(), persistent=False)
            self.register_buffer(f"b_{name}", table[:, 1].contiguous(), persistent=False)
            self.register_buffer(f"q_{name}", table[:, 2].contiguous(), persistent=False)
            self.widths[name] = width
        index = torch.tensor(entries, dtype=torch.long).reshape(-1, 3)
        # (3, Q): each entry's index in the out, x and y spaces (the layout of vivace::channelwise_tp)
        self.register_buffer("entries", index.t().contiguous(), persistent=False)
        # position of each entry in the dense kernel (x component, y component, out component), flattened
        dense = (index[:, 1] * dims[2] + index[:, 2]) * dims[0] + index[:, 0]
        self.register_buffer("dense_index", dense.contiguous(), persistent=False)
        by_node = (index[:, 2] * dims[0] + index[:, 0]) * dims[1] + index[:, 1]
        self.register_buffer("node_index", by_node.contiguous(), persistent=False)

    @torch.jit.unused
    def table(self, order: Tuple[int, int, int]):
        name = "".join(map(str, order))
        return getattr(self, f"a_{name}"), getattr(self, f"b_{name}"), getattr(self, f"q_{name}"), self.widths[name]

    def forward(self, x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """coef (num_entries, channels or 1); x (E, dims[1], C); y (E, dims[2], C or 1)."""
        if not torch.jit.is_scripting() and self.execution == "export":
            return _contract_function(x, y, coef, self)
        return self.dense(x, y, coef)

    def dense_kernel(self, coef: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
        """The entries' coefficients laid into a dense (channels, rows, rest) kernel at `index`."""
        total = self.dims[0] * self.dims[1] * self.dims[2]
        kernel = torch.zeros(coef.shape[1], total, dtype=coef.dtype, device=coef.device)
        return kernel.index_add(1, index, coef.t()).view(coef.shape[1], rows, total // rows)

    def node_grouped(
        self, x: torch.Tensor, y_nodes: torch.Tensor, coef: torch.Tensor, slots: torch.Tensor, width: int
    ) -> torch.Tensor:
        """The contraction when y is a per-node quantity y[center[e]] (eager mode).

        Per node i and channel c, A_i[k, m] = sum_q coef[q, c] y_i[n_q, c] is a small dense matrix, so the
        edges of node i, padded to `width` slots (slots[e] = center[e] * width + slot), go through one
        batched matrix multiply: out_i = A_i X_i, with no per-edge intermediate larger than x itself."""
        dim_out, dim_x, dim_y = self.dims[0], self.dims[1], self.dims[2]
        num_nodes = y_nodes.shape[0]
        a = torch.matmul(y_nodes.permute(2, 0, 1), self.dense_kernel(coef, self.node_index, dim_y))  # (C, N, out*x)
        a = a.view(-1, num_nodes, dim_out, dim_x).transpose(0, 1)  # (N, C, dim_out, dim_x)
        padded = scatter_sum(x, slots, num_nodes * width).view(num_nodes, width, dim_x, -1).permute(0, 3, 2, 1)
        out = torch.matmul(a, padded)  # (N, C, dim_out, width)
        return gather(out.permute(0, 3, 2, 1).reshape(num_nodes * width, dim_out, -1), slots)

    def dense(self, x: torch.Tensor, y: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        dim_out, dim_x, dim_y = self.dims[0], self.dims[1], self.dims[2]
        if y.shape[-1] == 1 and coef.shape[-1] == 1:
            # y and the coefficients shared by all channels: one (dim_out, dim_x) matrix per row times x
            a = torch.matmul(y.squeeze(-1), self.dense_kernel(coef, self.node_index, dim_y)[0])
            return torch.bmm(a.view(-1, dim_out, dim_x), x)
        kernel = self.dense_kernel(coef, self.dense_index, dim_x * dim_y)  # (C, dim_x * dim_y, dim_out)
        xs, ys = x.permute(2, 0, 1), y.permute(2, 0, 1)  # (C, E, dim)
        outer = (xs.unsqueeze(-1) * ys.unsqueeze(-2)).flatten(-2)  # (C, E, dim_x * dim_y)
        return torch.matmul(outer, kernel).permute(1, 2, 0)


def contract_unrolled(x, y, coef, index_a, index_b, entry, width: int, dim_out: int) -> torch.Tensor:
    """out[e, k, c] = sum_p coef[entry[k, p], c] x[e, index_a[k, p], c] y[e, index_b[k, p], c], written out
    as `width` gathered products (the padding entries point at an extra zero coefficient)."""
    coef = torch.cat([coef, torch.zeros_like(coef[:1])]).index_select(0, entry).view(dim_out, width, -1)
    index_a, index_b = index_a.view(dim_out, width), index_b.view(dim_out, width)
    out = x.index_select(1, index_a[:, 0]) * y.index_select(1, index_b[:, 0]) * coef[:, 0]
    for p in range(1, width):
        out = out + x.index_select(1, index_a[:, p]) * y.index_select(1, index_b[:, p]) * coef[:, p]
    return out


@torch.jit.unused
def _contract_function(x, y, coef, plan: SparseContraction) -> torch.Tensor:
    return _Contract.apply(x, y, coef, plan, (0, 1, 2))


class _Contract(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, coef, plan, order):
        ctx.save_for_backward(x, y, coef)
        ctx.plan, ctx.order = plan, order
        return contract_unrolled(x, y, coef, *plan.table(order), plan.dims[order[0]])

    @staticmethod
    def backward(ctx, grad):
        x, y, coef = ctx.saved_tensors
        plan, (o, a, b) = ctx.plan, ctx.order
        grad_x = grad_y = grad_coef = None
        if ctx.needs_input_grad[0]:
            grad_x = _Contract.apply(grad, y, coef, plan, (a, o, b))
            grad_x = _reduce_broadcast(grad_x, x)
        if ctx.needs_input_grad[1]:
            grad_y = _Contract.apply(grad, x, coef, plan, (b, o, a))
            grad_y = _reduce_broadcast(grad_y, y)
        if ctx.needs_input_grad[2]:
            space = {o: grad, a: x, b: y}
            terms = [space[s].index_select(1, plan.entries[s]) for s in range(3)]
            grad_coef = (terms[0] * terms[1] * terms[2]).sum(0)
            if coef.shape[-1] == 1:
                grad_coef = grad_coef.sum(-1, keepdim=True)
        return grad_x, grad_y, grad_coef, None, None


def _reduce_broadcast(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return grad.sum(-1, keepdim=True) if like.shape[-1] == 1 and grad.shape[-1] != 1 else grad


def clebsch_gordan_entries(irreps_x: o3.Irreps, irreps_y: o3.Irreps, irreps_out: o3.Irreps, paths):
    """The non-zero entries (k, m, n), their path and value, of all paths in component normalisation,
    each path divided by the square root of the number of paths into its output irrep."""
    paths_into = [sum(1 for p in paths if p[2] == c) for c in range(len(irreps_out))]
    sx, sy, so = irreps_x.slices(), irreps_y.slices(), irreps_out.slices()
    entries, path_of, values = [], [], []
    for k, (a, b, c) in enumerate(paths):
        l1, l2, l3 = irreps_x[a].ir.l, irreps_y[b].ir.l, irreps_out[c].ir.l
        block = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt((2 * l3 + 1) / paths_into[c])
        for m, n, q in torch.nonzero(block.abs() > 1e-12).tolist():
            entries.append((so[c].start + q, sx[a].start + m, sy[b].start + n))
            path_of.append(k)
            values.append(float(block[m, n, q]))
    return entries, path_of, values


KERNELS = ("torch", "fused")


def checked_kernel(kernel: str, what: str) -> str:
    """`kernel` if it names one of KERNELS (and, for "fused", the operator library is installed)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown {what} kernel '{kernel}' (one of {', '.join(KERNELS)})")
    if kernel == "fused":
        from .kernels import require

        require()
    return kernel


class ChannelwiseTensorProduct(nn.Module):
    """Channel-wise ("uuu") tensor product with one learned weight per channel and path:

        out[e, k, c] = sum_p w[p, c] sum_{m, n} C_p[m, n, k] x[e, m, c] y[e, n, c]

    C_p is the Clebsch-Gordan block of path p in component normalisation, divided by the square root of
    the number of paths into the same output irrep. Output irreps that no path reaches are dropped
    (see `irreps_out`).

    `kernel` picks the implementation: "torch" (PyTorch, differentiable to any order: training) or "fused"
    (the C++ operator vivace::channelwise_tp, first derivatives only: inference and export on a CPU).
    """

    kernel: str

    def __init__(self, irreps_x: o3.Irreps, irreps_y: o3.Irreps, irreps_out: o3.Irreps, channels: int):
        super().__init__()
        reachable = {c for _, _, c in tensor_product_paths(irreps_x, irreps_y, irreps_out)}
        irreps_out = o3.Irreps([irreps_out[c] for c in sorted(reachable)])
        if len(irreps_out) == 0:
            raise ValueError(f"no tensor-product path from {irreps_x} x {irreps_y} reaches any wanted irrep")
        self.irreps_out = irreps_out
        self.dim_out = irreps_out.dim
        self.paths = tensor_product_paths(irreps_x, irreps_y, irreps_out)
        entries, path_of, values = clebsch_gordan_entries(irreps_x, irreps_y, irreps_out, self.paths)
        self.contraction = SparseContraction(entries, (irreps_out.dim, irreps_x.dim, irreps_y.dim))
        self.register_buffer("path_of_entry", torch.tensor(path_of), persistent=False)
        self.register_buffer("cg", torch.tensor(values, dtype=torch.get_default_dtype()).unsqueeze(-1), persistent=False)
        self.weight = nn.Parameter(torch.randn(len(self.paths), channels))
        self.kernel = "torch"

    def use_kernel(self, kernel: str) -> None:
        self.kernel = checked_kernel(kernel, "tensor-product")

    def forward(
        self, x: torch.Tensor, y_nodes: torch.Tensor, center: torch.Tensor, slots: Optional[torch.Tensor], width: int
    ) -> torch.Tensor:
        """x per edge (E, dim_x, C); y per node (N, dim_y, C), taken at each edge's center. `slots` (see
        `neighbor_slots`), when given, selects the node-grouped matrix multiply."""
        coef = self.weight.index_select(0, self.path_of_entry) * self.cg
        if self.kernel == "fused":
            return torch.ops.vivace.channelwise_tp(x, y_nodes, center, coef, self.contraction.entries, self.dim_out)
        if slots is not None:
            return self.contraction.node_grouped(x, y_nodes, coef, slots, width)
        return self.contraction(x, gather(y_nodes, center), coef)


@torch.jit.unused
def neighbor_slots(center: torch.Tensor, num_nodes: int) -> Tuple[torch.Tensor, int]:
    """For each edge, center * width + (its rank among the edges of its center), and width = the largest
    number of edges of one center: the layout of `SparseContraction.node_grouped`."""
    counts = torch.bincount(center, minlength=num_nodes)
    width = max(int(counts.max()), 1) if center.numel() > 0 else 1
    order = torch.argsort(center, stable=True)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(center)
    rank[order] = torch.arange(center.numel(), device=center.device) - first[center[order]]
    return center * width + rank, width
