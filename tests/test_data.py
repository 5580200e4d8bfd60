"""Data formats and their conversions, the graph cache, dataset statistics and the config schema."""

import os

import ase.io
import numpy as np
import pytest
import yaml

from conftest import HYPER, R_MAX, TYPE_NAMES, emt_frames, make_checkpoint
from vivace.models import build_model
from vivace import statistics
from vivace.config import ConfigError, load_config
from vivace.data import load_structures, read_data, structures_from_frames
from vivace.data.formats import ENERGY_UNITS, STRESS_UNITS

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
KCAL = ENERGY_UNITS["kcal/mol"]


@pytest.fixture(scope="module")
def frames():
    return emt_frames(4, seed=30, stress=True)


def check_labels(read, frames, tol):
    """extxyz stores about 8 decimals, npy files every bit: `tol` is relative to each quantity's largest value."""
    assert len(read) == len(frames)
    for r, a in zip(read, frames):
        assert r.symbols == a.get_chemical_symbols()
        assert np.allclose(r.positions, a.positions, atol=tol * 10, rtol=0)
        assert abs(r.energy - a.get_potential_energy()) < tol * max(1, abs(a.get_potential_energy()))
        assert np.abs(r.forces - a.get_forces()).max() < tol * max(1, np.abs(a.get_forces()).max())
        if r.stress is not None:
            assert np.abs(r.stress - a.get_stress(voigt=False)).max() < tol * np.abs(a.get_stress()).max()


def test_extxyz_labels(tmp_path, frames):
    ase.io.write(tmp_path / "d.xyz", frames)
    read = read_data(str(tmp_path / "d.xyz"))
    check_labels(read, frames, tol=1e-7)
    assert all(r.stress is not None and r.weight == 1.0 for r in read)


def test_extxyz_key_mapping_units_sign_and_virial(tmp_path, frames):
    """Labels under other names, energy in kcal/mol, a pressure-sign stress in GPa, and a virial in kcal/mol."""
    plain = []
    for k, a in enumerate(frames):
        b = a.copy()
        b.info["dft_energy"] = a.get_potential_energy() / KCAL
        b.arrays["dft_forces"] = a.get_forces() / KCAL
        b.info["pressure_gpa"] = -a.get_stress(voigt=False) / STRESS_UNITS["GPa"]
        b.info["w"] = 0.5 * k
        b.info["vir"] = -a.get_volume() * a.get_stress(voigt=False).ravel() / KCAL
        plain.append(b)
    ase.io.write(tmp_path / "d.xyz", plain)
    base = {"path": str(tmp_path / "d.xyz"), "energy_unit": "kcal/mol"}
    keys = {"energy": "dft_energy", "forces": "dft_forces", "weight": "w"}
    read = read_data({**base, "keys": {**keys, "stress": "pressure_gpa"}, "stress_unit": "GPa", "stress_sign": "pressure"})
    check_labels(read, frames, tol=1e-7)
    assert [r.weight for r in read] == [0.0, 0.5, 1.0, 1.5]
    read = read_data({**base, "keys": {**keys, "virial": "vir"}})
    check_labels(read, frames, tol=1e-7)
    with pytest.raises(ValueError, match="no 'missing'"):
        read_data({**base, "keys": {"energy": "missing"}})


def test_rmd17_npz(tmp_path):
    """A molecule trajectory in rMD17's layout and units (kcal/mol) reads back in eV."""
    from ase.calculators.emt import EMT
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(0)
    mols = []
    for k in range(3):
        m = Icosahedron("Cu", 2)
        m.positions += rng.normal(scale=0.05, size=m.positions.shape)
        m.calc = EMT()
        m.get_forces()
        mols.append(m)
    np.savez(
        tmp_path / "mol.npz",
        nuclear_charges=mols[0].numbers,
        coords=np.stack([m.positions for m in mols]),
        energies=np.array([m.get_potential_energy() / KCAL for m in mols]),
        forces=np.stack([m.get_forces() / KCAL for m in mols]),
        old_energies=np.zeros(3),
    )
    read = read_data(str(tmp_path / "mol.npz"))
    check_labels(read, mols, tol=1e-10)
    assert not read[0].pbc.any()
    # the same file as a generic npz needs its keys named, and is then taken in eV
    generic = read_data({"path": str(tmp_path / "mol.npz"), "format": "npz", "keys": {"numbers": "nuclear_charges", "positions": "coords", "energy": "energies"}})
    assert abs(generic[0].energy - mols[0].get_potential_energy() / KCAL) < 1e-9
    with pytest.raises(ValueError, match="no 'numbers' \\(numbers\\), 'positions'"):
        read_data({"path": str(tmp_path / "mol.npz"), "format": "npz"})


