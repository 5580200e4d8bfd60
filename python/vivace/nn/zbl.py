"""Ziegler-Biersack-Littmark universal screened nuclear repulsion, for the short range the data never sees.

    E_ij = k_e Z_i Z_j / r * phi(r / a_ij),   a_ij = 0.46850 A / (Z_i^0.23 + Z_j^0.23)
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x)

multiplied by the model's polynomial cutoff envelope so that it vanishes smoothly at r_max. Each pair
appears twice in a full neighbor list, so atom i gets half of E_ij from each of its edges. Float64 throughout.
"""

from typing import List

import torch
from torch import nn

from ..units import unit_style

BOHR_SCREENING = 0.46850  # Angstrom
PHI_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
PHI_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


class ZBL(nn.Module):
    def __init__(self, atomic_numbers: List[int], units: str = "metal"):
        super().__init__()
        self.coulomb = unit_style(units).coulomb_constant  # e^2 / (4 pi eps0) in the model's energy x A
        self.screening = BOHR_SCREENING
        self.register_buffer("z", torch.tensor(atomic_numbers, dtype=torch.float64))
        self.register_buffer("phi_c", torch.tensor(PHI_COEFFICIENTS, dtype=torch.float64))
        self.register_buffer("phi_d", torch.tensor(PHI_EXPONENTS, dtype=torch.float64))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("z", "phi_c", "phi_d"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    def forward(
        self, r: torch.Tensor, envelope: torch.Tensor, center_type: torch.Tensor, neighbor_type: torch.Tensor
    ) -> torch.Tensor:
        """Per-edge half pair energies (E,), float64."""
        zi, zj = self.z[center_type], self.z[neighbor_type]
        a = self.screening / (zi.pow(0.23) + zj.pow(0.23))
        x = (r / a).unsqueeze(-1)
        phi = (self.phi_c * torch.exp(-self.phi_d * x)).sum(-1)
        return 0.5 * self.coulomb * zi * zj / r * phi * envelope.to(torch.float64)
