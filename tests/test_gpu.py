"""The CUDA path, against the CPU: the core and pair_style allegro / nequip on a GPU give the CPU's energies,
forces and virials (1e-10 in float64, 1e-5 in float32); two MPI ranks share one GPU; data-parallel training
steps on CUDA (torchrun, NCCL) keep the replicas identical. Marked gpu: skipped without a CUDA device, run by
`bash scripts/test.sh -m gpu` and by scripts/gpu_check.sh."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TYPE_NAMES, alloy, emt_frames, make_checkpoint
from test_pair_styles import python_results
from vivace.lammps_run import single_point

pytestmark = pytest.mark.gpu
RTOL = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(scope="module", autouse=True)
def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")


def close(a, b, rtol, what):
    a, b = np.asarray(a), np.asarray(b)
    deviation = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
    assert deviation < rtol, f"{what}: relative deviation {deviation:.2e}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from vivace.export import export

    folder = tmp_path_factory.mktemp("gpu")
    made = {}

    def get(kind, dtype, fmt, device):
        key = (kind, dtype, fmt, device)
        if key not in made:
            checkpoint = str(folder / f"{kind}-{dtype}.ckpt")
            if not os.path.exists(checkpoint):
                make_checkpoint(checkpoint, dtype, kind=kind)
            made[key] = export(checkpoint, str(folder / f"{kind}-{dtype}-{device}.{fmt}"), device=device)
        return made[key]

    return get


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fmt", ["pt2", "pth"])
@pytest.mark.parametrize("kind", ["allegro", "nequip"])
def test_core_on_cuda_matches_cpu(exported, kind, fmt, dtype):
    atoms = alloy("triclinic")
    cpu = python_results(atoms, exported(kind, dtype, fmt, "cpu"))
    gpu = python_results(atoms, exported(kind, dtype, fmt, "cuda"))
    for key in ("energy", "forces", "stress", "virials"):
        close(gpu[key], cpu[key], RTOL[dtype], f"{kind} {fmt} {dtype} {key}")


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["allegro", "nequip"])
def test_pair_style_on_cuda_matches_cpu(exported, tmp_path, kind, dtype, nprocs):
    """nprocs 2: both ranks share the one GPU (node-local rank modulo the GPU count)."""
    atoms = alloy("triclinic", seed=2)
    results = {}
    for device in ("cpu", "cuda"):
        path = exported(kind, dtype, "pt2", device)
        lines = f"pair_style {kind}\npair_coeff * * {path} {' '.join(TYPE_NAMES)}"
        results[device] = single_point(atoms, lines, TYPE_NAMES, str(tmp_path / device), nprocs=nprocs)
    assert "cuda:0" in results["cuda"].output
    for key in ("energy", "energies", "forces", "stress", "atom_virials"):
        close(getattr(results["cuda"], key), getattr(results["cpu"], key), RTOL[dtype], f"{kind} {dtype} {key}")


def test_ddp_training_steps_on_cuda(tmp_path):
    """Two torchrun processes on the GPU(s) (NCCL, each bound to its node-local GPU) train 2 epochs; the
    checkpoint they write loads and evaluates."""
    import ase.io

    ase.io.write(str(tmp_path / "train.xyz"), emt_frames(16, seed=1))
    config = tmp_path / "config.yaml"
    config.write_text(f"""run_dir: {tmp_path / 'run'}
data: {{train: {tmp_path / 'train.xyz'}, val_fraction: 0.25, cache_dir: null}}
device: cuda
model: {{kind: allegro, dtype: float64, l_max: 1, num_scalar_features: 8, num_tensor_features: 4}}
training: {{max_epochs: 2, batch_size: 2, tensorboard: false, plots: false}}
""")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "vivace.cli", "train", str(config)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cuda" in proc.stdout + proc.stderr
    assert os.path.exists(tmp_path / "run" / "best.ckpt")
