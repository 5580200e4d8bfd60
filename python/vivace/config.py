"""Training configuration: the schema with its defaults, merging a user's YAML over it, clear errors."""

import copy
import os
from typing import Any, Dict, Tuple

import yaml

from .units import STYLES

DEFAULTS: Dict[str, Any] = {
    "run_dir": "runs/vivace",
    "seed": 0,
    "units": "metal",  # LAMMPS units style of the model: metal (eV, A) or real (kcal/mol, A); labels are converted into it
    "device": "auto",  # auto (cuda when available) | cpu | cuda
    "data": {
        "train": None,  # path, {path, format, keys, units...} or a list of them (see vivace.data.formats)
        "validation": None,  # the same, or null to split val_fraction off the training data
        "test": None,  # evaluated with the best model at the end
        "val_fraction": 0.1,
        "cache_dir": "~/.cache/vivace",  # processed graphs; null to rebuild every run
        "min_distance": 0.5,  # A: a structure with two atoms closer than this is refused, with its file and index
    },
    "model": {
        "kind": "allegro",
        "dtype": "float64",  # of the model that is evaluated, checkpointed for evaluation and exported
        "type_names": None,  # default: the elements of the data, by atomic number
        "neighbor_normalization": "global",  # or "per_type": 1/sqrt(avg neighbors of the center's type)
        "isolated_atom_energies": None,  # {element: energy}: the shifts (atoms pulled apart approach these
        # energies), with a fitted cohesion baseline if cohesion_form is sqrt or quadratic; default: least-squares
        # shifts
        # plus the hyperparameters of the chosen kind: see model_defaults()
    },
    "training": {
        "max_epochs": 1000,
        "max_minutes": None,  # wall-time budget
        "batch_size": 4,
        "loss": "mse",  # mse | huber
        "huber_delta": 0.01,
        "energy_weight": 1.0,  # on the energy error per atom
        "force_weight": 1.0,
        "stress_weight": 1.0,  # on stress in energy/length^3; structures without stress don't count
        "optimizer": "adam",  # adam | adamw
        "learning_rate": 0.005,
        "weight_decay": 0.0,
        "scheduler": "plateau",  # plateau | cosine | none
        "lr_patience": 10,
        "lr_factor": 0.5,
        "min_learning_rate": 1.0e-6,
        "warmup_epochs": 0.0,  # linear warm-up, counted in optimizer steps
        # final stage: from this fraction of the budget (of max_epochs or max_minutes, whichever is further
        # along) on, the energy weighs final_energy_weight (the stress final_stress_weight, null: unchanged) and
        # the learning rate drops to final_learning_rate; best.ckpt is then chosen among its epochs. null for none
        "final_stage_start": 0.6,
        "final_energy_weight": 100.0,
        "final_stress_weight": 10.0,
        "final_learning_rate": 0.001,
        "ema_decay": 0.99,  # per step, warmed up (warmed_ema); null for none. Validation, best.ckpt, export use it
        "gradient_clip": 10.0,  # max gradient norm (of the dimensionless loss); null for none
        "max_skipped_steps": 10,  # consecutive steps with a non-finite loss or gradient before training stops
        "early_stopping_patience": 50,  # epochs without improvement; null for none
        "monitor": "force_rmse",  # validation metric for best model, plateau and early stopping
        "threads": None,
        "dtype": "float32",  # of the training arithmetic; the weights then serve a model of model.dtype
        "compile": False,  # torch.compile the model for validation passes
        "init_from": None,  # fine-tuning: start from this checkpoint's model and weights
        "tensorboard": True,
        "plots": True,
    },
}

