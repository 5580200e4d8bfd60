"""Model construction from a config dict, and the artifact contract."""

import inspect
from typing import Any, Dict, List

import torch

from .allegro import Allegro
from .contract import EdgeForceModel, atom_forces, edge_virials
from .nequip import NequIP

MODEL_KINDS = {"allegro": Allegro, "nequip": NequIP}

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def hyperparameter_defaults(kind: str) -> Dict[str, Any]:
    """The keyword arguments a model kind accepts, with their defaults (None where one is required)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind '{kind}' (known: {', '.join(MODEL_KINDS)})")
    signature = inspect.signature(MODEL_KINDS[kind].__init__)
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in signature.parameters.items()
        if name not in ("self", "type_names")
    }


def build_model(kind: str, hyperparameters: Dict[str, Any], type_names: List[str], dtype: str) -> torch.nn.Module:
    known = hyperparameter_defaults(kind)
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise ValueError(f"unknown {kind} hyperparameter(s) {unknown} (known: {', '.join(sorted(known))})")
    if dtype not in DTYPES:
        raise ValueError(f"unknown model dtype '{dtype}' (known: {', '.join(DTYPES)})")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    try:
        return MODEL_KINDS[kind](type_names=list(type_names), **hyperparameters)
    finally:
        torch.set_default_dtype(previous)


def load_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> None:
    """Trained weights into a model of either dtype (float32 training serves float64 models). Buffers are
    constants of the hyperparameters, built with the model: one stored in another dtype keeps the model's own
    value rather than a rounded copy, and one the model does not store (a checkpoint written when ZBL's
    constants were stored, under their names then) is left out."""
    own, stored = dict(model.named_buffers()), set(model.state_dict())

    def unstored_constant(key: str) -> bool:
        return key not in stored and (key in own or key.endswith(RETIRED_CONSTANTS))

    model.load_state_dict({k: own[k] if k in own and v.dtype != own[k].dtype else v for k, v in state_dict.items()
                           if not unstored_constant(k)})


RETIRED_CONSTANTS = ("zbl.z", "zbl.phi_c", "zbl.phi_d")  # stored by ZBL until its constants became per-pair tables


__all__ = [
    "Allegro",
    "NequIP",
    "EdgeForceModel",
    "atom_forces",
    "edge_virials",
    "build_model",
    "load_weights",
    "hyperparameter_defaults",
    "MODEL_KINDS",
    "DTYPES",
]