def write_deepmd(folder, frames, type_map):
    os.makedirs(folder / "set.000")
    types = [type_map.index(s) for s in frames[0].get_chemical_symbols()]
    (folder / "type.raw").write_text("\n".join(map(str, types)) + "\n")
    (folder / "type_map.raw").write_text("\n".join(type_map) + "\n")
    np.save(folder / "set.000" / "coord.npy", np.stack([a.positions.ravel() for a in frames]))
    np.save(folder / "set.000" / "box.npy", np.stack([a.cell.array.ravel() for a in frames]))
    np.save(folder / "set.000" / "energy.npy", np.array([a.get_potential_energy() for a in frames]))
    np.save(folder / "set.000" / "force.npy", np.stack([a.get_forces().ravel() for a in frames]))
    virial = [-a.get_volume() * a.get_stress(voigt=False).ravel() for a in frames]  # W = -V sigma
    np.save(folder / "set.000" / "virial.npy", np.stack(virial))


def test_deepmd_folder(tmp_path):
    """Same composition in every frame, as DeePMD requires; the virial becomes the ASE-sign stress."""
    frames = emt_frames(3, seed=40, stress=True)
    symbols = frames[0].get_chemical_symbols()
    for a in frames[1:]:
        a.set_chemical_symbols(symbols)
        a.get_potential_energy(), a.get_forces(), a.get_stress()
    write_deepmd(tmp_path / "sys", frames, ["Al", "Cu"])
    read = read_data(str(tmp_path / "sys"))
    check_labels(read, frames, tol=1e-10)
    assert all(r.pbc.all() for r in read)
    # a folder of systems, each with its own composition and type order
    write_deepmd(tmp_path / "many" / "a", frames[:2], ["Al", "Cu"])
    other = emt_frames(1, seed=60, stress=True)
    write_deepmd(tmp_path / "many" / "b", other, ["Cu", "Al"])
    check_labels(read_data(str(tmp_path / "many")), frames[:2] + other, tol=1e-10)
    os.remove(tmp_path / "sys" / "type_map.raw")
    with pytest.raises(ValueError, match="type_map"):
        read_data(str(tmp_path / "sys"))
    assert read_data({"path": str(tmp_path / "sys"), "type_map": ["Al", "Cu"]})[0].symbols == symbols


def test_data_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_data(str(tmp_path / "none.xyz"))
    with pytest.raises(ValueError, match="unknown data source key"):
        read_data({"path": "x.xyz", "energy_units": "eV"})
    with pytest.raises(ValueError, match="unknown energy_unit 'kcal'"):
        read_data({"path": "x.xyz", "energy_unit": "kcal"})
    with pytest.raises(ValueError, match="stress_sign"):
        read_data({"path": "x.xyz", "stress_sign": "tension"})
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="neither a DeePMD system"):
        read_data(str(tmp_path / "folder"))


def test_graph_cache(tmp_path, frames, monkeypatch):
    """The second load of the same file reads the cache, not the file; changing the file rebuilds."""
    import vivace.data.dataset as dataset

    path = tmp_path / "d.xyz"
    ase.io.write(path, frames)
    first = load_structures(str(path), TYPE_NAMES, R_MAX, cache_dir=str(tmp_path / "cache"))
    with monkeypatch.context() as m:
        m.setattr(dataset, "read_data", lambda *args: pytest.fail("re-parsed a cached file"))
        again = load_structures(str(path), TYPE_NAMES, R_MAX, cache_dir=str(tmp_path / "cache"))
    for a, b in zip(first, again):
        for field in ("positions", "atom_types", "cell", "pbc", "edge_index", "shifts", "forces", "stress"):
            assert np.array_equal(getattr(a, field), getattr(b, field))
        assert a.energy == b.energy and a.weight == b.weight
    ase.io.write(path, frames[:2])
    os.utime(path, (1, 1))
    assert len(load_structures(str(path), TYPE_NAMES, R_MAX, cache_dir=str(tmp_path / "cache"))) == 2
    assert len(os.listdir(tmp_path / "cache")) == 2


