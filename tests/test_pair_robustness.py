"""The pair styles on awkward inputs, each checked against the ASE calculator on the same model:
ranks with no atoms, with one edge or none; atom IDs with gaps; a LAMMPS type mapped to NULL under
pair_style hybrid/overlay; per-edge-type cutoffs; several partitions; the threads keyword."""

import os
import re

import numpy as np
import pytest
from ase import Atoms

from conftest import SHIFTS, TYPE_NAMES, alloy, make_checkpoint, HYPER, NEQUIP_HYPER
from test_pair_styles import assert_lammps_matches, pair_lines, python_results, reference  # noqa: F401
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



def awkward_graph(atoms, r_max, seed=0):
    """The edges of `atoms` in random order; 7 extra nodes that are neighbors of some edges but centers of
    none (as LAMMPS ghosts); the last 5 real atoms non-local (centers whose energies exert no force)."""
    from vivace.data import neighbor_graph

    rng = np.random.default_rng(seed)
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()] + [1, 0, 1, 1, 0, 0, 1])
    edge_index[1, rng.choice(edge_index.shape[1], 40, replace=False)] = len(atoms) + rng.integers(0, 7, 40)
    order = rng.permutation(edge_index.shape[1])
    return vectors[order], np.ascontiguousarray(edge_index[:, order]), types, len(atoms) - 5


# the core slices the graph into groups alike for both formats; .pt2 adds a 40 s compile: on demand (-m slow)
@pytest.mark.parametrize("fmt", ["ckpt", "pth", pytest.param("pt2", marks=pytest.mark.slow)])
def test_center_groups_equal_the_whole_graph(tmp_path, fmt):
    """Allegro run as groups of whole centers (eager: the model's edges_per_group; artifacts: the core's
    edges_per_group, which LAMMPS uses, one group at a time on 1 thread and two side by side on 2) gives the
    whole graph's energies and edge forces, with per-edge-type cutoffs and ZBL in the model."""
    import torch

    from vivace.calculators import load_backend
    from vivace.export import export

    hyper = dict(HYPER, zbl=True, edge_type_cutoffs={"Al-Cu": 3.5})
    path = make_checkpoint(str(tmp_path / "m.ckpt"), hyper=hyper, seed=3)
    if fmt != "ckpt":
        path = export(path, str(tmp_path / f"m.{fmt}"))
    backend = load_backend(path)
    vectors, edge_index, types, n_local = awkward_graph(alloy("triclinic"), HYPER["r_max"])

    def run(edges_per_group):
        if fmt == "ckpt":
            backend.model.model.edges_per_group = edges_per_group
        else:
            backend.model.edges_per_group = edges_per_group
        return backend.evaluate(vectors, edge_index, types, n_local)

    whole_energy, whole_forces = run(0)
    assert np.abs(whole_forces).max() > 1e-3
    ghosts = np.arange(len(types)) >= n_local + 5
    threads = torch.get_num_threads()
    try:
        for count in (1, 2) if fmt != "ckpt" else (threads,):
            torch.set_num_threads(count)
            for edges_per_group in (1, 37, 400):
                energy, forces = run(edges_per_group)
                assert np.abs(energy - whole_energy).max() < 1e-12 * np.abs(whole_energy).max()
                assert np.abs(forces - whole_forces).max() < 1e-12 * np.abs(whole_forces).max()
                assert np.array_equal(energy[ghosts], np.array(SHIFTS)[types[ghosts]])
    finally:
        torch.set_num_threads(threads)


def test_chunk_keyword(artifact, reference, tmp_path):
    """pair_style allegro chunk N on 3 ranks: the same results as the Python model for small groups and for
    the whole graph at once."""
    for chunk in (0, 50):
        lmp = single_point(alloy("triclinic"), pair_lines("allegro", artifact("allegro"), chunk=chunk), TYPE_NAMES,
                           str(tmp_path / str(chunk)), nprocs=3)
        assert_lammps_matches(lmp, reference("allegro", "triclinic"))


