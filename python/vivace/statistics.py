"""Dataset statistics that set the model's normalisation: neighbor count, energy shifts, force scale."""

from typing import List, Optional, Sequence, Union

import numpy as np

from .data import Structure


def average_num_neighbors(
    structures: Sequence[Structure], num_types: int, per_type: bool = False, r_cut: Optional[np.ndarray] = None
) -> Union[float, List[float]]:
    """Mean number of neighbors per atom (edges within each pair's cutoff when r_cut, the (T, T) matrix
    of per-edge-type cutoffs, is given); one number, or one per center type."""
    edges, atoms = np.zeros(num_types), np.zeros(num_types)
    for s in structures:
        center = s.atom_types[s.edge_index[0]]
        keep = np.ones(len(center), dtype=bool)
        if r_cut is not None:
            vectors = s.positions[s.edge_index[1]] - s.positions[s.edge_index[0]] + s.shifts
            keep = np.linalg.norm(vectors, axis=1) < r_cut[center, s.atom_types[s.edge_index[1]]]
        edges += np.bincount(center[keep], minlength=num_types)
        atoms += np.bincount(s.atom_types, minlength=num_types)
    if not per_type:
        return max(float(edges.sum() / max(atoms.sum(), 1)), 1.0)
    return [max(float(e / a), 1.0) if a > 0 else 1.0 for e, a in zip(edges, atoms)]


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