def test_per_edge_type_cutoff_graphs(frames):
    """Edges beyond their pair's cutoff are dropped from the graph; the model's energy does not change."""
    import torch

    from conftest import HYPER
    from vivace.data import collate
    from vivace.losses import predict
    from vivace.models import EdgeForceModel, build_model
    from vivace.models.common import cutoff_matrix

    cutoffs = {"Al": 3.0, "Cu-Cu": 3.4}
    r_cut = cutoff_matrix(TYPE_NAMES, R_MAX, cutoffs).numpy()
    full = structures_from_frames(frames, TYPE_NAMES, R_MAX)
    cut = structures_from_frames(frames, TYPE_NAMES, R_MAX, r_cut)
    assert all(c.edge_index.shape[1] < f.edge_index.shape[1] for c, f in zip(cut, full))
    torch.manual_seed(0)
    model = EdgeForceModel(build_model("allegro", dict(HYPER, edge_type_cutoffs=cutoffs), TYPE_NAMES, "float64"))
    a, b = predict(model, collate(full)), predict(model, collate(cut))
    assert torch.allclose(a.energy, b.energy, rtol=1e-13, atol=0)
    assert torch.allclose(a.forces, b.forces, rtol=0, atol=1e-12)


def test_statistics(frames):
    structures = structures_from_frames(frames, TYPE_NAMES, R_MAX)
    mu = np.array([-1.25, 0.75])
    for k, s in enumerate(structures):
        s.atom_types[: 3 * k] = 0  # compositions must differ for the shifts to be determined
        s.energy = float(np.bincount(s.atom_types, minlength=2) @ mu)
    assert np.allclose(statistics.energy_shifts(structures, 2), mu, atol=1e-12)
    edges = sum(s.edge_index.shape[1] for s in structures)
    assert statistics.average_num_neighbors(structures, 2) == pytest.approx(edges / sum(s.num_atoms for s in structures))
    per_type = statistics.average_num_neighbors(structures, 2, per_type=True)
    counts = [sum((s.atom_types == t).sum() for s in structures) for t in range(2)]
    assert np.dot(per_type, counts) == pytest.approx(edges)
    forces = np.concatenate([a.get_forces() for a in frames])
    assert statistics.force_rms(structures) == pytest.approx(np.sqrt(np.mean(forces**2)))


