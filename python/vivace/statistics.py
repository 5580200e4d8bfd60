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


def pair_baseline(structures: Sequence[Structure], num_types: int, shifts: Sequence[float], r_cut: np.ndarray,
                  polynomial_p: float) -> List[float]:
    """Per type pair b[a, b] = b[b, a] minimising sum_frames (E - sum_i shift[Z_i] - sum_edges b[Z_i, Z_j]
    u(r_ij))^2, u the model's envelope with the (T, T) cutoffs r_cut: the cohesion each neighbor brings on
    average, so that the network starts from the right energy at every coordination (least squares,
    minimum norm). Flattened (center, neighbor), row-major."""
    import torch

    from .nn import PolynomialCutoff

    envelope = PolynomialCutoff(float(r_cut.max()), polynomial_p)
    pairs = [(a, b) for a in range(num_types) for b in range(a, num_types)]
    column = {}
    for k, (a, b) in enumerate(pairs):
        column[a * num_types + b] = column[b * num_types + a] = k
    features, targets = [], []
    for s in structures:
        if s.energy is None or not np.isfinite(s.energy):
            continue
        i, j = s.edge_index
        r = np.linalg.norm(s.positions[j] - s.positions[i] + s.shifts, axis=1)
        ti, tj = s.atom_types[i], s.atom_types[j]
        u = envelope(torch.from_numpy(r), torch.from_numpy(r_cut[ti, tj])).numpy()
        row = np.zeros(len(pairs))
        np.add.at(row, np.array([column[k] for k in ti * num_types + tj], dtype=np.int64), u)
        features.append(row)
        targets.append(s.energy - float(np.sum(np.asarray(shifts)[s.atom_types])))
    if not features:
        return [0.0] * num_types * num_types
    solution, *_ = np.linalg.lstsq(np.stack(features), np.array(targets), rcond=None)
    return [float(solution[column[k]]) for k in range(num_types * num_types)]
