"""`vivace evaluate`: errors of a checkpoint or an exported artifact on any labelled dataset, with parity plots."""

import json
import os
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

from . import reporting
from .calculators import load_backend
from .data import load_structures
from .data.dataset import Structure
from .losses import ErrorSums, predictions
from .units import unit_style


class BackendEdgeForces:
    """A checkpoint (eager) or an artifact (the C++ core) behind EdgeForceModel's signature, so batches of
    structures go through the same `predict` as in training."""

    def __init__(self, path: str):
        self.backend = load_backend(path)
        self.type_names, self.r_max, self.units = self.backend.type_names, self.backend.r_max, self.backend.units

    def __call__(self, vectors, edge_index, atom_types, n_local):
        energy, forces = self.backend.evaluate(vectors.numpy(), edge_index.numpy(), atom_types.numpy(), int(n_local))
        return torch.as_tensor(np.asarray(energy)), torch.as_tensor(np.asarray(forces))


def evaluate_checkpoint(
    model: Union[str, BackendEdgeForces],
    structures: Sequence[Structure],
    batch_size: int = 8,
    plot: Optional[str] = None,
    title: Optional[str] = None,
) -> Dict[str, float]:
    """Metrics (meV units) of a checkpoint or artifact (a path, or one already loaded) on labelled structures
    (labels in the model's units);
    a parity plot when `plot` is a path."""
    model = BackendEdgeForces(model) if isinstance(model, str) else model
    results = list(predictions(model, structures, batch_size))
    sums = ErrorSums(units=model.units)
    for pred, batch in results:
        sums.add(pred, batch)
    if plot:
        ev = unit_style(model.units).energy_in_ev

        def joined(values, unit):
            return tuple(ev * torch.cat([v[k].reshape(-1) for v in values]).numpy() for k in (0, 1)) + (unit,)

        pairs = {
            "energy": joined([(b.energy / b.num_atoms, p.energy / b.num_atoms) for p, b in results], "eV/atom"),
            "force": joined([(b.forces, p.forces) for p, b in results], "eV/A"),
            "stress": joined([(b.stress[b.has_stress], p.stress[b.has_stress]) for p, b in results], "eV/A^3"),
        }
        reporting.parity_plot(pairs, plot, title)
    return sums.metrics()


def evaluate(model_path: str, data, out_dir: Optional[str] = None, batch_size: int = 8) -> Dict[str, float]:
    """The `vivace evaluate` command: prints a metrics table; with out_dir, writes metrics.json and parity.png."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model file '{model_path}' does not exist")
    model = BackendEdgeForces(model_path)
    structures = load_structures(data, model.type_names, model.r_max, units=model.units)
    if any(s.energy is None or s.forces is None for s in structures):
        raise ValueError("every structure to evaluate needs an energy and forces")
    plot = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        plot = os.path.join(out_dir, "parity.png")
    metrics = evaluate_checkpoint(model, structures, batch_size, plot, title=os.path.basename(model_path))
    print(reporting.metrics_table(metrics, f"vivace evaluate: {model_path} on {len(structures)} structures"))
    if out_dir:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"model": model_path, "structures": len(structures), **metrics}, f, indent=1)
    return metrics