def test_config_schema_errors(tmp_path):
    (tmp_path / "t.xyz").write_text("")
    base = {"data": {"train": str(tmp_path / "t.xyz")}}
    assert load_config(base)["training"]["optimizer"] == "adam"
    cases = [
        ({"training": {"batch_size": "four"}}, r"'training.batch_size' must be int, not str"),
        ({"training": {"learning_rate": True}}, r"'training.learning_rate' must be float"),
        ({"training": {"optimizer": "sgd"}}, r"'training.optimizer' must be one of adam, adamw"),
        ({"training": {"scheduler": "step"}}, r"'training.scheduler' must be one of plateau, cosine, none"),
        ({"training": {"ema": 0.9}}, r"unknown config key 'training.ema'"),
        ({"model": {"l_max": 2.5}}, r"'model.l_max' must be int"),
        ({"model": {"type_names": "Cu"}}, r"'model.type_names' must be list"),
        ({"model": {"latent_update": "resnet"}}, r"'model.latent_update' must be one of concat, residual"),
        ({"data": {"train": str(tmp_path / "none.xyz")}}, r"'data.train': data file '.*none.xyz' does not exist"),
        ({"data": {**base["data"], "validation": {"path": "nope.npz"}}}, r"'data.validation': data file 'nope.npz'"),
        ({"training": {"init_from": "no.ckpt"}}, r"checkpoint 'no.ckpt' does not exist"),
        ({"model": {"kind": "mace"}}, r"unknown model kind 'mace'"),
    ]
    for change, message in cases:
        config = {**base, **change}
        with pytest.raises(ConfigError, match=message):
            load_config(config)
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(tmp_path / "bad.yaml"))


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="needs ../shared/data")
def test_shared_rmd17_and_deepmd_water():
    ethanol = read_data(os.path.join(SHARED, "rmd17", "rmd17_ethanol_train_01.npz"))
    raw = np.load(os.path.join(SHARED, "rmd17", "rmd17_ethanol_train_01.npz"))
    assert len(ethanol) == 1000 and ethanol[0].symbols.count("C") == 2
    assert ethanol[5].energy == pytest.approx(raw["energies"][5] * KCAL, rel=1e-12)
    water = read_data(os.path.join(SHARED, "water192"))
    assert len(water) == 320 and len(water[0].symbols) == 192 and water[0].pbc.all()
    assert abs(np.linalg.det(water[0].cell)) == pytest.approx(12.44**3, rel=1e-2)
    structures = structures_from_frames(water[:2], ["H", "O"], 5.0)
    assert 30 < structures[0].edge_index.shape[1] / 192 < 60


PROFILES = {  # g(x) of the cohesion baseline c g(x), written out here independently of the model's code
    "sqrt": lambda x: (np.sqrt(x + 0.01) - 0.1) / (np.sqrt(1.01) - 0.1),
    "quadratic": lambda x: x * (2 - x),
}


@pytest.mark.parametrize("form", sorted(PROFILES))
def test_cohesion_baseline_recovers_a_coordination_energy(frames, form):
    """Energies made as E0 per atom plus c[Z] g(x), x = rho / rho0 (the data's mean coordination): the fit
    gives c back, and a model with that baseline and no network output reproduces the energies."""
    import torch

    from vivace.data import collate
    from vivace.losses import predict
    from vivace.models import EdgeForceModel, build_model

    structures = structures_from_frames(frames, TYPE_NAMES, R_MAX)
    cutoffs = np.full((2, 2), R_MAX)
    for k, s in enumerate(structures):
        s.atom_types[: 2 * k] = 0
    rho = [statistics.coordinations(s, cutoffs, 6) for s in structures]
    types = np.concatenate([s.atom_types for s in structures])
    rho0 = np.array([np.concatenate(rho)[types == t].mean() for t in range(2)])
    e0, c = np.array([-0.5, -1.5]), np.array([-2.0, -3.5])
    for s, r in zip(structures, rho):
        x = r / rho0[s.atom_types]
        s.energy = float(e0[s.atom_types].sum() + (c[s.atom_types] * PROFILES[form](x)).sum())
    fitted, mean_rho = statistics.cohesion_baseline(structures, 2, e0, cutoffs, 6, form)
    assert np.allclose(mean_rho, rho0, rtol=1e-12) and np.allclose(fitted, c, atol=1e-9)

    hyper = dict(HYPER, energy_shift=list(e0), cohesion=fitted, mean_coordination=mean_rho, cohesion_form=form)
    model = build_model("allegro", hyper, TYPE_NAMES, "float64")
    with torch.no_grad():
        for p in model.readout.parameters():
            p.zero_()
    predicted = predict(EdgeForceModel(model), collate(structures)).energy
    assert np.allclose(predicted.detach().numpy(), [s.energy for s in structures], rtol=0, atol=1e-9)


def baseline_only_checkpoint(path, form, rho0, c=-3.0, shift=0.25, **network):
    """A one-element (Cu) Allegro whose network outputs nothing: its energy is the shift plus the baseline."""
    import torch

    from vivace.checkpoint import save_checkpoint

    hyper = dict(HYPER, energy_shift=[shift], energy_scale=[1.0], cohesion=[c], mean_coordination=[rho0],
                 cohesion_form=form, **network)  # fmt: skip
    model = build_model("allegro", hyper, ["Cu"], "float64")
    with torch.no_grad():
        for p in model.readout.parameters():
            p.zero_()
    spec = {"kind": "allegro", "hyperparameters": hyper, "type_names": ["Cu"], "dtype": "float64", "units": "metal"}
    save_checkpoint(path, {"model": spec, "state_dict": model.state_dict()})
    return path


