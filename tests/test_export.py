"""Export of both models to both artifact formats, checked through the ASE calculator against the
checkpoint (eager model), on a periodic triclinic cell and on an open cluster; the export check itself;
`vivace info`."""

import os

import numpy as np
import pytest
import torch
from ase import Atoms

from conftest import TYPE_NAMES, alloy
from test_physics import MODELS
from vivace.calculators import VivaceCalculator
from vivace.checkpoint import save_checkpoint
from vivace.cli import main as vivace
from vivace.export import ExportError, export
from vivace.models import build_model

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
# AOTInductor compiles take 20-50 s each here: every model and dtype is covered once across both formats
# (the float64 .pt2 of both models are exercised by tests/test_pair_styles.py); the float64 TorchScript Allegro
# reads every layer's latents and has the concatenated two-body embedding with the envelope in every layer; the
# float32 one passes tensor features on ungated.
CASES = [
    ("allegro", "float32", ".pt2", {}),
    ("allegro", "float64", ".pth", dict(readout_latents="all", two_body_embedding="concat", layer_envelope=True)),
    ("allegro", "float32", ".pth", dict(tensor_gating=False)),
    ("nequip", "float64", ".pth", {}),
    ("nequip", "float32", ".pth", {}),
]


def write_checkpoint(path, kind, dtype, hyper=None, seed=3):
    torch.manual_seed(seed)
    hyper = hyper or MODELS[kind]
    model = build_model(kind, hyper, TYPE_NAMES, dtype)
    spec = {"kind": kind, "hyperparameters": hyper, "type_names": TYPE_NAMES, "dtype": dtype, "units": "metal"}
    save_checkpoint(str(path), {"model": spec, "state_dict": model.state_dict()})
    return str(path)


def cluster():
    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 6.0, size=(14, 3))
    keep = [0]
    for k in range(1, len(positions)):  # no two atoms closer than 1.8 A
        if np.linalg.norm(positions[keep] - positions[k], axis=1).min() > 1.8:
            keep.append(k)
    return Atoms(["Al", "Cu"] * 7, positions=positions)[keep]


def properties(atoms, model):
    atoms = atoms.copy()
    atoms.calc = VivaceCalculator(model)
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


@pytest.mark.parametrize("kind,dtype,ext,options", CASES)
def test_artifact_matches_checkpoint_in_ase(tmp_path, kind, dtype, ext, options):
    checkpoint = write_checkpoint(tmp_path / "model.ckpt", kind, dtype, dict(MODELS[kind], **options))
    artifact = export(checkpoint, str(tmp_path / f"model{ext}"))
    for atoms in (alloy("triclinic", seed=12), cluster()):
        ref, out = properties(atoms, checkpoint), properties(atoms, artifact)
        assert set(out) == set(ref)
        for key in ref:
            scale = max(np.abs(ref[key]).max(), 1e-12)
            assert np.abs(np.asarray(out[key]) - ref[key]).max() <= TOLERANCE[dtype] * scale, key


@pytest.mark.slow
def test_concurrent_exports_of_one_architecture(tmp_path):
    """Two exports at once of models with the same architecture (several seeds of one run): each builds its
    AOTInductor files in its own folder. Before, both built them in the shared inductor cache under the generated
    code's hash, and one export in about six packaged the other's half-written files ("parse error ... empty
    input" on loading), so this check can only catch a return of that race by chance; three rounds."""
    import subprocess
    import sys

    checkpoints = [write_checkpoint(tmp_path / f"seed{seed}.ckpt", "allegro", "float64", seed=seed) for seed in (1, 2)]
    code = "import sys; from vivace.export import export; export(sys.argv[1], sys.argv[2])"
    for round in range(3):
        runs = [subprocess.Popen([sys.executable, "-c", code, checkpoint, str(tmp_path / f"{k}_{round}.pt2")],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for k, checkpoint in enumerate(checkpoints)]  # fmt: skip
        for run in runs:
            output = run.communicate()[0].decode()
            assert run.returncode == 0, output[-2000:]
    for k, checkpoint in enumerate(checkpoints):
        ref, out = properties(cluster(), checkpoint), properties(cluster(), str(tmp_path / f"{k}_2.pt2"))
        assert abs(out["energy"] - ref["energy"]) <= TOLERANCE["float64"] * abs(ref["energy"])
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".export-")]


def test_info_prints_metadata(tmp_path, capsys):
    hyper = dict(MODELS["nequip"], num_layers=3, edge_type_cutoffs={"Al-Cu": 3.5})
    checkpoint = write_checkpoint(tmp_path / "model.ckpt", "nequip", "float32", hyper)
    export(checkpoint, str(tmp_path / "model.pth"))
    capsys.readouterr()
    assert vivace(["info", str(tmp_path / "model.pth")]) == 0
    text = capsys.readouterr().out
    for line in (
        "model_kind: nequip",
        "type_names: Al Cu",
        "message_passing_depth: 3",
        "model_dtype: float32",
        "edge_type_cutoffs: 4.0 3.5 3.5 4.0",
        "units: metal",
        "format: torchscript",
        "device: cpu",
        "edges_per_group: 4096",
        "exchange_layers: 3",
    ):
        assert line in text


