from typing import List

import torch
from torch import nn


class PerSpeciesScaleShift(nn.Module):
    """E_i = scale[type_i] * e_i + shift[type_i], in float64 whatever the model's dtype.

    The buffers are re-cast to float64 after any dtype conversion of the parent module.
    """

    def __init__(self, num_types: int, scale: List[float], shift: List[float]):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale if scale else [1.0] * num_types, dtype=torch.float64))
        self.register_buffer("shift", torch.tensor(shift if shift else [0.0] * num_types, dtype=torch.float64))
        if self.scale.shape != (num_types,) or self.shift.shape != (num_types,):
            raise ValueError(f"energy scale and shift need one value per type ({num_types})")

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.scale = self.scale.to(torch.float64)
        self.shift = self.shift.to(torch.float64)
        return self

    def forward(self, energy: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        return self.scale[atom_types] * energy + self.shift[atom_types]