def fcc_copper(a=3.6):
    from ase.build import bulk

    crystal = bulk("Cu", "fcc", a=a, cubic=True).repeat(2)
    rho0 = float(statistics.coordinations(structures_from_frames([crystal], ["Cu"], R_MAX)[0],
                                          np.full((1, 1), R_MAX), 6).mean())  # fmt: skip
    return crystal, rho0


@pytest.mark.parametrize("form", sorted(PROFILES))
def test_cohesion_baseline_at_the_mean_coordination(tmp_path, form):
    """A perfect crystal whose atoms all sit at rho0: the baseline adds its cohesion c per atom and no force;
    the quadratic form no stress either, the square root the stress of its attraction (the strain derivative
    of the energy, by finite differences); an isolated atom gets its shift."""
    from vivace.calculators import VivaceCalculator

    crystal, rho0 = fcc_copper()
    path = baseline_only_checkpoint(str(tmp_path / f"{form}.ckpt"), form, rho0)
    crystal.calc = VivaceCalculator(path)
    assert crystal.get_potential_energy() == pytest.approx(len(crystal) * (0.25 - 3.0), rel=1e-12)
    assert np.abs(crystal.get_forces()).max() < 1e-10
    stress = crystal.get_stress(voigt=False)
    h, cell, volume = 1e-5, crystal.cell.array.copy(), crystal.get_volume()
    for i in range(3):
        energies = []
        for sign in (1, -1):
            strained = crystal.copy()
            strain = np.eye(3)
            strain[i, i] += sign * h
            strained.set_cell(cell @ strain, scale_atoms=True)
            strained.calc = VivaceCalculator(path)
            energies.append(strained.get_potential_energy())
        assert stress[i, i] == pytest.approx((energies[0] - energies[1]) / (2 * h) / volume, rel=1e-6, abs=1e-10)
    if form == "quadratic":
        assert np.abs(stress).max() < 1e-10
    else:
        assert stress[0, 0] > 1e-3  # tensile: the square root pulls the atoms together
    lone = crystal[:1]
    lone.center(vacuum=10.0)
    lone.pbc = False
    lone.calc = VivaceCalculator(path)
    assert lone.get_potential_energy() == pytest.approx(0.25, rel=1e-12)


def test_square_root_baseline_prices_a_vacancy_to_first_order(tmp_path):
    """Removing an atom from the crystal costs the square-root baseline about half the cohesion |c| (each
    neighbor loses its share of coordination to first order), the quadratic one under a tenth (second order);
    a dimer pulled through the cutoff has finite forces all the way to its isolated energies."""
    from vivace.calculators import VivaceCalculator

    crystal, rho0 = fcc_copper()
    vacancy_energy = {}
    for form in PROFILES:
        path = baseline_only_checkpoint(str(tmp_path / f"{form}.ckpt"), form, rho0)
        energies = []
        for atoms in (crystal, crystal[1:]):
            atoms = atoms.copy()
            atoms.calc = VivaceCalculator(path)
            energies.append(atoms.get_potential_energy())
        vacancy_energy[form] = energies[1] - (len(crystal) - 1) / len(crystal) * energies[0]
    assert 0.4 * 3.0 < vacancy_energy["sqrt"] < 0.6 * 3.0
    assert 0 < vacancy_energy["quadratic"] < 0.1 * 3.0
    from vivace.export import export

    exported = crystal[1:].copy()  # the TorchScript artifact carries the form
    exported.calc = VivaceCalculator(export(str(tmp_path / "sqrt.ckpt"), str(tmp_path / "sqrt.pth")))
    assert exported.get_potential_energy() - (len(crystal) - 1) / len(crystal) * len(crystal) * (0.25 - 3.0) \
        == pytest.approx(vacancy_energy["sqrt"], rel=1e-10)

    from ase import Atoms

    path = baseline_only_checkpoint(str(tmp_path / "dimer.ckpt"), "sqrt", rho0)
    calc = VivaceCalculator(path)
    forces, energies = [], []
    for r in np.linspace(R_MAX - 0.2, R_MAX + 0.1, 31):
        dimer = Atoms("Cu2", positions=[[0, 0, 0], [r, 0, 0]])
        dimer.calc = calc
        forces.append(dimer.get_forces()[1, 0])
        energies.append(dimer.get_potential_energy())
    assert np.all(np.isfinite(forces)) and np.abs(np.diff(forces)).max() < 0.05
    assert energies[-1] == pytest.approx(0.5, rel=1e-12) and np.all(np.array(energies) <= 0.5 + 1e-12)


