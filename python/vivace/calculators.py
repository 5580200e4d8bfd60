"""ASE calculator for a vivace checkpoint (eager model) or an exported artifact (the C++ core)."""

import os
import warnings
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from .data import neighbor_graph
from .units import unit_style


class _EagerBackend:
    def __init__(self, model, spec):
        from .models import EdgeForceModel

        self.model = EdgeForceModel(model).eval()
        self.type_names = list(spec["type_names"])
        self.r_max = float(spec["hyperparameters"]["r_max"])
        self.units = spec.get("units", "metal")
        self.shortest = spec["hyperparameters"].get("shortest_distances") or None

    def evaluate(self, vectors, edge_index, types, n_local):
        energy, forces = self.model(
            torch.from_numpy(vectors), torch.from_numpy(edge_index), torch.from_numpy(types), torch.tensor(n_local)
        )
        return energy.detach().numpy(), forces.detach().numpy()


class _ArtifactBackend:
    def __init__(self, path: str):
        from . import _core

        self.model = _core.Model(path)
        self.type_names = list(self.model.type_names)
        self.r_max = float(self.model.r_max)
        self.units = self.model.metadata.get("units", "metal")
        table = [float(d) for d in self.model.metadata.get("shortest_distances", "").split()]
        t = len(self.type_names)
        self.shortest = np.reshape(table, (t, t)) if table else None

    def evaluate(self, vectors, edge_index, types, n_local):
        return self.model.evaluate(vectors, edge_index, types, n_local)


def load_backend(path_or_model):
    """A checkpoint (*.ckpt) runs eagerly in Python; a .pt2/.pth artifact runs through the C++ core."""
    if isinstance(path_or_model, str):
        if path_or_model.endswith((".pt2", ".pth", ".pt")):
            return _ArtifactBackend(path_or_model)
        from .checkpoint import load_checkpoint, model_from_checkpoint

        return _EagerBackend(*model_from_checkpoint(load_checkpoint(path_or_model)))
    model, spec = path_or_model
    return _EagerBackend(model, spec)


def model_types(atoms, type_names: Sequence[str]) -> np.ndarray:
    """The model's type index of each atom; an element the model lacks is refused by name."""
    index = {name: k for k, name in enumerate(type_names)}
    symbols = atoms.get_chemical_symbols()
    unknown = sorted(set(symbols) - set(index))
    if unknown:
        raise ValueError(f"element(s) {unknown} are not in the model ({list(type_names)})")
    return np.array([index[s] for s in symbols], dtype=np.int64)


def edge_results(atoms, backend, types: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(atomic energies, edge forces, edge vectors, edge index) of an ASE Atoms object (types: model_types', if
    the caller has them)."""
    types = model_types(atoms, backend.type_names) if types is None else types
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, backend.r_max)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    energies, edge_forces = backend.evaluate(vectors, edge_index, types, len(atoms))
    return energies, edge_forces, vectors, edge_index


def atom_forces_of_edges(edge_forces: np.ndarray, edge_index: np.ndarray, num_atoms: int) -> np.ndarray:
    """(atoms, 3): edge force g = dE/dr_ij acts as +g on i and -g on j."""
    forces = np.zeros((num_atoms, 3))
    np.add.at(forces, edge_index[0], edge_forces)
    np.add.at(forces, edge_index[1], -edge_forces)
    return forces


def atom_virials(edge_forces: np.ndarray, vectors: np.ndarray, edge_index: np.ndarray, num_atoms: int) -> np.ndarray:
    """Per-atom virials (N, 3, 3): each edge's W = -r_ij (x) g_ij, half to i and half to j (as the pair style)."""
    w = -0.5 * vectors[:, :, None] * edge_forces[:, None, :]
    virials = np.zeros((num_atoms, 3, 3))
    np.add.at(virials, edge_index[0], w)
    np.add.at(virials, edge_index[1], w)
    return virials


class ExtrapolationWarning(UserWarning):
    """Atoms closer than the model's training data ever put atoms of their elements."""


class ShortPairWatch:
    """Warns when a pair of atoms comes under 0.9 of the training data's shortest distance for their elements,
    and again below each further tenth, as pair_style allegro and nequip do in LAMMPS."""

    def __init__(self, shortest: Optional[Sequence[Sequence[float]]], type_names: Sequence[str]):
        self.shortest = None if shortest is None else np.asarray(shortest, dtype=np.float64)
        self.type_names = list(type_names)
        self.next_warning = 0.9

    def __call__(self, vectors: np.ndarray, edge_index: np.ndarray, types: np.ndarray) -> None:
        if self.shortest is None or len(vectors) == 0:
            return
        ti, tj = types[edge_index[0]], types[edge_index[1]]
        lengths = np.linalg.norm(vectors, axis=1)
        ratio = lengths / self.shortest[ti, tj]
        e = int(np.argmin(ratio))
        if ratio[e] >= self.next_warning:
            return
        a, b = self.type_names[ti[e]], self.type_names[tj[e]]
        warnings.warn(
            f"atoms {edge_index[0, e]} and {edge_index[1, e]} ({a}-{b}) are {lengths[e]:.3f} A apart, {ratio[e]:.2f} "
            f"of the shortest {a}-{b} distance in the model's training data ({self.shortest[ti[e], tj[e]]:.3f} A): "
            "the model is extrapolating",
            ExtrapolationWarning,
            stacklevel=3,
        )
        self.next_warning = np.floor(10.0 * ratio[e]) / 10.0


class VivaceCalculator(Calculator):
    """Energy, forces, stress, per-atom energies and per-atom stresses from a checkpoint or an artifact, in
    ASE's units (eV, eV/A, eV/A^3) whatever LAMMPS units style the model was trained in.

    Per-atom stresses (periodic cells) are -W_i / V in Voigt order, W_i the atom's share of the edge virials,
    so they sum to the stress; LAMMPS's compute stress/atom (zero velocities) is -W_i in pressure x volume.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "stresses"]

    def __init__(self, model: str, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, str) and not os.path.exists(model):
            raise FileNotFoundError(f"model file '{model}' does not exist")
        self.backend = load_backend(model)
        self.ev_per_energy_unit = unit_style(self.backend.units).energy_in_ev
        self.watch = ShortPairWatch(self.backend.shortest, self.backend.type_names)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        types = model_types(atoms, self.backend.type_names)
        energies, g, vectors, edge_index = edge_results(atoms, self.backend, types)
        self.watch(vectors, edge_index, types)
        energies, g = energies * self.ev_per_energy_unit, g * self.ev_per_energy_unit
        forces = atom_forces_of_edges(g, edge_index, len(atoms))
        self.results = {
            "energy": float(energies.sum()),
            "free_energy": float(energies.sum()),
            "energies": energies,
            "forces": forces,
        }
        if atoms.cell.rank == 3:
            volume = atoms.get_volume()
            stress = g.T @ vectors / volume  # sigma_ab = (1/V) sum_e g_a r_b
            self.results["stress"] = stress.ravel()[[0, 4, 8, 5, 2, 1]]
            stresses = -atom_virials(g, vectors, edge_index, len(atoms)) / volume
            self.results["stresses"] = stresses.reshape(-1, 9)[:, [0, 4, 8, 5, 2, 1]]
