"""The whole path through the `vivace` command: EMT data -> training -> export (both formats) -> LAMMPS MD,
and the trained model giving the same answers in LAMMPS and ASE through either artifact and the checkpoint."""

import os
import re
import subprocess
import sys

import ase.io
import numpy as np

from conftest import alloy, emt_frames
from vivace.calculators import VivaceCalculator
from vivace.lammps_run import read_thermo, run_lammps, single_point, write_data


def vivace(*args, cwd):
    proc = subprocess.run(
        [sys.executable, "-m", "vivace.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_data_train_export_lammps(tmp_path):
    ase.io.write(tmp_path / "train.xyz", emt_frames(8, seed=10))
    (tmp_path / "train.yaml").write_text(
        """run_dir: run
data: {train: train.xyz, val_fraction: 0.25}
model: {r_max: 4.0, l_max: 1, num_layers: 1, num_scalar_features: 8, num_tensor_features: 2,
        two_body_hidden: [8], latent_hidden: [8], readout_hidden: [4]}
training: {max_epochs: 2, batch_size: 2}
"""
    )
    out = vivace("train", "train.yaml", cwd=tmp_path)
    assert re.search(r"epoch\s+2 .*F MAE", out)
    assert (tmp_path / "run" / "best.ckpt").exists() and (tmp_path / "run" / "config.yaml").exists()

    out = vivace("export", "run/best.ckpt", "-o", "model.pt2", cwd=tmp_path)
    deviation = float(re.search(r"deviation of the artifact from the eager model: (\S+)", out)[1])
    assert deviation < 1e-9
    assert "model_kind: allegro" in vivace("info", "model.pt2", cwd=tmp_path)
    vivace("export", "run/best.ckpt", "-o", "model.pth", cwd=tmp_path)

    probe = alloy("orthogonal", seed=98)
    probe.calc = VivaceCalculator(str(tmp_path / "run" / "best.ckpt"))
    ref_forces, ref_stress = probe.get_forces(), probe.get_stress(voigt=False)
    for artifact in ("model.pt2", "model.pth"):
        path = str(tmp_path / artifact)
        in_lammps = single_point(probe, f"pair_style allegro\npair_coeff * * {path} Al Cu", ["Al", "Cu"], str(tmp_path / artifact[-3:]))
        in_ase = probe.copy()
        in_ase.calc = VivaceCalculator(path)
        for energy, forces, stress in (
            (in_lammps.energy, in_lammps.forces, in_lammps.stress),
            (in_ase.get_potential_energy(), in_ase.get_forces(), in_ase.get_stress(voigt=False)),
        ):
            assert abs(energy - probe.get_potential_energy()) < 1e-9 * abs(probe.get_potential_energy())
            assert np.abs(forces - ref_forces).max() < 1e-8 * np.abs(ref_forces).max()
            assert np.abs(stress - ref_stress).max() < 1e-8 * np.abs(ref_stress).max()

    atoms = alloy("triclinic", seed=99)
    write_data(atoms, str(tmp_path / "data.lmp"), ["Al", "Cu"])
    text = run_lammps(
        f"""units metal
atom_style atomic
read_data {tmp_path / 'data.lmp'}
pair_style allegro
pair_coeff * * {tmp_path / 'model.pt2'} Al Cu
velocity all create 300 12345
fix nve all nve
thermo 10
thermo_style custom step pe etotal
thermo_modify format float %.15g
run 20
""",
        str(tmp_path / "md"),
        nprocs=2,
    )
    thermo = read_thermo(text)
    assert thermo["Step"].tolist() == [0, 10, 20]
    assert all(np.isfinite(column).all() for column in thermo.values())
    atoms.calc = VivaceCalculator(str(tmp_path / "model.pt2"))
    assert abs(thermo["PotEng"][0] - atoms.get_potential_energy()) < 1e-8 * abs(atoms.get_potential_energy())
