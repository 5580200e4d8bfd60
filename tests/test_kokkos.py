"""pair_style allegro/kk in a Kokkos LAMMPS built by scripts/build_lammps.sh, against the Python model and
against pair_style allegro: energies, per-atom energies, forces, virial and per-atom virials to 1e-10 (float64)
on 1, 2 and 4 ranks, both artifact formats, orthogonal and triclinic boxes, newton on and off, ranks that own
no atoms, NULL types under hybrid/overlay; NVE over 1000 steps; pairs closer than the training data;
pair_style nequip in the site LAMMPS, with and without Kokkos, exchanging features across 2 ranks.

Runs when VIVACE_KOKKOS_LAMMPS names the PREFIX given to scripts/build_lammps.sh (its vivace-lammps.env says
where lmp, mpiexec and the plugins are); skipped with that reason otherwise.
"""

import os
import subprocess

import numpy as np
import pytest
from ase import Atoms

from conftest import TYPE_NAMES, alloy, make_checkpoint
from test_pair_styles import LAMMPS_ORDER, python_results, reference  # noqa: F401
from vivace.lammps_run import read_dump_frames, read_thermo, run_lammps, single_point, write_data

pytestmark = pytest.mark.kokkos
RTOL = 1e-10


def _site_lammps():
    prefix = os.environ.get("VIVACE_KOKKOS_LAMMPS")
    if not prefix:
        pytest.skip("no Kokkos LAMMPS: set VIVACE_KOKKOS_LAMMPS to a PREFIX built by scripts/build_lammps.sh --kokkos")
    path = os.path.join(prefix, "vivace-lammps.env")
    if not os.path.isfile(path):
        pytest.fail(f"VIVACE_KOKKOS_LAMMPS={prefix} has no vivace-lammps.env: build it with scripts/build_lammps.sh")
    with open(path) as f:
        env = dict(line.strip().split("=", 1) for line in f if "=" in line)
    if not env.get("VIVACE_PLUGIN_KK"):
        pytest.fail(f"{prefix} was built without --kokkos")
    return env


@pytest.fixture(scope="module")
def site():
    return _site_lammps()


