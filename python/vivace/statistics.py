"""Dataset statistics that set the model's normalisation: neighbor count, energy shifts, force scale."""

from typing import List, Sequence

import numpy as np

from .data import Structure


def average_num_neighbors(structures: Sequence[Structure]) -> float:
    edges = sum(s.edge_index.shape[1] for s in structures)
    atoms = sum(s.num_atoms for s in structures)
    return max(edges / atoms, 1.0)


def energy_shifts(structures: Sequence[Structure], num_types: int) -> List[float]:
    """Per-species shifts mu minimising sum_frames (E - sum_i mu_{Z_i})^2 (least squares on composition)."""
    counts = np.stack([np.bincount(s.atom_types, minlength=num_types) for s in structures]).astype(np.float64)
    energies = np.array([s.energy for s in structures], dtype=np.float64)
    shifts, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return shifts.tolist()


def force_rms(structures: Sequence[Structure]) -> float:
    forces = np.concatenate([s.forces for s in structures])
    rms = float(np.sqrt(np.mean(forces**2)))
    return rms if rms > 0 else 1.0
