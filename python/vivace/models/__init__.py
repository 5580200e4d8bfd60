"""Model construction from a config dict, and the artifact contract."""

from typing import Any, Dict, List

import torch

from .allegro import Allegro
from .contract import EdgeForceModel, atom_forces, edge_virials

MODEL_KINDS = {"allegro": Allegro}

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model(kind: str, hyperparameters: Dict[str, Any], type_names: List[str], dtype: str) -> torch.nn.Module:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind '{kind}' (known: {', '.join(MODEL_KINDS)})")
    if dtype not in DTYPES:
        raise ValueError(f"unknown model dtype '{dtype}' (known: {', '.join(DTYPES)})")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        return MODEL_KINDS[kind](num_types=len(type_names), **hyperparameters)
    finally:
        torch.set_default_dtype(previous)


__all__ = ["Allegro", "EdgeForceModel", "atom_forces", "edge_virials", "build_model", "MODEL_KINDS", "DTYPES"]
