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
from ase.data import atomic_numbers

from .formats import Frame, read_data, sources
from .graph import neighbor_graph

CACHE_VERSION = 1


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


def read_frames(source) -> List[Frame]:
    """Labelled frames of a data source: a path, a mapping with format options, or a list (see formats.py)."""
    return read_data(source)


def type_names_of(frames: Sequence[Union[Frame, Atoms]]) -> List[str]:
    """Elements present in the frames, ordered by atomic number."""
    symbols = set()
    for f in frames:
        symbols.update(f.get_chemical_symbols() if isinstance(f, Atoms) else f.symbols)
    return sorted(symbols, key=lambda s: atomic_numbers[s])


def structures_from_frames(
    frames: Sequence[Union[Frame, Atoms]], type_names: Sequence[str], r_max: float, r_cut: Optional[np.ndarray] = None
) -> List[Structure]:
    """Neighbor graphs of the frames; with r_cut, the (T, T) per-edge-type cutoffs, edges beyond their pair's
    cutoff are left out (the model gives them zero weight anyway)."""
    index = {name: k for k, name in enumerate(type_names)}
    out = []
    for n, frame in enumerate(frames):
        frame = Frame.from_atoms(frame) if isinstance(frame, Atoms) else frame
        unknown = sorted(set(frame.symbols) - set(index))
        if unknown:
            raise ValueError(f"structure {n} contains element(s) {unknown} unknown to the model ({list(type_names)})")
        types = np.array([index[s] for s in frame.symbols], dtype=np.int64)
        edge_index, shifts = neighbor_graph(frame.positions, frame.cell, frame.pbc, r_max)
        if r_cut is not None:
            vectors = frame.positions[edge_index[1]] - frame.positions[edge_index[0]] + shifts
            keep = np.linalg.norm(vectors, axis=1) < r_cut[types[edge_index[0]], types[edge_index[1]]]
            edge_index, shifts = edge_index[:, keep], shifts[keep]
        out.append(
            Structure(
                positions=np.asarray(frame.positions, dtype=np.float64),
                atom_types=types,
                cell=np.asarray(frame.cell, dtype=np.float64),
                pbc=np.asarray(frame.pbc, dtype=bool),
                edge_index=edge_index,
                shifts=shifts,
                energy=frame.energy,
                forces=frame.forces,
                stress=frame.stress,
                weight=frame.weight,
            )
        )
    return out


def _pack(structures: Sequence[Structure]) -> dict:
    nan33 = np.full((3, 3), np.nan)
    return {
        "num_atoms": np.array([s.num_atoms for s in structures], dtype=np.int64),
        "num_edges": np.array([s.edge_index.shape[1] for s in structures], dtype=np.int64),
        "positions": np.concatenate([s.positions for s in structures]),
        "atom_types": np.concatenate([s.atom_types for s in structures]),
        "cell": np.stack([s.cell for s in structures]),
        "pbc": np.stack([s.pbc for s in structures]),
        "edge_index": np.concatenate([s.edge_index for s in structures], axis=1),
        "shifts": np.concatenate([s.shifts for s in structures]),
        "energy": np.array([np.nan if s.energy is None else s.energy for s in structures]),
        "forces": np.concatenate([np.full((s.num_atoms, 3), np.nan) if s.forces is None else s.forces for s in structures]),
        "stress": np.stack([nan33 if s.stress is None else s.stress for s in structures]),
        "weight": np.array([s.weight for s in structures]),
    }


def _unpack(arrays: dict) -> List[Structure]:
    atom_end, edge_end = np.cumsum(arrays["num_atoms"]), np.cumsum(arrays["num_edges"])
    out = []
    for k in range(len(atom_end)):
        a = slice(atom_end[k] - arrays["num_atoms"][k], atom_end[k])
        e = slice(edge_end[k] - arrays["num_edges"][k], edge_end[k])
        forces, stress, energy = arrays["forces"][a], arrays["stress"][k], arrays["energy"][k]
        out.append(
            Structure(
                positions=arrays["positions"][a],
                atom_types=arrays["atom_types"][a],
                cell=arrays["cell"][k],
                pbc=arrays["pbc"][k],
                edge_index=arrays["edge_index"][:, e],
                shifts=arrays["shifts"][e],
                energy=None if np.isnan(energy) else float(energy),
                forces=None if np.isnan(forces).any() else forces,
                stress=None if np.isnan(stress).any() else stress,
                weight=float(arrays["weight"][k]),
            )
        )
    return out


def _cache_key(source, type_names: Sequence[str], r_max: float, r_cut: Optional[np.ndarray]) -> str:
    described = []
    for s in sources(source):
        files = s.files()
        stats = [(os.path.abspath(f), os.path.getsize(f), os.path.getmtime(f)) for f in files if os.path.exists(f)]
        described.append({"spec": {k: str(v) for k, v in s.spec.items()}, "files": stats})
    blob = json.dumps(
        [CACHE_VERSION, described, list(type_names), float(r_max), None if r_cut is None else r_cut.tolist()],
        sort_keys=True,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


def load_structures(
    source,
    type_names: Sequence[str],
    r_max: float,
    r_cut: Optional[np.ndarray] = None,
    cache_dir: Optional[str] = None,
) -> List[Structure]:
    """Graphs of a data source, from `cache_dir` when the same files were processed with the same cutoffs and
    types before; otherwise read, built and stored there (one npz per source list)."""
    if not cache_dir:
        return structures_from_frames(read_frames(source), type_names, r_max, r_cut)
    path = os.path.join(cache_dir, f"graphs-{_cache_key(source, type_names, r_max, r_cut)}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path) as f:
                return _unpack(dict(f))
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    structures = structures_from_frames(read_frames(source), type_names, r_max, r_cut)
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **_pack(structures))
    os.replace(tmp, path)
    return structures


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
