"""Labelled structures turned into neighbor graphs, a cache of those graphs, and batches of them."""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from .formats import Frame, read_data, sources
from .graph import neighbor_graph

CACHE_VERSION = 3
# Atoms closer than this (A) are taken for a broken structure (duplicated atoms, wrong units), not data.
MIN_DISTANCE = 0.5


@dataclass
class Structure:
    positions: np.ndarray  # (N, 3)
    atom_types: np.ndarray  # (N,) model type index
    cell: np.ndarray  # (3, 3), rows are cell vectors
    pbc: np.ndarray  # (3,)
    edge_index: np.ndarray  # (2, E)
    shifts: np.ndarray  # (E, 3) cartesian
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None  # (N, 3)
    stress: Optional[np.ndarray] = None  # (3, 3), ASE sign, energy/length^3
    weight: float = 1.0

    @property
    def num_atoms(self) -> int:
        return len(self.positions)

    @property
    def volume(self) -> float:
        """Cell volume for fully periodic structures, else 0 (no stress)."""
        return float(abs(np.linalg.det(self.cell))) if self.pbc.all() else 0.0


@dataclass
class Batch:
    positions: torch.Tensor  # (N, 3) float64
    atom_types: torch.Tensor  # (N,)
    edge_index: torch.Tensor  # (2, E), node indices of the whole batch
    shifts: torch.Tensor  # (E, 3)
    graph_of_node: torch.Tensor  # (N,)
    graph_of_edge: torch.Tensor  # (E,)
    num_atoms: torch.Tensor  # (B,)
    volume: torch.Tensor  # (B,), 0 where not periodic
    weight: torch.Tensor  # (B,)
    energy: Optional[torch.Tensor]  # (B,)
    forces: Optional[torch.Tensor]  # (N, 3)
    stress: torch.Tensor  # (B, 3, 3), zeros where has_stress is False
    has_stress: torch.Tensor  # (B,) bool

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    def edge_vectors(self) -> torch.Tensor:
        src, dst = self.edge_index
        return self.positions[dst] - self.positions[src] + self.shifts

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Batch(**moved)


def type_names_of(frames: Sequence[Union[Frame, Atoms]]) -> List[str]:
    """Elements present in the frames, ordered by atomic number."""
    symbols = set()
    for f in frames:
        symbols.update(f.get_chemical_symbols() if isinstance(f, Atoms) else f.symbols)
    return sorted(symbols, key=lambda s: atomic_numbers[s])