# Keys whose default is None, and the types they accept.
NULLABLE_TYPES: Dict[str, Tuple[type, ...]] = {
    "data.train": (str, dict, list),
    "data.validation": (str, dict, list),
    "data.test": (str, dict, list),
    "data.cache_dir": (str,),
    "model.type_names": (list,),
    "model.isolated_atom_energies": (dict,),
    "training.max_minutes": (int, float),
    "training.final_stage_start": (int, float),
    "training.final_stress_weight": (int, float),
    "training.ema_decay": (int, float),
    "training.gradient_clip": (int, float),
    "training.early_stopping_patience": (int,),
    "training.threads": (int,),
    "training.init_from": (str,),
}
CHOICES = {
    "units": tuple(STYLES),
    "device": ("auto", "cpu", "cuda"),
    "model.dtype": ("float32", "float64"),
    "training.dtype": ("float32", "float64"),
    "model.neighbor_normalization": ("global", "per_type"),
    "model.cohesion_form": ("sqrt", "quadratic", "none"),
    "model.latent_update": ("concat", "residual"),
    "model.readout_latents": ("all", "last"),
    "model.two_body_embedding": ("concat", "product"),
    "training.loss": ("mse", "huber"),
    "training.optimizer": ("adam", "adamw"),
    "training.scheduler": ("plateau", "cosine", "none"),
    "training.monitor": (
        "energy_mae", "energy_rmse", "force_mae", "force_rmse", "stress_mae", "stress_rmse", "total_energy_mae", "loss"
    ),
}

# Model keys that describe the run rather than the network's hyperparameters.
MODEL_META_KEYS = ("kind", "dtype", "type_names", "neighbor_normalization", "isolated_atom_energies")
# Hyperparameters the trainer derives from the data (or the top-level config) rather than the user.
DERIVED_KEYS = ("avg_num_neighbors", "energy_shift", "energy_scale", "cohesion", "mean_coordination", "units",
                "shortest_distances")
DEFAULT_R_MAX = 5.0


class ConfigError(ValueError):
    pass


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


def _type_ok(value: Any, default: Any, key: str) -> bool:
    if value is None:
        return default is None or key in NULLABLE_TYPES
    if default is None:
        return key not in NULLABLE_TYPES or isinstance(value, NULLABLE_TYPES[key])
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _merge(defaults: Dict[str, Any], user: Dict[str, Any], where: str) -> Dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in user.items():
        name = f"{where}{key}"
        if key not in defaults:
            raise ConfigError(f"unknown config key '{name}' (known: {', '.join(defaults)})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{name}' must be a mapping")
            out[key] = _merge(defaults[key], value, f"{name}.")
            continue
        if not _type_ok(value, defaults[key], name):
            wanted = NULLABLE_TYPES.get(name) or (type(defaults[key]),)
            raise ConfigError(
                f"config key '{name}' must be {' or '.join(t.__name__ for t in wanted)}, not {type(value).__name__} ({value!r})"
            )
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(f"config key '{name}' must be one of {', '.join(CHOICES[name])}, not '{value}'")
        out[key] = value
    return out


def _source_paths(source):
    items = source if isinstance(source, list) else [source]
    for item in items:
        path = item.get("path") if isinstance(item, dict) else item
        if path is not None:
            yield str(path)


def load_config(source) -> Dict[str, Any]:
    """`source` is a path to a YAML file or a dict; returns the full config with defaults filled in."""
    if isinstance(source, dict):
        user = copy.deepcopy(source)
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
    user.pop("derived", None)  # written back by a run; recomputed, never read
    model = user.get("model") or {}
    if not isinstance(model, dict):
        raise ConfigError("config key 'model' must be a mapping")
    defaults = {**DEFAULTS, "model": model_defaults(model.get("kind", DEFAULTS["model"]["kind"]))}
    config = _merge(defaults, user, "")
    if not config["data"]["train"]:
        raise ConfigError("config key 'data.train' (path to the training structures) is required")
    for key in ("train", "validation", "test"):
        for path in _source_paths(config["data"][key]):
            if not os.path.exists(path):
                raise ConfigError(f"config key 'data.{key}': data file '{path}' does not exist")
    init_from = config["training"]["init_from"]
    if init_from and not os.path.isfile(init_from):
        raise ConfigError(f"config key 'training.init_from': checkpoint '{init_from}' does not exist")
    if not 0.0 <= config["data"]["val_fraction"] < 1.0:
        raise ConfigError("config key 'data.val_fraction' must be in [0, 1)")
    if config["training"]["batch_size"] < 1:
        raise ConfigError("config key 'training.batch_size' must be at least 1")
    start = config["training"]["final_stage_start"]
    if start is not None and not 0.0 <= start <= 1.0:
        raise ConfigError("config key 'training.final_stage_start' must be in [0, 1] (a fraction of the budget) or null")
    if config["training"]["final_learning_rate"] <= 0:
        raise ConfigError("config key 'training.final_learning_rate' must be positive")
    return config


def dump_config(config: Dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
