import math
from typing import Optional

import torch
from torch import nn


class BesselBasis(nn.Module):
    """b_n(r) = sqrt(2/r_max) sin(n pi r / r_max) / r, n = 1..num_basis."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / r_max)
        freqs = math.pi * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = (r / self.r_max).unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs * x) / r.unsqueeze(-1)


class PolynomialCutoff(nn.Module):
    """u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x = r/r_max < 1, else 0.

    u and its first p-1 derivatives vanish at x = 1; beyond the cutoff u is exactly zero, so padded or
    far edges contribute nothing.
    """

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor, r_cut: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`r_cut`, if given, holds each edge's own cutoff (per-edge-type cutoffs), else r_max applies."""
        p = self.p
        x = r / self.r_max if r_cut is None else r / r_cut
        u = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - 0.5 * p * (p + 1.0) * torch.pow(x, p + 2.0)
        )
        return torch.where(x < 1.0, u, torch.zeros_like(u))
