"""Labelled structures (ASE-readable files) turned into graphs, and batches of them."""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers

from .graph import neighbor_graph


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

    @property
    def num_atoms(self) -> int:
        return len(self.positions)


@dataclass
class Batch:
    positions: torch.Tensor  # (N, 3) float64
    atom_types: torch.Tensor  # (N,)
    edge_index: torch.Tensor  # (2, E), node indices of the whole batch
    shifts: torch.Tensor  # (E, 3)
    graph_of_node: torch.Tensor  # (N,)
    graph_of_edge: torch.Tensor  # (E,)
    num_atoms: torch.Tensor  # (B,)
    energy: Optional[torch.Tensor]  # (B,)
    forces: Optional[torch.Tensor]  # (N, 3)

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    def edge_vectors(self) -> torch.Tensor:
        src, dst = self.edge_index
        return self.positions[dst] - self.positions[src] + self.shifts


def read_frames(path: str, index: str = ":") -> List[Atoms]:
    import ase.io

    try:
        frames = ase.io.read(path, index=index)
    except FileNotFoundError:
        raise FileNotFoundError(f"data file '{path}' does not exist") from None
    except Exception as e:  # ASE raises many types for malformed files
        raise ValueError(f"cannot read '{path}' as a structure file: {e}") from e
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"'{path}' holds no structures")
    return frames


def type_names_of(frames: Sequence[Atoms]) -> List[str]:
    """Elements present in the frames, ordered by atomic number."""
    symbols = {s for atoms in frames for s in atoms.get_chemical_symbols()}
    return sorted(symbols, key=lambda s: atomic_numbers[s])


def _labels(atoms: Atoms):
    energy = forces = stress = None
    if atoms.calc is not None:
        results = atoms.calc.results
        energy = results.get("energy", results.get("free_energy"))
        forces = results.get("forces")
        stress = results.get("stress")
    energy = atoms.info.get("energy", energy)
    forces = atoms.arrays.get("forces", forces)
    if stress is not None:
        from ase.stress import voigt_6_to_full_3x3_stress

        stress = np.asarray(stress)
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress.reshape(3, 3)
    return (
        None if energy is None else float(energy),
        None if forces is None else np.asarray(forces, dtype=np.float64),
        stress,
    )


def structures_from_frames(frames: Sequence[Atoms], type_names: Sequence[str], r_max: float) -> List[Structure]:
    index = {name: k for k, name in enumerate(type_names)}
    out = []
    for n, atoms in enumerate(frames):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(index))
        if unknown:
            raise ValueError(f"structure {n} contains element(s) {unknown} unknown to the model ({list(type_names)})")
        edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
        energy, forces, stress = _labels(atoms)
        out.append(
            Structure(
                positions=atoms.positions.astype(np.float64),
                atom_types=np.array([index[s] for s in atoms.get_chemical_symbols()], dtype=np.int64),
                cell=atoms.cell.array.astype(np.float64),
                pbc=np.array(atoms.pbc, dtype=bool),
                edge_index=edge_index,
                shifts=shifts,
                energy=energy,
                forces=forces,
                stress=stress,
            )
        )
    return out


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
        energy=torch.tensor([s.energy for s in structures], dtype=torch.float64) if labelled else None,
        forces=torch.from_numpy(cat([s.forces for s in structures])) if labelled else None,
    )
