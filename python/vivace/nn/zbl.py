"""Ziegler-Biersack-Littmark universal screened nuclear repulsion, for the short range the data never sees.

    E_ij = k_e Z_i Z_j / r * phi(r / a_ij),   a_ij = 0.46850 A / (Z_i^0.23 + Z_j^0.23)
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x)

multiplied by the model's polynomial cutoff envelope so that it vanishes smoothly at r_max, or, as a core
under a model without it, by a switch that is 1 below 0.7 and 0 above 0.9 of the training data's shortest
distance d_ij for the pair's types (quintic smoothstep between): zero on every training structure and
wherever healthy MD goes, a wall where a model left to itself may pull atoms together. Each pair appears twice
in a full neighbor list, so atom i gets half of E_ij from each of its edges. Float64 throughout.
"""

from typing import List, Optional, Sequence

import torch
from torch import nn

from ..units import unit_style

BOHR_SCREENING = 0.46850  # Angstrom
CORE_ON, CORE_OFF = 0.7, 0.9  # the core's switch, in fractions of the data's shortest distance for the pair


def screening_function(x: torch.Tensor) -> torch.Tensor:
    """ZBL's universal phi(x), x = r / a_ij."""
    return (0.18175 * torch.exp(-3.19980 * x) + 0.50986 * torch.exp(-0.94229 * x)
            + 0.28022 * torch.exp(-0.40290 * x) + 0.02817 * torch.exp(-0.20162 * x))  # fmt: skip


def core_switch(r: torch.Tensor, r_on: torch.Tensor, r_off: torch.Tensor) -> torch.Tensor:
    """1 for r <= r_on, 0 for r >= r_off, t^3 (10 - 15 t + 6 t^2) between, t = (r_off - r) / (r_off - r_on):
    continuous with its first two derivatives."""
    t = ((r_off - r) / (r_off - r_on)).clamp(0.0, 1.0)
    return t * t * t * (10.0 + t * (-15.0 + 6.0 * t))


class ZBL(nn.Module):
    """core: the (T, T) shortest distances of the training data, for ZBL as a core (module docstring).

    Everything that depends on the pair of types only is a (T, T) table, so an edge costs one lookup in each,
    the four exponentials of phi, and the switch."""

    def __init__(self, atomic_numbers: List[int], units: str = "metal", core: Optional[Sequence[Sequence[float]]] = None):
        super().__init__()
        self.is_core = core is not None
        z = torch.tensor(atomic_numbers, dtype=torch.float64)
        z_screening = z.pow(0.23)
        shortest = torch.tensor(core if core is not None else [[1.0]], dtype=torch.float64)
        # constants of the hyperparameters, not stored with the weights: a checkpoint loads into a model with or
        # without the core
        constants = {
            "half_coulomb": 0.5 * unit_style(units).coulomb_constant * z[:, None] * z[None, :],  # k_e Z_i Z_j / 2
            "inverse_screening": (z_screening[:, None] + z_screening[None, :]) / BOHR_SCREENING,  # 1 / a_ij
            "core_on": CORE_ON * shortest,
            "core_off": CORE_OFF * shortest,
        }
        for name, value in constants.items():
            self.register_buffer(name, value, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("half_coulomb", "inverse_screening", "core_on", "core_off"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    def forward(
        self, r: torch.Tensor, envelope: torch.Tensor, center_type: torch.Tensor, neighbor_type: torch.Tensor
    ) -> torch.Tensor:
        """Per-edge half pair energies (E,), float64."""
        phi = screening_function(r * self.inverse_screening[center_type, neighbor_type])
        if self.is_core:
            weight = core_switch(r, self.core_on[center_type, neighbor_type], self.core_off[center_type, neighbor_type])
        else:
            weight = envelope.to(torch.float64)
        return self.half_coulomb[center_type, neighbor_type] / r * phi * weight
