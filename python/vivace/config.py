"""Training configuration: defaults, merging a user's YAML over them, and clear errors for mistakes."""

import copy
from typing import Any, Dict

import yaml

DEFAULTS: Dict[str, Any] = {
    "run_dir": "runs/vivace",
    "seed": 0,
    "units": "metal",
    "data": {
        "train": None,
        "validation": None,
        "val_fraction": 0.1,
    },
    "model": {
        "kind": "allegro",
        "dtype": "float64",
        "type_names": None,
        "neighbor_normalization": "global",  # or "per_type": 1/sqrt(avg neighbors of the center's type)
        # plus the hyperparameters of the chosen kind: see model_defaults()
    },
    "training": {
        "max_epochs": 100,
        "max_minutes": None,
        "batch_size": 4,
        "learning_rate": 0.005,
        "energy_weight": 1.0,
        "force_weight": 1.0,
        "lr_patience": 10,
        "lr_factor": 0.5,
        "threads": None,
    },
}

# Model keys that describe the run rather than the network's hyperparameters.
MODEL_META_KEYS = ("kind", "dtype", "type_names", "neighbor_normalization")
# Hyperparameters the trainer derives from the data (or the top-level config) rather than the user.
DERIVED_KEYS = ("avg_num_neighbors", "energy_shift", "energy_scale", "units")
DEFAULT_R_MAX = 5.0


def model_defaults(kind: str) -> Dict[str, Any]:
    """The model section's keys and defaults for one model kind."""
    from .models import hyperparameter_defaults

    try:
        hyper = hyperparameter_defaults(kind)
    except ValueError as e:
        raise ConfigError(f"config key 'model.kind': {e}") from None
    hyper = {k: v for k, v in hyper.items() if k not in DERIVED_KEYS}
    hyper["r_max"] = DEFAULT_R_MAX
    return {**DEFAULTS["model"], **hyper}


class ConfigError(ValueError):
    pass


def _merge(defaults: Dict[str, Any], user: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        if key not in defaults:
            raise ConfigError(f"unknown config key '{where}{key}' (known: {', '.join(defaults)})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' must be a mapping")
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(source) -> Dict[str, Any]:
    """`source` is a path to a YAML file or a dict; returns the full config with defaults filled in."""
    if isinstance(source, dict):
        user = source
    else:
        try:
            with open(source) as f:
                user = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file '{source}' does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{source}' is not valid YAML: {e}") from None
    if not isinstance(user, dict):
        raise ConfigError("the config must be a mapping of keys to values")
    model = user.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("config key 'model' must be a mapping")
    defaults = {**DEFAULTS, "model": model_defaults(model.get("kind", DEFAULTS["model"]["kind"]))}
    config = _merge(defaults, user, "")
    if not config["data"]["train"]:
        raise ConfigError("config key 'data.train' (path to the training structures) is required")
    if config["model"]["dtype"] not in ("float32", "float64"):
        raise ConfigError("config key 'model.dtype' must be float32 or float64")
    if config["model"]["neighbor_normalization"] not in ("global", "per_type"):
        raise ConfigError("config key 'model.neighbor_normalization' must be global or per_type")
    return config


def dump_config(config: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
