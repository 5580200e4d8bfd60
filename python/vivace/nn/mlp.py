import math
from typing import List

import torch
from torch import nn


class Linear(nn.Module):
    """Bias-free linear map, weights N(0, 1) scaled by 1/sqrt(fan_in) in forward (e3nn-style)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features))
        self.scale = 1.0 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.weight * self.scale)


class MLP(nn.Module):
    """Bias-free MLP with SiLU between layers: MLP(0) = 0, so anything scaled by a cutoff stays smooth.

    The SiLU output is rescaled to unit second moment so that activations keep their size with depth.
    """

    def __init__(self, widths: List[int]):
        super().__init__()
        self.silu_norm = 1.0 / math.sqrt(0.3558)  # 1 / sqrt(E[silu(z)^2]) for z ~ N(0, 1)
        self.layers = nn.ModuleList([Linear(a, b) for a, b in zip(widths[:-1], widths[1:])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, layer in enumerate(self.layers):
            if k > 0:
                x = torch.nn.functional.silu(x) * self.silu_norm
            x = layer(x)
        return x