class Graphs:
    """Neighbor graphs of many structures within r_max, packed into flat arrays (what the cache stores).

    Atoms carry their atomic numbers; `structures` maps them to a model's types and applies its per-edge-type
    cutoffs, so one cache entry serves any type list and cutoffs up to r_max.
    """

    FIELDS = ("num_atoms", "num_edges", "positions", "numbers", "cell", "pbc", "edge_index", "shifts",
              "energy", "forces", "stress", "weight")  # fmt: skip

    def __init__(self, arrays: dict):
        self.arrays = {k: arrays[k] for k in self.FIELDS}

    @classmethod
    def of_frames(cls, frames: Sequence[Union[Frame, Atoms]], r_max: float, min_distance: float = MIN_DISTANCE) -> "Graphs":
        frames = [Frame.from_atoms(f) if isinstance(f, Atoms) else f for f in frames]
        graphs = [neighbor_graph(f.positions, f.cell, f.pbc, r_max) for f in frames]
        for k, (f, (edge_index, shifts)) in enumerate(zip(frames, graphs)):
            _check_distances(f, edge_index, shifts, min_distance, f.where or f"structure {k}")
        nan33 = np.full((3, 3), np.nan)
        return cls(
            {
                "num_atoms": np.array([len(f.symbols) for f in frames], dtype=np.int64),
                "num_edges": np.array([g[0].shape[1] for g in graphs], dtype=np.int64),
                "positions": np.concatenate([np.asarray(f.positions, dtype=np.float64) for f in frames]),
                "numbers": np.concatenate([[atomic_numbers[s] for s in f.symbols] for f in frames]).astype(np.int64),
                "cell": np.stack([np.asarray(f.cell, dtype=np.float64) for f in frames]),
                "pbc": np.stack([np.asarray(f.pbc, dtype=bool) for f in frames]),
                "edge_index": np.concatenate([g[0] for g in graphs], axis=1),
                "shifts": np.concatenate([g[1] for g in graphs]),
                "energy": np.array([np.nan if f.energy is None else f.energy for f in frames]),
                "forces": np.concatenate(
                    [np.full((len(f.symbols), 3), np.nan) if f.forces is None else f.forces for f in frames]
                ),
                "stress": np.stack([nan33 if f.stress is None else f.stress for f in frames]),
                "weight": np.array([f.weight for f in frames], dtype=np.float64),
            }
        )

    def elements(self) -> List[str]:
        """The elements present, by atomic number."""
        return [chemical_symbols[z] for z in np.unique(self.arrays["numbers"])]

    def structures(self, type_names: Sequence[str], r_cut: Optional[np.ndarray] = None) -> List[Structure]:
        """One Structure per graph, atoms typed by `type_names`; with r_cut, the (T, T) per-edge-type
        cutoffs, edges beyond their pair's cutoff are left out (the model gives them zero weight anyway)."""
        a = self.arrays
        lookup = np.full(max(atomic_numbers.values()) + 1, -1, dtype=np.int64)
        for k, name in enumerate(type_names):
            lookup[atomic_numbers[name]] = k
        types = lookup[a["numbers"]]
        atom_start = np.cumsum(a["num_atoms"]) - a["num_atoms"]
        if (types < 0).any():
            n = int(np.searchsorted(atom_start, np.argmax(types < 0), side="right")) - 1
            at = slice(atom_start[n], atom_start[n] + a["num_atoms"][n])
            unknown = sorted({chemical_symbols[z] for z, t in zip(a["numbers"][at], types[at]) if t < 0})
            raise ValueError(f"structure {n} contains element(s) {unknown} unknown to the model ({list(type_names)})")
        edge_index, shifts, num_edges = a["edge_index"], a["shifts"], a["num_edges"]
        if r_cut is not None:
            graph_of_edge = np.repeat(np.arange(len(num_edges)), num_edges)
            src, dst = edge_index + atom_start[graph_of_edge]
            vectors = a["positions"][dst] - a["positions"][src] + shifts
            keep = np.linalg.norm(vectors, axis=1) < r_cut[types[src], types[dst]]
            edge_index, shifts = edge_index[:, keep], shifts[keep]
            num_edges = np.bincount(graph_of_edge[keep], minlength=len(num_edges))
        atom_end, edge_end = np.cumsum(a["num_atoms"]), np.cumsum(num_edges)
        out = []
        for k in range(len(atom_end)):
            at = slice(atom_end[k] - a["num_atoms"][k], atom_end[k])
            ed = slice(edge_end[k] - num_edges[k], edge_end[k])
            forces, stress, energy = a["forces"][at], a["stress"][k], a["energy"][k]
            out.append(
                Structure(
                    positions=a["positions"][at],
                    atom_types=types[at],
                    cell=a["cell"][k],
                    pbc=a["pbc"][k],
                    edge_index=edge_index[:, ed],
                    shifts=shifts[ed],
                    energy=None if np.isnan(energy) else float(energy),
                    forces=None if np.isnan(forces).any() else forces,
                    stress=None if np.isnan(stress).any() else stress,
                    weight=float(a["weight"][k]),
                )
            )
        return out


def _check_distances(frame: Frame, edge_index: np.ndarray, shifts: np.ndarray, min_distance: float, where: str) -> None:
    if edge_index.shape[1] == 0 or not min_distance:
        return
    lengths = np.linalg.norm(frame.positions[edge_index[1]] - frame.positions[edge_index[0]] + shifts, axis=1)
    e = int(np.argmin(lengths))
    if lengths[e] < min_distance:
        i, j = edge_index[:, e]
        raise ValueError(
            f"{where}: atoms {i} and {j} are {lengths[e]:.4g} A apart, closer than the minimum distance "
            f"{min_distance} A (data.min_distance); duplicated atoms or wrong length units?"
        )


