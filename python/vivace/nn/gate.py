"""Gate nonlinearity: act(scalars) and l > 0 irreps multiplied by silu of their own scalar gates.

Input layout [scalars | gates | gated] (e3nn component order, multiplicity-major within each irrep).
Even scalars go through SiLU, odd scalars through tanh (odd, so parity is kept); each activation is
rescaled to unit second moment for unit-normal input.
"""

import math
from typing import List

import numpy as np
import torch
from e3nn import o3
from torch import nn

from .tensor_product import component_index, spread_over_components


def second_moment_norm(f) -> float:
    """1 / sqrt(E[f(z)^2]) for z ~ N(0, 1), by Gauss-Hermite quadrature."""
    x, w = np.polynomial.hermite.hermgauss(100)
    z = torch.tensor(math.sqrt(2.0) * x, dtype=torch.float64)
    moment = float((torch.tensor(w) * f(z) ** 2).sum()) / math.sqrt(math.pi)
    return 1.0 / math.sqrt(moment)


SILU_NORM = second_moment_norm(torch.nn.functional.silu)
TANH_NORM = second_moment_norm(torch.tanh)


class Gate(nn.Module):
    execution: str
    gate_dims: List[int]  # the dimension of each gate's irrep; empty without gates

    def __init__(self, irreps_scalars: o3.Irreps, irreps_gated: o3.Irreps):
        super().__init__()
        self.execution = "eager"
        assert all(ir.l == 0 for _, ir in irreps_scalars) and all(ir.l > 0 for _, ir in irreps_gated)
        num_gates = irreps_gated.num_irreps
        self.irreps_in = irreps_scalars + o3.Irreps(f"{num_gates}x0e") + irreps_gated
        self.irreps_out = irreps_scalars + irreps_gated
        odd = torch.cat([torch.full((mul,), ir.p == -1) for mul, ir in irreps_scalars]) if len(irreps_scalars) else None
        self.register_buffer("odd", odd if odd is not None else torch.zeros(0, dtype=torch.bool), persistent=False)
        self.gate_dims = [ir.dim for mul, ir in irreps_gated for _ in range(mul)]
        self.register_buffer("gate_index", component_index(self.gate_dims), persistent=False)
        self.num_scalars = irreps_scalars.dim
        self.num_gates = num_gates
        self.silu_norm = SILU_NORM
        self.tanh_norm = TANH_NORM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, : self.num_scalars]
        s = torch.where(self.odd, torch.tanh(s) * self.tanh_norm, torch.nn.functional.silu(s) * self.silu_norm)
        if self.num_gates == 0:
            return s
        gates = torch.nn.functional.silu(x[:, self.num_scalars : self.num_scalars + self.num_gates]) * self.silu_norm
        dims = self.gate_dims if self.execution == "export" else None  # exported: no index_add in the gradient
        per_component = spread_over_components(gates.unsqueeze(-1), self.gate_index, dims)
        gated = x[:, self.num_scalars + self.num_gates :] * per_component.squeeze(-1)
        return torch.cat([s, gated], dim=1)
