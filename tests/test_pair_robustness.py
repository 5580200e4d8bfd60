"""The pair styles on awkward inputs, each checked against the ASE calculator on the same model:
ranks with no atoms, with one edge or none; atom IDs with gaps; a LAMMPS type mapped to NULL under
pair_style hybrid/overlay; per-edge-type cutoffs; several partitions; the threads keyword."""

import os
import re

import numpy as np
import pytest
from ase import Atoms

from conftest import SHIFTS, TYPE_NAMES, alloy, make_checkpoint, HYPER, NEQUIP_HYPER
from test_pair_styles import assert_lammps_matches, pair_lines, python_results
from vivace.lammps_run import run_lammps, single_point, write_data

KINDS = ["allegro", "nequip"]


def boxed(symbols, positions, length):
    return Atoms(symbols, positions=positions, cell=[length] * 3, pbc=True)


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_without_atoms(artifact, tmp_path, kind):
    """A cluster in one corner of a long box split in three along x: two ranks own nothing."""
    cluster = alloy("orthogonal")[:10]
    atoms = boxed(cluster.symbols, cluster.positions - cluster.positions.min(axis=0) + 1.0, 36.0)
    assert atoms.positions[:, 0].max() < 11.0
    path = artifact(kind)
    lmp = single_point(atoms, pair_lines(kind, path), TYPE_NAMES, str(tmp_path), nprocs=3, processors="3 1 1")
    assert_lammps_matches(lmp, python_results(atoms, path))


@pytest.mark.parametrize("kind", KINDS)
def test_ranks_with_one_edge_or_none(artifact, tmp_path, kind):
    path = artifact(kind)
    dimer = boxed(["Al", "Cu"], [[9.2, 10, 10], [11.3, 10.4, 9.9]], 20.0)  # one atom and one edge per rank
    lmp = single_point(dimer, pair_lines(kind, path), TYPE_NAMES, str(tmp_path / "dimer"), nprocs=2,
                       processors="2 1 1")
    ref = python_results(dimer, path)
    assert np.abs(ref["forces"]).max() > 1e-4
    assert_lammps_matches(lmp, ref)

    apart = boxed(["Al", "Cu"], [[5, 10, 10], [15, 10, 10]], 20.0)  # no edges anywhere
    lmp = single_point(apart, pair_lines(kind, path), TYPE_NAMES, str(tmp_path / "apart"), nprocs=2,
                       processors="2 1 1")
    np.testing.assert_allclose(lmp.energies, SHIFTS, rtol=1e-12)
    assert np.abs(lmp.forces).max() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_atom_ids_with_gaps(artifact, tmp_path, kind):
    atoms = alloy("triclinic", seed=3)
    ids = 100 + 7 * np.arange(len(atoms))
    path = artifact(kind)
    lmp = single_point(atoms, pair_lines(kind, path), TYPE_NAMES, str(tmp_path), nprocs=2, ids=ids)
    assert_lammps_matches(lmp, python_results(atoms, path))


@pytest.mark.parametrize("kind", KINDS)
def test_null_type_under_hybrid_overlay(artifact, tmp_path, kind):
    """Helium as LAMMPS type 3 mapped to NULL (pair_style zero covers it): it feels and exerts nothing."""
    atoms = alloy("orthogonal", seed=5)
    helium = [3, 17, 30]
    atoms.symbols[helium] = "He"
    path = artifact(kind)
    lines = f"pair_style hybrid/overlay {kind} zero 4.0\npair_coeff * * {kind} {path} Al Cu NULL\npair_coeff * * zero"
    lmp = single_point(atoms, lines, TYPE_NAMES + ["He"], str(tmp_path), nprocs=2)
    keep = [k for k in range(len(atoms)) if k not in helium]
    ref = python_results(atoms[keep], path)
    assert np.all(lmp.energies[helium] == 0.0) and np.all(lmp.forces[helium] == 0.0)
    for key, value in (("energy", lmp.energy), ("energies", lmp.energies[keep]), ("forces", lmp.forces[keep])):
        scale = np.abs(ref[key]).max()
        assert np.abs(value - ref[key]).max() < 1e-8 * scale, key


@pytest.mark.parametrize("kind", KINDS)
def test_per_edge_type_cutoffs(tmp_path, kind):
    """Al centers see neighbors to 3.0 A only, Cu-Cu to 3.4 A, Cu-Al keeps r_max: an asymmetric matrix."""
    from vivace.export import export

    hyper = dict(HYPER if kind == "allegro" else NEQUIP_HYPER, edge_type_cutoffs={"Al": 3.0, "Cu-Cu": 3.4})
    checkpoint = make_checkpoint(str(tmp_path / "cut.ckpt"), kind=kind, hyper=hyper)
    path = export(checkpoint, str(tmp_path / "cut.pth"))
    atoms = alloy("triclinic", seed=7)
    lmp = single_point(atoms, pair_lines(kind, path), TYPE_NAMES, str(tmp_path / "run"), nprocs=2)
    assert_lammps_matches(lmp, python_results(atoms, checkpoint))


def test_partitions(artifact, tmp_path):
    """-partition 2x1: two independent single-rank LAMMPS instances in one mpirun, each with its own model."""
    atoms = alloy("orthogonal")
    write_data(atoms, str(tmp_path / "data.lmp"), TYPE_NAMES)
    script = f"""units metal
atom_style atomic
read_data {tmp_path / 'data.lmp'}
{pair_lines('nequip', artifact('nequip'))}
variable p world 0 1
displace_atoms all move $(0.05*v_p) 0 0 units box
run 0
print "RESULT $(pe:%.17g)"
"""
    run_lammps(script, str(tmp_path), nprocs=2, args=["-partition", "2x1"])
    ref = python_results(atoms, artifact("nequip"))["energy"]
    energies = []
    for p in (0, 1):
        with open(tmp_path / f"log.lammps.{p}") as f:
            log = f.read()
        energies.append(float(re.search(r"^RESULT (\S+)", log, re.M)[1]))
        assert "1 by 1 by 1 MPI processor grid" in log
    # a rigid translation leaves the energy unchanged: both partitions equal the Python model
    assert abs(energies[0] - ref) < 1e-9 * abs(ref) and abs(energies[1] - ref) < 1e-9 * abs(ref)


def test_threads_keyword_and_environment(artifact, tmp_path):
    atoms = alloy("orthogonal")
    path = artifact("allegro")
    out = single_point(atoms, f"pair_style allegro threads 2\npair_coeff * * {path} Al Cu", TYPE_NAMES,
                       str(tmp_path / "kw")).output
    assert "pair_style allegro: 2 torch thread(s) per MPI rank (pair_style threads)" in out
    assert re.search(r"pair_style allegro timing: \S+ ms per call per rank; model \S+%, plugin overhead", out)
    write_data(atoms, str(tmp_path / "data.lmp"), TYPE_NAMES)
    out = run_lammps(f"units metal\nread_data {tmp_path / 'data.lmp'}\n{pair_lines('allegro', path)}\nrun 0\n",
                     str(tmp_path / "env"), env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert "pair_style allegro: 2 torch thread(s) per MPI rank (OMP_NUM_THREADS)" in out
