"""Checkpoints: everything needed to rebuild, resume or export a model, written atomically."""

import os
import tempfile
from typing import Any, Dict, Tuple

import torch

from .models import build_model, load_weights

FORMAT = "vivace-checkpoint"
# 2: the cohesion baseline's form is a hyperparameter (version 1 meant "quadratic"); 3: Allegro's two-body
# embedding and layer envelope are hyperparameters whose defaults changed (before: "concat" and true), and the
# cohesion form's default is "none" (before: "sqrt")
VERSION = 3


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """torch.save into a temporary file next to `path`, then rename: a crash never leaves half a file."""
    payload = dict(payload, format=FORMAT, format_version=VERSION)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".ckpt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"'{path}' is not a readable vivace checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a vivace checkpoint")
    spec = payload.get("model", {})
    hyper = spec.get("hyperparameters", {})
    version = payload.get("format_version", 1)
    if version < 3 and hyper.get("cohesion"):
        hyper.setdefault("cohesion_form", "quadratic" if version < 2 else "sqrt")
    if version < 3 and spec.get("kind") == "allegro":
        hyper.setdefault("two_body_embedding", "concat")
        hyper.setdefault("layer_envelope", True)
    return payload


def model_from_checkpoint(payload: Dict[str, Any]) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The model (weights loaded, eval mode) and its description (kind, hyperparameters, type_names, dtype, units)."""
    spec = payload["model"]
    model = build_model(spec["kind"], spec["hyperparameters"], spec["type_names"], spec["dtype"])
    load_weights(model, payload["state_dict"])
    model.eval()
    return model, spec
