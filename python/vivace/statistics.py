"""Dataset statistics that set the model's normalisation: neighbor count, energy shifts, force scale."""

from typing import List, Optional, Sequence, Tuple, Union

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


def shortest_distances(structures: Sequence[Structure], num_types: int, r_cut: np.ndarray) -> List[List[float]]:
    """(T, T) shortest distance between atoms of each pair of types over the structures, for the pair styles
    and the calculator to say when MD goes closer than the model was ever shown; a pair of types never
    within its cutoff r_cut[a, b] gets that cutoff."""
    shortest = np.array(r_cut, dtype=np.float64, copy=True)
    for s in structures:
        i, j = s.edge_index
        if len(i) == 0:
            continue
        r = np.linalg.norm(s.positions[j] - s.positions[i] + s.shifts, axis=1)
        np.minimum.at(shortest, (s.atom_types[i], s.atom_types[j]), r)
    shortest = np.minimum(shortest, shortest.T)
    return shortest.tolist()


def coordinations(s: Structure, r_cut: np.ndarray, polynomial_p: float) -> np.ndarray:
    """rho_i = sum_j u(r_ij) of every atom, u the model's envelope with the (T, T) cutoffs r_cut."""
    import torch

    from .nn import PolynomialCutoff

    i, j = s.edge_index
    r = np.linalg.norm(s.positions[j] - s.positions[i] + s.shifts, axis=1)
    cut = torch.from_numpy(np.ascontiguousarray(r_cut[s.atom_types[i], s.atom_types[j]]))
    u = PolynomialCutoff(float(r_cut.max()), polynomial_p)(torch.from_numpy(r), cut).numpy()
    return np.bincount(i, weights=u, minlength=len(s.atom_types))


def cohesion_baseline(structures: Sequence[Structure], num_types: int, shifts: Sequence[float], r_cut: np.ndarray,
                      polynomial_p: float, form: str = "sqrt") -> Tuple[List[float], List[float]]:
    """(c, rho0) per type for the model's cohesion term c g(x), x = rho_i / rho0 (g: models.common.cohesion_profile
    of `form`): rho0 the mean coordination of the type's atoms over the training set, c the least-squares
    (minimum-norm) fit of E - sum_i shift[Z_i] on sum_i g(x_i) over the frames with energies."""
    import torch

    from .models.common import cohesion_profile

    rho = [coordinations(s, r_cut, polynomial_p) for s in structures]
    types = np.concatenate([s.atom_types for s in structures])
    all_rho = np.concatenate(rho)
    rho0 = [float(all_rho[types == t].mean()) if np.any(types == t) and all_rho[types == t].mean() > 0 else 1.0
            for t in range(num_types)]  # fmt: skip
    features, targets = [], []
    for s, r in zip(structures, rho):
        if s.energy is None or not np.isfinite(s.energy):
            continue
        x = r / np.asarray(rho0)[s.atom_types]
        g = cohesion_profile(torch.from_numpy(np.asarray(x, dtype=np.float64)), form).numpy()
        features.append(np.bincount(s.atom_types, weights=g, minlength=num_types))
        targets.append(s.energy - float(np.sum(np.asarray(shifts)[s.atom_types])))
    if not features:
        return [0.0] * num_types, rho0
    c, *_ = np.linalg.lstsq(np.stack(features), np.array(targets), rcond=None)
    return [float(v) for v in c], rho0
