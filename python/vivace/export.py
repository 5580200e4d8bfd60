"""Export a checkpoint as an AOTInductor (.pt2) or TorchScript (.pth) artifact under the artifact contract."""

import os
import tempfile
import warnings
from typing import Dict, Optional

import numpy as np
import torch

from . import __version__
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import neighbor_graph
from .models import EdgeForceModel
from .nn.tensor_product import unrolled_contractions

CONTRACT_VERSION = 1
FORMATS = {".pt2": "aotinductor", ".pth": "torchscript", ".pt": "torchscript"}
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}  # largest relative deviation from the eager model allowed
TORCHSCRIPT_METADATA_FILE = "vivace_metadata.txt"


class ExportError(RuntimeError):
    pass


def artifact_metadata(model: torch.nn.Module, spec: Dict, device: str, fmt: str, kernel: str = "torch") -> Dict[str, str]:
    hyper = spec["hyperparameters"]
    r_cut = model.geometry.r_cut
    grouped = hasattr(model, "cpu_edges_per_group")
    return {
        "contract_version": str(CONTRACT_VERSION),
        "model_kind": spec["kind"],
        "type_names": " ".join(spec["type_names"]),
        "r_max": repr(float(hyper["r_max"])),
        "edge_type_cutoffs": "" if r_cut is None else " ".join(repr(float(c)) for c in r_cut.flatten()),
        "message_passing_depth": str(model.message_passing_depth),
        "edges_per_group": str(model.cpu_edges_per_group()) if grouped else "0",
        "model_dtype": spec["dtype"],
        "units": spec.get("units", "metal"),
        "device": device,
        "format": fmt,
        "tensor_product_kernel": kernel,
        "vivace_version": __version__,
        "torch_version": torch.__version__,
    }


def random_graph(num_types: int, r_max: float, num_atoms: int, seed: int):
    """A dense random cluster: every type present, many edges. Returns numpy contract inputs."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 0.9 * r_max, size=(num_atoms, 3))
    edge_index, shifts = neighbor_graph(positions, np.zeros((3, 3)), [False] * 3, r_max)
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts
    types = np.arange(num_atoms, dtype=np.int64) % num_types
    return vectors, edge_index, types


def _torch_inputs(vectors, edge_index, types, n_local, device):
    return (
        torch.tensor(vectors, dtype=torch.float64, device=device),
        torch.tensor(edge_index, dtype=torch.int64, device=device),
        torch.tensor(types, dtype=torch.int64, device=device),
        torch.tensor(n_local, dtype=torch.int64, device=device),
    )


def _compile_aotinductor(wrapper, example, metadata, path):
    from torch.fx.experimental.proxy_tensor import make_fx

    with unrolled_contractions():
        graph = make_fx(wrapper, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    num_edges = torch.export.Dim("num_edges", min=1)
    num_nodes = torch.export.Dim("num_nodes", min=1)
    program = torch.export.export(
        graph, example, dynamic_shapes=({0: num_edges}, {1: num_edges}, {0: num_nodes}, None), strict=False
    )
    torch._inductor.aoti_compile_and_package(
        program, package_path=path, inductor_configs={"aot_inductor.metadata": metadata}
    )


def _compile_torchscript(wrapper, metadata, path):
    from .nn import kernels

    kernels.available()  # scripting resolves torch.ops.vivace.* in every branch, the fused kernel's included
    scripted = torch.jit.script(wrapper)
    text = "".join(f"{k}={v}\n" for k, v in metadata.items())
    torch.jit.save(scripted, path, _extra_files={TORCHSCRIPT_METADATA_FILE: text})


def check_artifact(path: str, wrapper: torch.nn.Module, spec: Dict, device: str) -> float:
    """Largest deviation of the artifact (through the C++ core) from the eager model, relative to the
    largest magnitude of each output; checked on a graph of another size than the traced one, with ghosts."""
    from . import _core

    model = _core.Model(path, 0 if device == "cuda" else -1)
    vectors, edge_index, types = random_graph(len(spec["type_names"]), float(spec["hyperparameters"]["r_max"]), 13, 1)
    n_local = 9
    energy, forces = model.evaluate(vectors, edge_index, types, n_local)
    ref_energy, ref_forces = wrapper(*_torch_inputs(vectors, edge_index, types, n_local, device))
    ref_energy = ref_energy.detach().cpu().numpy()
    ref_forces = ref_forces.detach().cpu().numpy()
    dev_e = np.abs(energy[:n_local] - ref_energy[:n_local]).max() / max(np.abs(ref_energy[:n_local]).max(), 1e-12)
    dev_f = np.abs(forces - ref_forces).max() / max(np.abs(ref_forces).max(), 1e-12)
    return float(max(dev_e, dev_f))


def export(checkpoint: str, output: str, fmt: Optional[str] = None, device: str = "cpu", kernel: Optional[str] = None) -> str:
    """Writes the artifact to `output` (atomically) and returns its path. `kernel`: Allegro's tensor-product
    implementation: "torch" (default; inductor's own kernels in AOTInductor) or "fused", the C++ operator
    vivace::channelwise_tp (Allegro on a CPU), opt-in until it beats them at every thread count
    (benchmarks/kernel_speed.py: 0.94-1.08x of their speed at 1 thread, 0.70-0.92x at 2)."""
    ext = os.path.splitext(output)[1]
    fmt = fmt or FORMATS.get(ext)
    if fmt not in ("aotinductor", "torchscript"):
        raise ExportError(f"cannot tell the artifact format of '{output}': use a .pt2 or .pth name, or --format")
    if FORMATS.get(ext) != fmt:
        raise ExportError(f"a {fmt} artifact must be named *{'.pt2' if fmt == 'aotinductor' else '.pth'}")
    if device not in ("cpu", "cuda"):
        raise ExportError(f"unknown device '{device}' (cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda needs a CUDA build of torch and a visible GPU")

    model, spec = model_from_checkpoint(load_checkpoint(checkpoint))
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    kernel = kernel or "torch"
    if kernel != "torch":
        if not hasattr(model, "use_kernel"):
            raise ExportError(f"a {spec['kind']} model has no '{kernel}' kernel (only Allegro's tensor product has)")
        if device != "cpu":
            raise ExportError(f"the '{kernel}' kernel runs on a CPU only; export with --kernel torch for {device}")
        model.use_kernel(kernel)
    wrapper = EdgeForceModel(model).eval()
    metadata = artifact_metadata(model, spec, device, fmt, kernel)
    vectors, edge_index, types = random_graph(len(spec["type_names"]), float(spec["hyperparameters"]["r_max"]), 8, 0)
    example = _torch_inputs(vectors, edge_index, types, len(types), device)

    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(dir=folder, prefix=".export-")
    tmp = os.path.join(tmp_dir, "model" + ext)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            if fmt == "aotinductor":
                _compile_aotinductor(wrapper, example, metadata, tmp)
            else:
                _compile_torchscript(wrapper, metadata, tmp)
        deviation = check_artifact(tmp, wrapper, spec, device)
        print(f"vivace export: largest relative deviation of the artifact from the eager model: {deviation:.2e}")
        if not deviation <= TOLERANCE[spec["dtype"]]:
            raise ExportError(
                f"the exported artifact deviates from the eager model by {deviation:.2e} "
                f"(tolerance {TOLERANCE[spec['dtype']]:.0e} for {spec['dtype']}); nothing was written"
            )
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.rmdir(tmp_dir)
    return output
