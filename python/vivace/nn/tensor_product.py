import math
from typing import List, Tuple

import torch
from e3nn import o3
from torch import nn


def irreps_dim(l_max: int) -> int:
    """Components of the features 0e + 1o + ... + l_max: sum of (2l+1) = (l_max+1)^2."""
    return (l_max + 1) ** 2


def degree_of_component(l_max: int) -> torch.Tensor:
    """For each of the (l_max+1)^2 components, its degree l."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(l_max + 1)])


def allowed_paths(l_in: int, l_out: int) -> List[Tuple[int, int, int]]:
    """Paths l1 x l2 -> l3 between features of spherical-harmonic parity (-1)^l that keep O(3) symmetry."""
    return [
        (l1, l2, l3)
        for l1 in range(l_in + 1)
        for l2 in range(l_in + 1)
        for l3 in range(abs(l1 - l2), min(l1 + l2, l_out) + 1)
        if (l1 + l2 + l3) % 2 == 0
    ]


class ChannelwiseTensorProduct(nn.Module):
    """Channel-wise ("uuu") tensor product with one learned weight per channel and path.

        out[e, c, k] = sum_p w[c, p] sum_{m,n} C_p[m, n, k] x[e, c, m] y[e, c, n]

    x and y hold features 0e + 1o + ... + l_in (components in e3nn order); out holds 0e + ... + l_out.
    C_p is the Clebsch-Gordan block of path p = (l1, l2, l3) in component normalisation. All paths are
    folded into one per-channel kernel, so the product is a single batched matrix multiply over channels.
    """

    def __init__(self, l_in: int, l_out: int, channels: int):
        super().__init__()
        self.paths = allowed_paths(l_in, l_out)
        d_in, d_out = irreps_dim(l_in), irreps_dim(l_out)
        paths_into = [sum(1 for p in self.paths if p[2] == l) for l in range(l_out + 1)]
        cg = torch.zeros(len(self.paths), d_in, d_in, d_out, dtype=torch.float64)
        for k, (l1, l2, l3) in enumerate(self.paths):
            block = o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt((2 * l3 + 1) / paths_into[l3])
            cg[k, l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2] = block
        self.register_buffer("cg", cg.reshape(len(self.paths), -1).to(torch.get_default_dtype()))
        self.weight = nn.Parameter(torch.randn(channels, len(self.paths)))
        self.d_in = d_in
        self.d_out = d_out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        num_edges, channels = x.shape[0], x.shape[1]
        kernel = (self.weight @ self.cg).view(channels, self.d_in * self.d_in, self.d_out)
        outer = (x.unsqueeze(-1) * y.unsqueeze(-2)).reshape(num_edges, channels, self.d_in * self.d_in)
        return torch.bmm(outer.transpose(0, 1), kernel).transpose(0, 1)