def approaching_dimer(tmp_path, kind, nprocs, mode="", plugin=None, command=None):
    """An Al-Cu dimer 3.0 A apart (Al on rank 0, Cu on rank 1 with two ranks), the Cu atom driven towards the Al
    by 0.15 A a step for 10 steps, under a model whose training data's shortest distance is 3.05 A. `plugin`
    and `command`: another LAMMPS (its plugin to load, its launcher and options)."""
    from vivace.export import export

    checkpoint = make_checkpoint(str(tmp_path / "model.ckpt"), kind=kind, shortest_distances=np.full((2, 2), 3.05))
    path = export(checkpoint, str(tmp_path / "model.pth"))
    write_data(boxed(["Al", "Cu"], [[8.5, 10, 10], [11.5, 10, 10]], 20.0), str(tmp_path / "data.lmp"), TYPE_NAMES)
    script = f"""units metal
atom_style atomic
processors {nprocs} 1 1
read_data {tmp_path / 'data.lmp'}
{f"plugin load {plugin}" if plugin else ""}
{pair_lines(kind, path, options=mode)}
neigh_modify every 1 delay 0 check yes
group cu type 2
fix drive cu move linear -150.0 0.0 0.0
thermo 1
run 10
"""
    return run_lammps(script, str(tmp_path / "lmp"), nprocs=nprocs, command=command)


@pytest.mark.parametrize("kind,nprocs", [("allegro", 1), ("allegro", 2), ("nequip", 2)])
def test_pairs_closer_than_the_training_data(tmp_path, kind, nprocs):
    """The artifact carries the training data's shortest distance per pair of types. A pair under 0.9 of it is
    warned about, naming the atoms, the step and the ratio, and again under each further tenth: here at steps
    2, 4, 6, 8 and 10 (distance 3.0 - 0.15 k over 3.05 A). The end of the run sums up; the warnings come once
    whichever rank holds the pair."""
    assert_warned_approach(approaching_dimer(tmp_path, kind, nprocs), kind)


def assert_warned_approach(log, kind):
    warned = re.findall(rf"WARNING: pair_style {kind}: atoms [12] and [12] \(\w\w-\w\w\) are ([\d.]+) A apart at step "
                        r"(\d+), ([\d.]+) of the shortest \w\w-\w\w distance in the model's training data \(3.050 A\)", log)
    distances = [3.0 - 0.15 * k for k in (2, 4, 6, 8, 10)]
    assert [int(s) for _, s, _ in warned] == [2, 4, 6, 8, 10], log
    np.testing.assert_allclose([float(r) for r, _, _ in warned], distances, atol=1e-3)
    np.testing.assert_allclose([float(q) for _, _, q in warned], np.array(distances) / 3.05, atol=0.005)
    assert f"pair_style {kind}: 11 of 11 force calls had a pair closer than the training data's shortest" in log
    assert "are 1.500 A apart at step 10, 0.49 of the shortest" in log


def test_short_pairs_error_and_off(tmp_path):
    """short_pairs error stops the run at the first step under 0.9 of the data's shortest distance, from
    whichever rank holds the pair; short_pairs off neither warns nor sums up."""
    from vivace.lammps_run import LammpsError

    with pytest.raises(LammpsError) as info:
        approaching_dimer(tmp_path / "error", "allegro", 2, " short_pairs error")
    assert "are 2.700 A apart at step 2, 0.89 of the shortest Al-Cu distance" in str(info.value)
    assert "stopped by short_pairs error" in str(info.value)
    log = approaching_dimer(tmp_path / "off", "allegro", 1, " short_pairs off")
    assert "training data" not in log and "Loop time" in log


@pytest.mark.parametrize("kind,fmt,nprocs", [("allegro", "pt2", 2), ("nequip", "pth", 1)])
def test_core_repulsion_matches_python(tmp_path, kind, fmt, nprocs):
    """A crystal compressed until its pairs sit in the core's switch (0.7-0.9 of the training data's shortest
    distances): LAMMPS gives the Python model's energies, forces and virials."""
    from vivace.export import export

    atoms = alloy("orthogonal")
    shortest = np.full((2, 2), 2.7)
    d = atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)]
    assert 0.7 * 2.7 < d.min() < 0.9 * 2.7
    checkpoint = make_checkpoint(str(tmp_path / "model.ckpt"), kind=kind, shortest_distances=shortest)
    path = export(checkpoint, str(tmp_path / f"model.{fmt}"))
    lmp = single_point(atoms, pair_lines(kind, path), TYPE_NAMES, str(tmp_path / "lmp"), nprocs=nprocs)
    with pytest.warns(UserWarning, match="extrapolating"):
        ref = python_results(atoms, path)
    assert_lammps_matches(lmp, ref)
    plain = export(make_checkpoint(str(tmp_path / "plain.ckpt"), kind=kind), str(tmp_path / "plain.pth"))
    assert ref["energy"] > python_results(atoms, plain)["energy"] + 1.0  # the core is on