def structures_from_frames(
    frames: Sequence[Union[Frame, Atoms]], type_names: Sequence[str], r_max: float, r_cut: Optional[np.ndarray] = None
) -> List[Structure]:
    """Neighbor graphs of the frames, typed by `type_names`, cut by the per-edge-type cutoffs r_cut if given."""
    return Graphs.of_frames(frames, r_max).structures(type_names, r_cut)


def _cache_key(source, r_max: float, units: str, min_distance: float) -> str:
    described = []
    for s in sources(source, units):
        stats = [(os.path.abspath(f), os.path.getsize(f), os.path.getmtime(f)) for f in s.files() if os.path.exists(f)]
        described.append({"spec": {k: str(v) for k, v in s.spec.items()}, "files": stats})
    blob = json.dumps([CACHE_VERSION, described, float(r_max), units, float(min_distance)], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def load_graphs(
    source, r_max: float, cache_dir: Optional[str] = None, units: str = "metal", min_distance: float = MIN_DISTANCE
) -> Graphs:
    """Graphs of a data source within r_max, labels in LAMMPS `units`, from `cache_dir` when the same files
    were processed with the same settings before; otherwise read, built and stored there (one npz per source list)."""
    if not cache_dir:
        return Graphs.of_frames(read_data(source, units), r_max, min_distance)
    path = os.path.join(cache_dir, f"graphs-{_cache_key(source, r_max, units, min_distance)}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as f:
                return Graphs(dict(f))
        except Exception:  # a damaged or outdated cache file is rebuilt, never trusted
            pass
    graphs = Graphs.of_frames(read_data(source, units), r_max, min_distance)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **graphs.arrays)
    os.replace(tmp, path)
    return graphs


def load_structures(
    source,
    type_names: Sequence[str],
    r_max: float,
    r_cut: Optional[np.ndarray] = None,
    cache_dir: Optional[str] = None,
    units: str = "metal",
) -> List[Structure]:
    """`load_graphs` typed by `type_names` and cut by the per-edge-type cutoffs r_cut."""
    return load_graphs(source, r_max, cache_dir, units).structures(type_names, r_cut)


def collate(structures: Sequence[Structure]) -> Batch:
    offsets = np.cumsum([0] + [s.num_atoms for s in structures[:-1]])
    labelled = all(s.energy is not None and s.forces is not None for s in structures)
    cat = np.concatenate
    return Batch(
        positions=torch.from_numpy(cat([s.positions for s in structures])),
        atom_types=torch.from_numpy(cat([s.atom_types for s in structures])),
        edge_index=torch.from_numpy(cat([s.edge_index + o for s, o in zip(structures, offsets)], axis=1)),
        shifts=torch.from_numpy(cat([s.shifts for s in structures])),
        graph_of_node=torch.from_numpy(cat([np.full(s.num_atoms, k) for k, s in enumerate(structures)])),
        graph_of_edge=torch.from_numpy(cat([np.full(s.edge_index.shape[1], k) for k, s in enumerate(structures)])),
        num_atoms=torch.tensor([s.num_atoms for s in structures]),
        volume=torch.tensor([s.volume for s in structures], dtype=torch.float64),
        weight=torch.tensor([s.weight for s in structures], dtype=torch.float64),
        energy=torch.tensor([s.energy for s in structures], dtype=torch.float64) if labelled else None,
        forces=torch.from_numpy(cat([s.forces for s in structures])) if labelled else None,
        stress=torch.from_numpy(np.stack([np.zeros((3, 3)) if s.stress is None else s.stress for s in structures])),
        has_stress=torch.tensor([s.stress is not None and s.volume > 0 for s in structures]),
    )
