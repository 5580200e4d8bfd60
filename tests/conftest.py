"""Shared fixtures: small generated structures, random-weight test models and their artifacts."""

import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from vivace.checkpoint import save_checkpoint
from vivace.models import build_model

TYPE_NAMES = ["Al", "Cu"]
R_MAX = 4.0
SHIFTS = [-3.1, -2.7]
COMMON = dict(r_max=R_MAX, avg_num_neighbors=20.0, energy_shift=SHIFTS, energy_scale=[0.8, 1.3])
HYPER = dict(  # a small Allegro
    COMMON,
    l_max=2,
    num_layers=2,
    num_scalar_features=16,
    num_tensor_features=4,
    two_body_hidden=[16],
    latent_hidden=[16],
    readout_hidden=[8],
)
NEQUIP_HYPER = dict(COMMON, l_max=2, num_layers=2, num_features=4, radial_hidden=[16])


def alloy(cell_kind: str, seed: int = 0) -> Atoms:
    """A rattled Al/Cu fcc supercell in LAMMPS-compatible form (a along x, b in the xy plane)."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 2, 3))
    if cell_kind == "triclinic":
        cell = atoms.cell.array.copy()
        cell[1, 0] += 1.1
        cell[2, 0] -= 0.7
        cell[2, 1] += 0.9
        atoms.set_cell(cell, scale_atoms=True)
    atoms.symbols[rng.choice(len(atoms), len(atoms) // 3, replace=False)] = "Al"
    atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
    return atoms


def emt_frames(n: int, seed: int, stress: bool = False):
    """Rattled Al/Cu cells labelled by ASE's EMT (energy, forces and, when asked, stress), alternating
    orthogonal and triclinic cells."""
    from ase.calculators.emt import EMT

    frames = []
    for k in range(n):
        atoms = alloy("orthogonal" if k % 2 else "triclinic", seed=seed + k)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        if stress:
            atoms.get_stress()
        frames.append(atoms)
    return frames


def make_checkpoint(path: str, dtype: str = "float64", seed: int = 0, kind: str = "allegro", hyper=None,
                    shortest_distances=None) -> str:
    """A random-weight checkpoint of the small test model of `kind`; shortest_distances, the (T, T) table a
    trained model carries, if given."""
    hyper = dict(hyper or (HYPER if kind == "allegro" else NEQUIP_HYPER))
    if shortest_distances is not None:
        hyper["shortest_distances"] = [[float(d) for d in row] for row in shortest_distances]
    torch.manual_seed(seed)
    model = build_model(kind, hyper, TYPE_NAMES, dtype)
    spec = {"kind": kind, "hyperparameters": hyper, "type_names": TYPE_NAMES, "dtype": dtype, "units": "metal"}
    save_checkpoint(path, {"model": spec, "state_dict": model.state_dict()})
    return path


@pytest.fixture(scope="session")
def artifact(tmp_path_factory):
    """artifact(kind, dtype, fmt, exchange=True) -> path of an export of the random-weight test model, made once
    per session; fmt "ckpt" gives the checkpoint itself. exchange=False: a NequIP artifact without the layer
    programs for exchanging features between ranks (a .pt2 compiles in 55 s instead of 200 s on 2 cores)."""
    from vivace.export import export

    folder = tmp_path_factory.mktemp("kinds")
    made = {}

    def get(kind: str, dtype: str = "float64", fmt: str = "pth", exchange: bool = True) -> str:
        key = (kind, dtype, fmt, exchange or fmt == "ckpt")
        if key not in made:
            checkpoint = made.get((kind, dtype, "ckpt", True)) or make_checkpoint(
                str(folder / f"{kind}-{dtype}.ckpt"), dtype, kind=kind)
            made[(kind, dtype, "ckpt", True)] = checkpoint
            if fmt != "ckpt":
                name = f"{kind}-{dtype}{'' if exchange else '-no-exchange'}.{fmt}"
                made[key] = export(checkpoint, str(folder / name), exchange=exchange)
        return made[key]

    return get


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