def test_allegro_group_size_in_metadata(tmp_path):
    """The exporter's CPU group size scales inversely with the tensor features' per-edge width, and the core
    takes it as its default."""
    from vivace import _core

    sizes = {}
    for channels, l_max in ((32, 2), (8, 1), (64, 3)):
        model = build_model("allegro", dict(MODELS["allegro"], num_tensor_features=channels, l_max=l_max), ["Al", "Cu"], "float64")
        sizes[(channels, l_max)] = model.edges_per_group
    assert sizes == {(32, 2): 1024, (8, 1): 8192, (64, 3): 1024}
    artifact = export(write_checkpoint(tmp_path / "model.ckpt", "allegro", "float64"), str(tmp_path / "model.pth"))
    core = _core.Model(artifact)
    assert int(core.metadata["edges_per_group"]) == core.edges_per_group >= 1024


def test_failed_check_fails_the_export(tmp_path, monkeypatch):
    import vivace.export as export_module

    checkpoint = write_checkpoint(tmp_path / "model.ckpt", "allegro", "float64")
    monkeypatch.setitem(export_module.TOLERANCE, "float64", -1.0)
    with pytest.raises(ExportError, match="deviates from the eager model"):
        export(checkpoint, str(tmp_path / "model.pth"))
    assert list(tmp_path.iterdir()) == [tmp_path / "model.ckpt"]


def test_cuda_export_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA export is tested in the gpu suite")
    checkpoint = write_checkpoint(tmp_path / "model.ckpt", "allegro", "float32")
    with pytest.raises(ExportError, match="needs a CUDA build of torch"):
        export(checkpoint, str(tmp_path / "model.pt2"), device="cuda")


MALLOC_PROBE = r"""
import sys, numpy as np
from vivace import _core

def resident_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

model = _core.Model(sys.argv[1])
if sys.argv[2] == "opt-in":
    _core.keep_freed_memory_for_reuse()
before = resident_mb()
block = np.ones(400 * 2**20 // 8)  # 400 MB, touched
del block
print(resident_mb() - before)
"""


@pytest.mark.parametrize("mode", ["load-only", "opt-in"])
def test_loading_a_model_in_python_leaves_malloc_alone(artifact, tmp_path, mode):
    """Only the pair style, or a Python user who asks, makes glibc keep freed memory: after loading a CPU
    artifact a freed 400 MB block goes back to the kernel; after opting in it stays resident."""
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(MALLOC_PROBE)
    kept = float(subprocess.run([sys.executable, str(script), artifact("allegro"), mode], capture_output=True,
                                text=True, check=True).stdout)  # fmt: skip
    assert (kept > 300) if mode == "opt-in" else (kept < 50), kept


def test_one_model_shared_by_threads(artifact):
    """Python threads evaluating one core model at once (the GIL is released inside) get the serial results."""
    from concurrent.futures import ThreadPoolExecutor

    from vivace import _core
    from vivace.calculators import edge_results

    calc = VivaceCalculator(artifact("allegro", "float64", "pt2"))
    atoms = alloy("triclinic")
    atoms.calc = calc
    _, _, vectors, edge_index = edge_results(atoms, calc.backend)
    model = _core.Model(artifact("allegro", "float64", "pt2"))
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)
    serial = model.evaluate(vectors, edge_index, types, len(atoms))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: model.evaluate(vectors, edge_index, types, len(atoms)), range(8)))
    for energy, forces in results:
        assert np.array_equal(energy, serial[0]) and np.array_equal(forces, serial[1])


def test_nequip_pt2_takes_graphs_past_inductors_sort_limit(artifact):
    """A NequIP .pt2 sorts its edges to find reverse pairs; inductor's sort would have capped a graph's edges,
    and so its radial MLP's rows (one per pair), at the int16 limit (32766) by a guard on the traced example.
    A graph past it runs as one program and agrees with the eager model on every atom."""
    from vivace import _core
    from vivace.calculators import atom_forces_of_edges
    from vivace.data import neighbor_graph

    atoms = alloy("orthogonal").repeat((5, 5, 4))
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, MODELS["nequip"]["r_max"])
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    assert vectors.shape[0] > 2 * 32766  # more pairs than the cap; without programs, one program runs them all
    energy, forces = _core.Model(artifact("nequip", "float64", "pt2", exchange=False)).evaluate(
        vectors, edge_index, types, len(atoms))
    ref = properties(atoms, artifact("nequip", "float64", "ckpt"))
    scale = np.abs(ref["forces"]).max()
    assert np.abs(energy - ref["energies"]).max() <= 1e-10 * np.abs(ref["energies"]).max()
    assert np.abs(atom_forces_of_edges(forces, edge_index, len(atoms)) - ref["forces"]).max() <= 1e-10 * scale
