"""Fit a model to energies and forces: loss, optimiser, validation, checkpoints."""

import csv
import math
import os
import time
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from . import statistics
from .checkpoint import save_checkpoint
from .config import MODEL_META_KEYS, dump_config, load_config
from .data import Batch, Structure, collate, read_frames, structures_from_frames, type_names_of
from .models import EdgeForceModel, atom_forces, build_model
from .models.common import cutoff_matrix


def predict(model: torch.nn.Module, batch: Batch, create_graph: bool = False):
    """Total energy per graph (B,) and atom forces (N, 3), through the artifact contract."""
    edge_force_model = EdgeForceModel(model, create_graph=create_graph)
    num_nodes = batch.positions.shape[0]
    atomic_energy, edge_forces = edge_force_model(
        batch.edge_vectors(), batch.edge_index, batch.atom_types, torch.tensor(num_nodes)
    )
    energy = torch.zeros(batch.num_graphs, dtype=torch.float64).index_add_(0, batch.graph_of_node, atomic_energy)
    return energy, atom_forces(edge_forces, batch.edge_index, num_nodes)


def loss_terms(model, batch: Batch, create_graph: bool):
    energy, forces = predict(model, batch, create_graph=create_graph)
    energy_error = (energy - batch.energy) / batch.num_atoms
    force_error = forces - batch.forces
    return energy_error, force_error


def evaluate(model, structures: Sequence[Structure], batch_size: int = 8) -> Dict[str, float]:
    """Energy (per atom) and force errors in meV/atom and meV/length."""
    e_err, f_err = [], []
    for start in range(0, len(structures), batch_size):
        batch = collate(structures[start : start + batch_size])
        de, df = loss_terms(model, batch, create_graph=False)
        e_err.append(de.detach())
        f_err.append(df.detach().reshape(-1))
    e, f = torch.cat(e_err), torch.cat(f_err)
    return {
        "energy_mae": 1000 * e.abs().mean().item(),
        "energy_rmse": 1000 * e.pow(2).mean().sqrt().item(),
        "force_mae": 1000 * f.abs().mean().item(),
        "force_rmse": 1000 * f.pow(2).mean().sqrt().item(),
    }


def _split(frames: List, fraction: float, rng: np.random.Generator):
    order = rng.permutation(len(frames))
    n_val = max(1, int(round(fraction * len(frames)))) if len(frames) > 1 else 0
    return [frames[k] for k in order[n_val:]], [frames[k] for k in order[:n_val]]


def train(config_source) -> str:
    """Trains as the config says; returns the run directory (holding best.ckpt, last.ckpt, metrics.csv)."""
    config = load_config(config_source)
    tcfg, mcfg = config["training"], config["model"]
    torch.manual_seed(config["seed"])
    rng = np.random.default_rng(config["seed"])
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))

    frames = read_frames(config["data"]["train"])
    if config["data"]["validation"]:
        train_frames, val_frames = frames, read_frames(config["data"]["validation"])
    else:
        train_frames, val_frames = _split(frames, config["data"]["val_fraction"], rng)
    type_names = mcfg["type_names"] or type_names_of(train_frames + val_frames)
    mcfg["type_names"] = list(type_names)
    r_max = float(mcfg["r_max"])
    train_set = structures_from_frames(train_frames, type_names, r_max)
    val_set = structures_from_frames(val_frames, type_names, r_max)
    for name, subset in (("training", train_set), ("validation", val_set)):
        if any(s.energy is None or s.forces is None for s in subset):
            raise ValueError(f"every {name} structure needs an energy and forces")

    hyper = {k: v for k, v in mcfg.items() if k not in MODEL_META_KEYS}
    hyper["units"] = config["units"]
    r_cut = cutoff_matrix(type_names, r_max, hyper.get("edge_type_cutoffs"))
    hyper["avg_num_neighbors"] = statistics.average_num_neighbors(
        train_set, len(type_names), mcfg["neighbor_normalization"] == "per_type", None if r_cut is None else r_cut.numpy()
    )
    hyper["energy_shift"] = statistics.energy_shifts(train_set, len(type_names))
    hyper["energy_scale"] = [statistics.force_rms(train_set)] * len(type_names)
    model = build_model(mcfg["kind"], hyper, type_names, mcfg["dtype"])
    spec = {
        "kind": mcfg["kind"],
        "hyperparameters": hyper,
        "type_names": list(type_names),
        "dtype": mcfg["dtype"],
        "units": config["units"],
    }

    run_dir = config["run_dir"]
    os.makedirs(run_dir, exist_ok=True)
    dump_config(config, os.path.join(run_dir, "config.yaml"))
    print(
        f"vivace train: {len(train_set)} training / {len(val_set)} validation structures, types {type_names}, "
        f"avg neighbors {np.round(hyper['avg_num_neighbors'], 2)}, "
        f"{sum(p.numel() for p in model.parameters())} parameters",
        flush=True,
    )

    optimizer = torch.optim.Adam(model.parameters(), lr=tcfg["learning_rate"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=tcfg["lr_factor"], patience=tcfg["lr_patience"]
    )
    deadline = time.monotonic() + 60 * tcfg["max_minutes"] if tcfg["max_minutes"] else math.inf
    best = math.inf
    metrics_path = os.path.join(run_dir, "metrics.csv")
    with open(metrics_path, "w", newline="") as f:
        csv.writer(f).writerow(["epoch", "time_s", "lr", "train_loss", "val_energy_mae", "val_force_mae", "val_force_rmse"])

    start = time.monotonic()
    for epoch in range(1, tcfg["max_epochs"] + 1):
        model.train()
        order = rng.permutation(len(train_set))
        losses = []
        for b in range(0, len(order), tcfg["batch_size"]):
            batch = collate([train_set[k] for k in order[b : b + tcfg["batch_size"]]])
            de, df = loss_terms(model, batch, create_graph=True)
            loss = tcfg["energy_weight"] * de.pow(2).mean() + tcfg["force_weight"] * df.pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if time.monotonic() > deadline:
                break

        model.eval()
        metrics = evaluate(model, val_set) if val_set else evaluate(model, train_set)
        scheduler.step(metrics["force_rmse"])
        lr = optimizer.param_groups[0]["lr"]
        elapsed = time.monotonic() - start
        with open(metrics_path, "a", newline="") as f:
            csv.writer(f).writerow(
                [epoch, f"{elapsed:.1f}", lr, np.mean(losses), metrics["energy_mae"], metrics["force_mae"], metrics["force_rmse"]]
            )
        print(
            f"epoch {epoch:4d}  {elapsed:7.1f}s  lr {lr:.2e}  loss {np.mean(losses):.4e}  "
            f"val E MAE {metrics['energy_mae']:.2f} meV/atom  F MAE {metrics['force_mae']:.1f} "
            f"RMSE {metrics['force_rmse']:.1f} meV/A",
            flush=True,
        )
        payload: Dict[str, Any] = {
            "model": spec,
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "metrics": metrics,
            "config": config,
        }
        save_checkpoint(os.path.join(run_dir, "last.ckpt"), payload)
        if metrics["force_rmse"] < best:
            best = metrics["force_rmse"]
            save_checkpoint(os.path.join(run_dir, "best.ckpt"), payload)
        if time.monotonic() > deadline:
            print(f"vivace train: time budget of {tcfg['max_minutes']} min reached", flush=True)
            break
    return run_dir