def test_a_version_1_checkpoint_keeps_its_quadratic_baseline(tmp_path):
    """Checkpoints written before the baseline's form was a hyperparameter meant the quadratic form."""
    import torch

    from vivace.calculators import VivaceCalculator

    crystal, rho0 = fcc_copper()
    crystal = crystal[1:]  # a vacancy, where the two forms differ
    results = {}
    for form in PROFILES:
        path = baseline_only_checkpoint(str(tmp_path / f"{form}.ckpt"), form, rho0)
        atoms = crystal.copy()
        atoms.calc = VivaceCalculator(path)
        results[form] = atoms.get_potential_energy()
    old_network = dict(two_body_embedding="concat", layer_envelope=True)  # version 1's, implied by its absence
    path = baseline_only_checkpoint(str(tmp_path / "v1.ckpt"), "quadratic", rho0, **old_network)
    payload = torch.load(path, weights_only=False)
    for key in ["cohesion_form", *old_network]:
        del payload["model"]["hyperparameters"][key]
    payload["format_version"] = 1
    torch.save(payload, str(tmp_path / "old.ckpt"))
    crystal.calc = VivaceCalculator(str(tmp_path / "old.ckpt"))
    assert crystal.get_potential_energy() == pytest.approx(results["quadratic"], rel=1e-12)
    assert abs(results["sqrt"] - results["quadratic"]) > 0.5


def test_a_cohesion_baseline_needs_a_form():
    """cohesion_form "none" (the default) has no baseline: cohesion values given with it are refused."""
    with pytest.raises(ValueError, match="needs a cohesion_form"):
        build_model("allegro", dict(HYPER, energy_shift=[0.0, 0.0], cohesion=[-1.0, -1.0],
                                    mean_coordination=[10.0, 10.0]), TYPE_NAMES, "float64")  # fmt: skip


def test_a_version_2_checkpoint_keeps_its_allegro_network(tmp_path, frames):
    """Checkpoints written before version 3 meant Allegro's "concat" two-body embedding with the envelope in
    every layer (today's defaults are "product" and once): loaded without those keys, they give the energies
    of the network they were written from."""
    import torch

    from vivace.calculators import VivaceCalculator

    hyper = dict(HYPER, energy_shift=[-0.5, -0.25], energy_scale=[1.0, 1.0], two_body_embedding="concat",
                 layer_envelope=True)  # fmt: skip
    payload = torch.load(make_checkpoint(str(tmp_path / "new.ckpt"), hyper=hyper), weights_only=False)
    for key in ("two_body_embedding", "layer_envelope"):
        del payload["model"]["hyperparameters"][key]
    payload["format_version"] = 2
    torch.save(payload, str(tmp_path / "old.ckpt"))
    energies = []
    for name in ("new", "old"):
        atoms = frames[0].copy()
        atoms.calc = VivaceCalculator(str(tmp_path / f"{name}.ckpt"))
        energies.append(atoms.get_potential_energy())
    assert energies[1] == pytest.approx(energies[0], rel=1e-12)
    payload["format_version"] = 3  # read as today's defaults, the weights do not fit: refused, not misread
    torch.save(payload, str(tmp_path / "misread.ckpt"))
    with pytest.raises(RuntimeError, match="basis_projection|Missing key|Unexpected key"):
        VivaceCalculator(str(tmp_path / "misread.ckpt"))
