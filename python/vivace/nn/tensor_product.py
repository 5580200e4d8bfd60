"""Channel-wise tensor product over the non-zero Clebsch-Gordan entries only.

Features are laid out (E, components, channels): channels innermost, so every operation below reads
contiguous rows of `channels` numbers, and the product never builds the (components x components) outer
product per channel.
"""

import math
from typing import List, Tuple

import torch
from e3nn import o3
from torch import nn


def irreps_of(l_max: int, parity: bool) -> o3.Irreps:
    """One copy of each irrep up to l_max: all parities (parity=True) or only the spherical-harmonic
    parity (-1)^l (parity=False)."""
    if parity:
        return o3.Irreps([(1, (l, p)) for l in range(l_max + 1) for p in (1, -1)])
    return o3.Irreps.spherical_harmonics(l_max)


def irrep_of_component(irreps: o3.Irreps) -> torch.Tensor:
    """For each component of `irreps` (multiplicity 1 each), the index of its irrep."""
    return torch.cat([torch.full((ir.dim,), k, dtype=torch.long) for k, (_, ir) in enumerate(irreps)])


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


class ChannelwiseTensorProduct(nn.Module):
    """Channel-wise ("uuu") tensor product with one learned weight per channel and path.

        out[e, k, c] = sum_p w[p, c] sum_{m, n} C_p[m, n, k] x[e, m, c] y[e, n, c]

    Output irreps that no path reaches are dropped (see `irreps_out`).
    C_p is the Clebsch-Gordan block of path p in component normalisation, divided by the square root of
    the number of paths into the same output irrep. Only the non-zero (m, n) of each output component k
    are visited: they are grouped by k and padded to the same count P, so the product is one gather of
    x and y, a multiply and a sum over P, which a compiler fuses into a single loop.
    """

    def __init__(self, irreps_x: o3.Irreps, irreps_y: o3.Irreps, irreps_out: o3.Irreps, channels: int):
        super().__init__()
        reachable = {c for _, _, c in tensor_product_paths(irreps_x, irreps_y, irreps_out)}
        irreps_out = o3.Irreps([irreps_out[c] for c in sorted(reachable)])
        if len(irreps_out) == 0:
            raise ValueError(f"no tensor-product path from {irreps_x} x {irreps_y} reaches any wanted irrep")
        self.irreps_out = irreps_out
        self.paths = tensor_product_paths(irreps_x, irreps_y, irreps_out)
        paths_into = [sum(1 for p in self.paths if p[2] == c) for c in range(len(irreps_out))]
        sx, sy, so = irreps_x.slices(), irreps_y.slices(), irreps_out.slices()

        entries: List[List[Tuple[int, int, int, float]]] = [[] for _ in range(irreps_out.dim)]
        for k, (a, b, c) in enumerate(self.paths):
            l1, l2, l3 = irreps_x[a].ir.l, irreps_y[b].ir.l, irreps_out[c].ir.l
            block = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt((2 * l3 + 1) / paths_into[c])
            for m, n, q in torch.nonzero(block.abs() > 1e-12).tolist():
                entries[so[c].start + q].append((sx[a].start + m, sy[b].start + n, k, float(block[m, n, q])))

        width = max(len(e) for e in entries)
        pad = [e + [(0, 0, 0, 0.0)] * (width - len(e)) for e in entries]
        self.register_buffer("index_x", torch.tensor([[t[0] for t in e] for e in pad]).flatten(), persistent=False)
        self.register_buffer("index_y", torch.tensor([[t[1] for t in e] for e in pad]).flatten(), persistent=False)
        self.register_buffer("path", torch.tensor([[t[2] for t in e] for e in pad]), persistent=False)
        self.register_buffer(
            "cg", torch.tensor([[t[3] for t in e] for e in pad], dtype=torch.get_default_dtype()), persistent=False
        )
        self.weight = nn.Parameter(torch.randn(len(self.paths), channels))
        self.dim_out = irreps_out.dim
        self.width = width

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        num_edges, channels = x.shape[0], x.shape[2]
        coefficient = self.weight[self.path] * self.cg.unsqueeze(-1)  # (dim_out, P, channels)
        xs = x.index_select(1, self.index_x).view(num_edges, self.dim_out, self.width, channels)
        ys = y.index_select(1, self.index_y).view(num_edges, self.dim_out, self.width, channels)
        return (xs * ys * coefficient).sum(2)