def launcher(site, nprocs):
    """The site LAMMPS under its own mpiexec (OpenMPI's needs to be told it may run as root, oversubscribed)."""
    prefix = [site["MPIEXEC"], "-np", str(nprocs)]
    version = subprocess.run([site["MPIEXEC"], "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        prefix += ["--oversubscribe", "--allow-run-as-root", "--bind-to", "none"]
    return prefix + [site["LMP"]]


def command(site, nprocs, threads=1, package=""):
    """The site LAMMPS with Kokkos on (OpenMP threads, or the GPU in a Kokkos-CUDA build) and the kk suffix."""
    device = ["g", "1"] if site.get("KOKKOS") == "cuda" else ["t", str(threads)]
    kokkos = ["-k", "on", *device, "-sf", "kk"] + (["-pk", "kokkos", *package.split()] if package else [])
    return launcher(site, nprocs) + kokkos


def cpu_lines(site, path, elements=TYPE_NAMES):
    return f"plugin load {site['VIVACE_PLUGIN']}\npair_style allegro\npair_coeff * * {path} {' '.join(elements)}"


def kk_lines(site, path, elements=TYPE_NAMES):
    return f"plugin load {site['VIVACE_PLUGIN_KK']}\npair_style allegro\npair_coeff * * {path} {' '.join(elements)}"


def assert_close(a, b, what, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    deviation = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    assert deviation < rtol, f"{what}: relative deviation {deviation:.2e}"


def assert_matches(lmp, ref, rtol=RTOL):
    assert_close(lmp.energy, ref["energy"], "energy", rtol)
    assert_close(lmp.energies, ref["energies"], "per-atom energies", rtol)
    assert_close(lmp.forces, ref["forces"], "forces", rtol)
    assert_close(lmp.stress, ref["stress"], "virial stress", rtol)
    assert_close(lmp.atom_virials, ref["virials"][:, LAMMPS_ORDER[0], LAMMPS_ORDER[1]], "stress/atom", rtol)


@pytest.mark.parametrize("nprocs", [1, 2, 4])
@pytest.mark.parametrize("fmt", ["pt2", "pth"])
@pytest.mark.parametrize("cell_kind", ["orthogonal", "triclinic"])
def test_kokkos_matches_python(site, artifact, reference, tmp_path, nprocs, fmt, cell_kind):
    atoms = alloy(cell_kind)
    lmp = single_point(atoms, kk_lines(site, artifact("allegro", "float64", fmt)), TYPE_NAMES, str(tmp_path),
                       command=command(site, nprocs), centroid=False)
    assert "allegro/kk" in lmp.output
    assert_matches(lmp, reference("allegro", cell_kind))


@pytest.mark.parametrize("package", ["newton on neigh half", "newton off neigh full", "newton off neigh half"])
def test_kokkos_package_options(site, artifact, reference, tmp_path, package):
    """Forces on ghosts reach their owners through LAMMPS (newton on) or the pair style itself (newton off)."""
    atoms = alloy("triclinic")
    lmp = single_point(atoms, kk_lines(site, artifact("allegro")), TYPE_NAMES, str(tmp_path),
                       command=command(site, 2, threads=2, package=package), centroid=False)
    assert_matches(lmp, reference("allegro", "triclinic"))


def test_kokkos_equals_pair_style_allegro(site, artifact, tmp_path):
    """The same site LAMMPS, with and without Kokkos, on 2 ranks: one core, two integrations."""
    atoms = alloy("triclinic", seed=3)
    path = artifact("allegro", "float64", "pt2")
    kk = single_point(atoms, kk_lines(site, path), TYPE_NAMES, str(tmp_path / "kk"), command=command(site, 2),
                      centroid=False)
    cpu = single_point(atoms, cpu_lines(site, path), TYPE_NAMES, str(tmp_path / "cpu"), command=launcher(site, 2))
    for key in ("energy", "energies", "forces", "stress", "atom_virials"):
        assert_close(getattr(kk, key), getattr(cpu, key), key, 1e-12)


@pytest.mark.parametrize("kokkos", [False, True])
def test_site_nequip_exchanges_features(site, artifact, reference, tmp_path, kokkos):
    """pair_style nequip (no Kokkos variant) in the site LAMMPS on 2 ranks, exchanging node features between
    layers through the site's MPI; with Kokkos on, LAMMPS runs it on the host beside the Kokkos atoms."""
    path = artifact("nequip", "float64", "pth")
    lines = f"plugin load {site['VIVACE_PLUGIN']}\npair_style nequip\npair_coeff * * {path} {' '.join(TYPE_NAMES)}"
    lmp = single_point(alloy("triclinic"), lines, TYPE_NAMES, str(tmp_path),
                       command=command(site, 2) if kokkos else launcher(site, 2), centroid=not kokkos)
    assert "exchanging node features" in lmp.output, lmp.output
    assert_matches(lmp, reference("nequip", "triclinic"))


def test_kokkos_ranks_without_atoms(site, artifact, tmp_path):
    """A cluster in one corner of a long box split in four along x: three ranks own nothing."""
    cluster = alloy("orthogonal")[:10]
    atoms = Atoms(cluster.symbols, positions=cluster.positions - cluster.positions.min(axis=0) + 1.0,
                  cell=[48.0] * 3, pbc=True)  # fmt: skip
    path = artifact("allegro")
    lmp = single_point(atoms, kk_lines(site, path), TYPE_NAMES, str(tmp_path), processors="4 1 1",
                       command=command(site, 4), centroid=False)
    assert_matches(lmp, python_results(atoms, path))


@pytest.mark.parametrize("package", ["newton on", "newton off"])
def test_kokkos_null_type_under_hybrid_overlay(site, artifact, tmp_path, package):
    atoms = alloy("orthogonal", seed=5)
    helium = [3, 17, 30]
    atoms.symbols[helium] = "He"
    path = artifact("allegro")
    lines = (f"plugin load {site['VIVACE_PLUGIN_KK']}\npair_style hybrid/overlay allegro zero 4.0\n"
             f"pair_coeff * * allegro {path} Al Cu NULL\npair_coeff * * zero")  # fmt: skip
    lmp = single_point(atoms, lines, TYPE_NAMES + ["He"], str(tmp_path), command=command(site, 2, package=package),
                       centroid=False)
    keep = [k for k in range(len(atoms)) if k not in helium]
    ref = python_results(atoms[keep], path)
    assert np.all(lmp.energies[helium] == 0.0) and np.all(lmp.forces[helium] == 0.0)
    assert_close(lmp.energy, ref["energy"], "energy")
    assert_close(lmp.energies[keep], ref["energies"], "per-atom energies")
    assert_close(lmp.forces[keep], ref["forces"], "forces")


def test_kokkos_nve_conserves_energy(site, tmp_path):
    """1000 steps of NVE at 1 fs from 600 K on 2 ranks with the bounded random model of tests/test_md.py (seed
    1): total energy spread under 3e-4 eV/atom while the potential energy moves 100 times more; the first 50
    steps follow pair_style allegro's trajectory."""
    from vivace.export import export

    path = export(make_checkpoint(str(tmp_path / "md.ckpt"), seed=1), str(tmp_path / "md.pth"))
    atoms = alloy("orthogonal")
    write_data(atoms, str(tmp_path / "data.lmp"), TYPE_NAMES)

    def run(lines, cmd, name, steps):
        script = f"""units metal
atom_style atomic
atom_modify map array
read_data {tmp_path / 'data.lmp'}
{lines}
velocity all create 600 4928 mom yes rot yes
timestep 0.001
fix nve all nve
thermo_style custom step pe ke etotal
thermo_modify format float %.12g
thermo 50
dump d all custom {steps} {name}.dump id x y z
dump_modify d sort id format float %.15g
run {steps}
"""
        out = run_lammps(script, str(tmp_path / name), command=cmd)
        return read_thermo(out), read_dump_frames(str(tmp_path / name / f"{name}.dump"))

    thermo, _ = run(kk_lines(site, path), command(site, 2), "kk", 1000)
    assert thermo["Step"][-1] == 1000
    spread = np.ptp(thermo["TotEng"]) / len(atoms)
    assert spread < 3e-4 and np.ptp(thermo["PotEng"]) / len(atoms) > 100 * spread, spread
    _, kk50 = run(kk_lines(site, path), command(site, 2), "kk50", 50)
    _, cpu50 = run(cpu_lines(site, path), launcher(site, 2), "cpu50", 50)
    assert np.abs(kk50[-1][:, 1:4] - cpu50[-1][:, 1:4]).max() < 1e-8


@pytest.mark.parametrize("nprocs,package", [(1, ""), (2, "newton off neigh full")])
def test_kokkos_pairs_closer_than_the_training_data(site, tmp_path, nprocs, package):
    """allegro/kk checks pairs against the training data's shortest distances as pair_style allegro does (the
    approaching Al-Cu dimer of test_pair_robustness: warnings at steps 2, 4, 6, 8, 10 and the run's summary, on
    one rank and across two); `short_pairs error` stops at step 2 and `off` says nothing."""
    from test_pair_robustness import approaching_dimer, assert_warned_approach
    from vivace.lammps_run import LammpsError

    def run(name, mode=""):
        return approaching_dimer(tmp_path / name, "allegro", nprocs, mode, plugin=site["VIVACE_PLUGIN_KK"],
                                 command=command(site, nprocs, package=package))

    assert_warned_approach(run("warn"), "allegro")
    with pytest.raises(LammpsError) as info:
        run("error", " short_pairs error")
    assert "are 2.700 A apart at step 2, 0.89 of the shortest Al-Cu distance" in str(info.value)
    assert "stopped by short_pairs error" in str(info.value)
    log = run("off", " short_pairs off")
    assert "training data" not in log and "Loop time" in log
