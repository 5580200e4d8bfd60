"""Units: a model trained in real units is the metal-units model with energies in kcal/mol, in LAMMPS and in
ASE; unsupported styles are refused by name."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from vivace.calculators import VivaceCalculator
from vivace.config import ConfigError, load_config
from vivace.export import export
from vivace.lammps_run import single_point
from vivace.training import train
from vivace.units import KCAL_PER_MOL_PER_EV

MODEL = dict(kind="allegro", dtype="float64", r_max=4.0, l_max=1, num_layers=1, num_scalar_features=8,
             num_tensor_features=2, two_body_hidden=[8], latent_hidden=[8], readout_hidden=[4], zbl=True)  # fmt: skip


def rmd17_npz(path, count=12, seed=0):
    """An rMD17-style file (nuclear_charges, coords, energies and forces in kcal/mol) of a rattled Cu3Al
    cluster labelled by EMT."""
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [2.5, 2.5, 0], [1.2, 1.2, 2.2]], float)
    numbers = np.array([29, 29, 13, 29, 13, 29])
    coords, energies, forces = [], [], []
    for _ in range(count):
        atoms = Atoms(numbers=numbers, positions=base + rng.normal(scale=0.1, size=base.shape))
        atoms.calc = EMT()
        coords.append(atoms.positions)
        energies.append(atoms.get_potential_energy() * KCAL_PER_MOL_PER_EV)
        forces.append(atoms.get_forces() * KCAL_PER_MOL_PER_EV)
    np.savez(path, nuclear_charges=numbers, coords=np.array(coords), energies=np.array(energies), forces=np.array(forces))
    return base, numbers


def test_metal_and_real_models_agree_after_conversion(tmp_path):
    """The dimensionless loss makes training unit-free: the two runs differ only by rounding (every energy
    error is a small difference of large numbers, in eV in one run and kcal/mol in the other), which Adam
    carries on from step to step: 6 steps leave the LAMMPS energies within 1e-10, 18 steps measured 1.3e-10."""
    base, numbers = rmd17_npz(tmp_path / "cluster.npz")
    artifacts = {}
    for units in ("metal", "real"):
        run = train({
            "run_dir": str(tmp_path / units), "units": units, "data": {"train": str(tmp_path / "cluster.npz"), "cache_dir": None},
            "model": MODEL, "training": {"max_epochs": 1, "batch_size": 2, "threads": 1, "plots": False, "tensorboard": False,
                         "dtype": "float64"},  # float32 training's rounding would leave ~1e-7, not 1e-10
        })  # fmt: skip
        artifacts[units] = export(f"{run}/best.ckpt", str(tmp_path / f"{units}.pth"))

    atoms = Atoms(numbers=numbers, positions=base + 20.0 + np.random.default_rng(5).normal(scale=0.15, size=base.shape),
                  cell=np.eye(3) * 40.0, pbc=True)  # fmt: skip
    points = {u: single_point(atoms, f"pair_style allegro\npair_coeff * * {artifacts[u]} Al Cu", ["Al", "Cu"],
                              str(tmp_path / f"lmp_{u}"), units=u) for u in artifacts}  # fmt: skip
    metal, real = points["metal"], points["real"]
    assert real.energy == pytest.approx(metal.energy * KCAL_PER_MOL_PER_EV, rel=1e-10, abs=0)
    scale = np.abs(metal.forces).max()
    assert scale > 1e-3  # a trained, non-trivial model
    np.testing.assert_allclose(real.forces, metal.forces * KCAL_PER_MOL_PER_EV, rtol=0, atol=1e-10 * scale * KCAL_PER_MOL_PER_EV)
    np.testing.assert_allclose(real.energies, metal.energies * KCAL_PER_MOL_PER_EV, rtol=1e-10)
    # pressures: LAMMPS reports bar (metal) and atm (real); single_point divides by each style's own nktv2p
    np.testing.assert_allclose(real.stress, metal.stress * KCAL_PER_MOL_PER_EV, rtol=0,
                               atol=1e-10 * np.abs(metal.stress).max() * KCAL_PER_MOL_PER_EV)
    assert "units real" in real.output and "units metal" in metal.output

    # the ASE calculator speaks eV and eV/A whatever the model's units
    results = {}
    for units, path in artifacts.items():
        atoms.calc = VivaceCalculator(path)
        results[units] = (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
    assert results["real"][0] == pytest.approx(results["metal"][0], rel=1e-10)
    assert results["metal"][0] == pytest.approx(metal.energy, rel=1e-10)
    for k in (1, 2):
        np.testing.assert_allclose(results["real"][k], results["metal"][k], rtol=0, atol=1e-10 * np.abs(results["metal"][k]).max())


def test_unsupported_units_are_refused_by_name(tmp_path):
    rmd17_npz(tmp_path / "c.npz", count=2)
    for bad in ("si", "electron", "eV"):
        with pytest.raises(ConfigError, match=f"config key 'units' must be one of metal, real, not '{bad}'"):
            load_config({"units": bad, "data": {"train": str(tmp_path / "c.npz")}})
    from vivace.models import build_model

    with pytest.raises(ValueError, match="units 'lj' is not supported"):
        build_model("allegro", dict(r_max=4.0, units="lj"), ["Cu"], "float64")
