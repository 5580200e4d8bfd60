"""LAMMPS (pair_style allegro) vs the same artifact through the pybind11 core vs the eager Python model.

float64 throughout; energy, every force component, per-atom energies and the virial pressure tensor must
agree to 1e-8 relative, on orthogonal and triclinic periodic boxes, with 1 and 2 MPI ranks, both formats.
"""

import re

import numpy as np
import pytest

from conftest import TYPE_NAMES, alloy
from vivace.calculators import VivaceCalculator
from vivace.lammps_run import single_point

RTOL = 1e-8


def python_results(atoms, model_path):
    atoms = atoms.copy()
    atoms.calc = VivaceCalculator(model_path)
    return {
        "energy": atoms.get_potential_energy(),
        "energies": atoms.get_potential_energies(),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(voigt=False),
    }


def assert_close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-12)
    deviation = np.abs(a - b).max() / scale
    assert deviation < RTOL, f"{what}: relative deviation {deviation:.2e}"


@pytest.fixture(scope="module")
def eager_results(artifacts):
    return {kind: python_results(alloy(kind), artifacts["checkpoint"]) for kind in ("orthogonal", "triclinic")}


@pytest.mark.parametrize("fmt", ["pt2", "pth"])
@pytest.mark.parametrize("cell_kind", ["orthogonal", "triclinic"])
def test_core_matches_eager(artifacts, eager_results, fmt, cell_kind):
    core = python_results(alloy(cell_kind), artifacts[fmt])
    for key in ("energy", "energies", "forces", "stress"):
        assert_close(core[key], eager_results[cell_kind][key], f"{fmt} core vs eager {key}")


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("fmt", ["pt2", "pth"])
@pytest.mark.parametrize("cell_kind", ["orthogonal", "triclinic"])
def test_lammps_matches_python(artifacts, eager_results, tmp_path, fmt, cell_kind, nprocs):
    atoms = alloy(cell_kind)
    ref = eager_results[cell_kind]
    lmp = single_point(
        atoms,
        f"pair_style allegro\npair_coeff * * {artifacts[fmt]} {' '.join(TYPE_NAMES)}",
        TYPE_NAMES,
        str(tmp_path),
        nprocs=nprocs,
    )
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", lmp.output)
    assert int(grid[1]) * int(grid[2]) * int(grid[3]) == nprocs
    assert_close(lmp.energy, ref["energy"], "energy")
    assert_close(lmp.energies, ref["energies"], "per-atom energies")
    assert_close(lmp.forces, ref["forces"], "forces")
    assert_close(lmp.stress, ref["stress"], "virial stress")
    assert np.abs(ref["forces"]).max() > 1e-3, "test structure should carry sizeable forces"


def test_element_order_in_pair_coeff_matters(artifacts, eager_results, tmp_path):
    """Swapping the LAMMPS type numbering (Cu as type 1) with a matching pair_coeff gives the same physics."""
    atoms = alloy("orthogonal")
    lmp = single_point(
        atoms, f"pair_style allegro\npair_coeff * * {artifacts['pt2']} Cu Al", ["Cu", "Al"], str(tmp_path)
    )
    assert_close(lmp.energy, eager_results["orthogonal"]["energy"], "energy with swapped types")
    assert_close(lmp.forces, eager_results["orthogonal"]["forces"], "forces with swapped types")
