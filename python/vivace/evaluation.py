"""`vivace evaluate`: errors of a checkpoint or an exported artifact on any labelled dataset, with parity plots."""

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import reporting
from .data import collate, load_structures
from .data.dataset import Structure
from .losses import ErrorSums, Prediction, predict
from .models import EdgeForceModel, atom_forces


def _checkpoint_predictions(path: str, structures: Sequence[Structure], batch_size: int) -> List[Tuple[Prediction, object]]:
    from .checkpoint import load_checkpoint, model_from_checkpoint

    model, _ = model_from_checkpoint(load_checkpoint(path))
    edge_force_model = EdgeForceModel(model)
    out = []
    for start in range(0, len(structures), batch_size):
        batch = collate(structures[start : start + batch_size])
        pred = predict(edge_force_model, batch)
        out.append((Prediction(pred.energy.detach(), pred.forces.detach(), pred.stress.detach()), batch))
    return out


def _artifact_predictions(path: str, structures: Sequence[Structure]) -> List[Tuple[Prediction, object]]:
    from . import _core

    model = _core.Model(path)
    out = []
    for s in structures:
        vectors = s.positions[s.edge_index[1]] - s.positions[s.edge_index[0]] + s.shifts
        energies, g = model.evaluate(vectors, s.edge_index, s.atom_types, s.num_atoms)
        g_t, vec_t = torch.from_numpy(np.asarray(g)), torch.from_numpy(vectors)
        forces = atom_forces(g_t, torch.from_numpy(s.edge_index), s.num_atoms)
        stress = (vec_t.T @ g_t / s.volume if s.volume > 0 else torch.zeros(3, 3, dtype=torch.float64)).unsqueeze(0)
        energy = torch.tensor([float(np.sum(energies))], dtype=torch.float64)
        out.append((Prediction(energy, forces, stress), collate([s])))
    return out


def model_info(path: str) -> Tuple[List[str], float, Optional[dict]]:
    """(type names, r_max, per-edge-type cutoffs) of a checkpoint or artifact."""
    if path.endswith((".pt2", ".pth")):
        from . import _core

        model = _core.Model(path)
        return list(model.type_names), float(model.r_max), None
    from .checkpoint import load_checkpoint

    spec = load_checkpoint(path)["model"]
    return list(spec["type_names"]), float(spec["hyperparameters"]["r_max"]), spec["hyperparameters"].get("edge_type_cutoffs")


def evaluate_checkpoint(
    path: str,
    structures: Sequence[Structure],
    batch_size: int = 8,
    plot: Optional[str] = None,
    title: Optional[str] = None,
) -> Dict[str, float]:
    """Metrics (meV units) of a checkpoint or artifact on labelled structures; a parity plot when `plot` is a path."""
    if path.endswith((".pt2", ".pth")):
        results = _artifact_predictions(path, structures)
    else:
        results = _checkpoint_predictions(path, structures, batch_size)
    sums = ErrorSums()
    for pred, batch in results:
        sums.add(pred, batch)
    if plot:
        energy = [(b.energy / b.num_atoms, p.energy / b.num_atoms) for p, b in results]
        forces = [(b.forces, p.forces) for p, b in results]
        stress = [(b.stress[b.has_stress], p.stress[b.has_stress]) for p, b in results]
        pairs = {
            "energy": (torch.cat([e[0] for e in energy]), torch.cat([e[1] for e in energy]), "eV/atom"),
            "force": (torch.cat([f[0] for f in forces]), torch.cat([f[1] for f in forces]), "eV/A"),
            "stress": (torch.cat([s[0] for s in stress]).reshape(-1), torch.cat([s[1] for s in stress]).reshape(-1), "eV/A^3"),
        }
        reporting.parity_plot({k: (a.numpy(), b.numpy(), u) for k, (a, b, u) in pairs.items()}, plot, title)
    return sums.metrics()


def evaluate(model_path: str, data, out_dir: Optional[str] = None, batch_size: int = 8) -> Dict[str, float]:
    """The `vivace evaluate` command: prints a metrics table; with out_dir, writes metrics.json and parity.png."""
    if not os.path.exists(model_path):
        raise FileNotFoundError(f"model file '{model_path}' does not exist")
    type_names, r_max, cutoffs = model_info(model_path)
    from .models.common import cutoff_matrix

    r_cut = cutoff_matrix(type_names, r_max, cutoffs)
    structures = load_structures(data, type_names, r_max, None if r_cut is None else r_cut.numpy())
    if any(s.energy is None or s.forces is None for s in structures):
        raise ValueError("every structure to evaluate needs an energy and forces")
    plot = None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        plot = os.path.join(out_dir, "parity.png")
    metrics = evaluate_checkpoint(model_path, structures, batch_size, plot, title=os.path.basename(model_path))
    print(reporting.metrics_table(metrics, f"vivace evaluate: {model_path} on {len(structures)} structures"))
    if out_dir:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump({"model": model_path, "structures": len(structures), **metrics}, f, indent=1)
    return metrics
