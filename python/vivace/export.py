"""Export a checkpoint as an AOTInductor (.pt2) or TorchScript (.pth) artifact under the artifact contract."""

import os
import shutil
import tempfile
import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from . import __version__
from .calculators import atom_forces_of_edges
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import neighbor_graph
from .models import EdgeForceModel
from .models.exchange import exchange_programs, feature_widths, images_as_nodes
from .nn.execution import set_execution

CONTRACT_VERSION = 1
FORMATS = {".pt2": "aotinductor", ".pth": "torchscript", ".pt": "torchscript"}
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}  # largest relative deviation from the eager model allowed
TORCHSCRIPT_METADATA_FILE = "vivace_metadata.txt"


class ExportError(RuntimeError):
    pass


def artifact_metadata(
    model: torch.nn.Module, spec: Dict, device: str, fmt: str, kernel: str = "torch", exchange: bool = True
) -> Dict[str, str]:
    hyper = spec["hyperparameters"]
    r_cut = model.geometry.r_cut
    exchange = exchange and spec["kind"] == "nequip"
    return {
        "contract_version": str(CONTRACT_VERSION),
        "model_kind": spec["kind"],
        "type_names": " ".join(spec["type_names"]),
        "r_max": repr(float(hyper["r_max"])),
        "edge_type_cutoffs": "" if r_cut is None else " ".join(repr(float(c)) for c in r_cut.flatten()),
        "message_passing_depth": str(model.message_passing_depth),
        "edges_per_group": str(model.edges_per_group),
        "model_dtype": spec["dtype"],
        "units": spec.get("units", "metal"),
        # (center, neighbor) type pair -> the training data's shortest distance between such atoms; empty: unknown
        "shortest_distances": " ".join(repr(float(d)) for row in hyper.get("shortest_distances", []) for d in row),
        "device": device,
        "format": fmt,
        "tensor_product_kernel": kernel,
        # layers whose programs the artifact holds for ranks that exchange features, and their widths
        "exchange_layers": str(len(model.blocks)) if exchange else "0",
        "feature_widths": " ".join(str(w) for w in feature_widths(model)) if exchange else "",
        # each layer's radial weights per edge, the columns of exchange_radial's table
        "radial_widths": " ".join(str(w) for w in model.radial_widths()) if exchange else "",
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
    """Contiguous tensors: AOTInductor compiles for its example inputs' strides (numpy's a[:, mask] is
    column-major, and a program traced on it reads row-major edge indices wrongly)."""
    return tuple(
        torch.tensor(np.ascontiguousarray(a), dtype=dtype, device=device)
        for a, dtype in ((vectors, torch.float64), (edge_index, torch.int64), (types, torch.int64), (n_local, torch.int64))
    )


def _aoti_files(module, example, dynamic_shapes, options, build_dir):
    """AOTInductor's files for one program (traced symbolically, then exported with the given dynamic dims),
    built in build_dir: by default they go to a folder of the shared inductor cache named after the generated
    code, where a concurrent export of a model of the same architecture overwrites them while they are packaged."""
    from torch.fx.experimental.proxy_tensor import make_fx

    set_execution(module, "export")
    try:
        graph = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    finally:
        set_execution(module, "eager")
    program = torch.export.export(graph, example, dynamic_shapes=dynamic_shapes, strict=False)
    if example[0].device.type == "cpu":
        # inductor's sort has no CPU kernel and falls back to ATen's, but first guards its length below the
        # int16 index limit on the example's sizes: it would cap the edges of every graph at 32766 (NequIP's
        # reverse pairs sort the edges). The int32 indices of this option move that cap to 2^31 - 1.
        options = {**options, "triton.decompose_sort_ops": True}
    return torch._inductor.aot_compile(
        program.module(check_guards=False),
        example,
        options={**options, "aot_inductor.package": True, "aot_inductor.output_path": build_dir},
    )


def _compile_aotinductor(wrapper, example, metadata, path, programs=None):
    """The contract's program as "model" and the exchange programs under their own names, in one package."""
    from torch._inductor.package import package_aoti

    num_edges = torch.export.Dim("num_edges", min=1)
    num_nodes = torch.export.Dim("num_nodes", min=1)
    build = os.path.join(os.path.dirname(path), "build")
    files = {"model": _aoti_files(wrapper, example, ({0: num_edges}, {1: num_edges}, {0: num_nodes}, None),
                                  {"aot_inductor.metadata": metadata}, os.path.join(build, "model"))}  # fmt: skip
    for name, (module, inputs, dims) in (programs or {}).items():
        files[name] = _aoti_files(module, inputs, dims, {}, os.path.join(build, name))
    package_aoti(path, files)


class _TorchScriptArtifact(torch.nn.Module):
    """The contract's program as forward, the exchange programs as submodules under their names."""

    def __init__(self, wrapper, programs):
        super().__init__()
        self.contract = wrapper
        for name, module in programs.items():
            setattr(self, name, torch.jit.script(module))

    def forward(self, edge_vectors, edge_index, atom_types, n_local) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.contract(edge_vectors, edge_index, atom_types, n_local)


def _compile_torchscript(wrapper, metadata, path, programs=None):
    from .nn import kernels

    kernels.available()  # scripting resolves torch.ops.vivace.* in every branch, the fused kernel's included
    scripted = torch.jit.script(_TorchScriptArtifact(wrapper, {n: m for n, (m, _, _) in (programs or {}).items()}))
    text = "".join(f"{k}={v}\n" for k, v in metadata.items())
    torch.jit.save(scripted, path, _extra_files={TORCHSCRIPT_METADATA_FILE: text})


def exchange_examples(model: torch.nn.Module, spec: Dict, device: str) -> Dict[str, tuple]:
    """name -> (program, example inputs, dynamic dims) for every exchange program of a NequIP model: a
    graph of 11 centers and 7 other nodes, sizes that no fixed dimension of the model shares."""
    num_centers, num_others = 11, 7
    vectors, edge_index, types = random_graph(len(spec["type_names"]), float(spec["hyperparameters"]["r_max"]),
                                              num_centers + num_others, 2)  # fmt: skip
    keep = edge_index[0] < num_centers
    v, index, t, _ = _torch_inputs(vectors[keep], edge_index[:, keep], types, 0, device)
    graph = (v, index, t[:num_centers], t[num_centers:])
    edges, centers, others = (torch.export.Dim(n, min=1) for n in ("num_edges", "num_centers", "num_others"))
    graph_dims = ({0: edges}, {1: edges}, {0: centers}, {0: others})
    dtype = model.one_hot.dtype
    generator = torch.Generator().manual_seed(3)
    widths = feature_widths(model)

    def features(rows, width):
        return torch.randn(rows, width, generator=generator, dtype=dtype).to(device)

    programs, examples = exchange_programs(model), {}
    radial = programs["exchange_radial"].widths
    # the radial programs take rows of (vector, center type, neighbor type): here the graph's edges
    rows = torch.export.Dim("num_rows", min=1)
    row_graph = (v, t[index[0]], t[index[1]])
    row_dims = ({0: rows}, {0: rows}, {0: rows})
    examples["exchange_radial"] = (programs["exchange_radial"], row_graph, row_dims)
    for k, width in enumerate(widths):  # layer k reads h_k (none for k = 0) and gives h_k+1 of width `width`
        h = () if k == 0 else (features(num_centers, widths[k - 1]), features(num_others, widths[k - 1]))
        h_dims = () if k == 0 else ({0: centers}, {0: others})
        w, w_dims = (features(v.shape[0], radial[k]),), ({0: edges},)
        name = f"exchange_layer_{k}"
        examples[name] = (programs[name], graph + h + w, graph_dims + h_dims + w_dims)
        examples[name + "_vjp"] = (programs[name + "_vjp"], graph + h + w + (features(num_centers, width),),
                                   graph_dims + h_dims + w_dims + ({0: centers},))  # fmt: skip
    examples["exchange_readout"] = (programs["exchange_readout"], graph + (features(num_centers, widths[-1]),),
                                    graph_dims + ({0: centers},))  # fmt: skip
    examples["exchange_radial_vjp"] = (programs["exchange_radial_vjp"],
                                       row_graph + (features(v.shape[0], sum(radial)),), row_dims + ({0: rows},))
    return examples


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
    deviation = _relative_deviation(energy[:n_local], forces, ref_energy[:n_local], ref_forces)
    if model.exchanges_features:
        deviation = max(deviation, _check_exchange(model, wrapper, spec, device))
    return deviation


def _relative_deviation(energy, forces, ref_energy, ref_forces) -> float:
    dev_e = np.abs(energy - ref_energy).max() / max(np.abs(ref_energy).max(), 1e-12)
    dev_f = np.abs(forces - ref_forces).max() / max(np.abs(ref_forces).max(), 1e-12)
    return float(max(dev_e, dev_f))


def _check_exchange(model, wrapper, spec: Dict, device: str) -> float:
    """The exchange programs through the core, on a periodic cell whose images are nodes of their own,
    against the eager model on the same cell."""
    r_max = float(spec["hyperparameters"]["r_max"])
    rng = np.random.default_rng(4)
    cell = np.diag([1.2 * r_max, 1.3 * r_max, 1.1 * r_max])
    positions = rng.uniform(size=(9, 3)) @ cell
    types = np.arange(9, dtype=np.int64) % len(spec["type_names"])
    edge_index, shifts = neighbor_graph(positions, cell, [True] * 3, r_max)
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts
    images, owner = images_as_nodes(edge_index, shifts, len(types))
    energy, forces = model.evaluate_exchanging(vectors, images, np.concatenate([types, types[owner]]), len(types), owner)
    ref_energy, ref_forces = wrapper(*_torch_inputs(vectors, edge_index, types, len(types), device))
    # compared on the atoms: the radial MLP runs once per pair of reverse edges, and the whole graph's pairs (an
    # image of an atom being that atom) are not the programs' (an image being a node of its own), so a pair's
    # radial force may sit on either of its two edges
    on_atoms = lambda g: np.concatenate([atom_forces_of_edges(g, edge_index, len(types)), vectors.T @ g])  # noqa: E731
    return _relative_deviation(energy[: len(types)], on_atoms(forces), ref_energy.detach().cpu().numpy(),
                               on_atoms(ref_forces.detach().cpu().numpy()))  # fmt: skip


def default_kernel(model: torch.nn.Module, device: str) -> str:
    """"fused" where it runs (Allegro on a CPU, the operator library installed), else "torch"."""
    from .nn import kernels

    return "fused" if hasattr(model, "use_kernel") and device == "cpu" and kernels.available() else "torch"


def export(
    checkpoint: str,
    output: str,
    fmt: Optional[str] = None,
    device: str = "cpu",
    kernel: Optional[str] = None,
    exchange: bool = True,
) -> str:
    """Writes the artifact to `output` (atomically) and returns its path. `kernel`: the implementation of
    Allegro's tensor product and NequIP's convolution: "fused", the C++ operators vivace::channelwise_tp and
    vivace::nequip_conv (the default on a CPU), or "torch", PyTorch's (inductor's own kernels in AOTInductor;
    the default on a GPU).
    `exchange`: a NequIP artifact carries the layer programs with which LAMMPS ranks exchange features
    (models/exchange.py); without them it runs on one rank, or with `pair_style nequip shell`, and a .pt2
    compiles in a fraction of the time (4 layers, 32 features: 483 s with them on 2 cores)."""
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
    kernel = kernel or default_kernel(model, device)
    if kernel != "torch":
        if not hasattr(model, "use_kernel"):
            raise ExportError(f"a {spec['kind']} model has no '{kernel}' kernel")
        if device != "cpu":
            raise ExportError(f"the '{kernel}' kernel runs on a CPU only; export with --kernel torch for {device}")
        model.use_kernel(kernel)
    if device != "cpu" and hasattr(model, "share_reverse_pairs"):
        model.share_reverse_pairs = False  # inductor's GPU sort would cap the edges of a graph at 32766
    wrapper = EdgeForceModel(model).eval()
    metadata = artifact_metadata(model, spec, device, fmt, kernel, exchange)
    vectors, edge_index, types = random_graph(len(spec["type_names"]), float(spec["hyperparameters"]["r_max"]), 8, 0)
    example = _torch_inputs(vectors, edge_index, types, len(types), device)
    programs = exchange_examples(model, spec, device) if exchange and spec["kind"] == "nequip" else {}

    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(dir=folder, prefix=".export-")
    tmp = os.path.join(tmp_dir, "model" + ext)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            if fmt == "aotinductor":
                _compile_aotinductor(wrapper, example, metadata, tmp, programs)
            else:
                _compile_torchscript(wrapper, metadata, tmp, programs)
        deviation = check_artifact(tmp, wrapper, spec, device)
        print(f"vivace export: largest relative deviation of the artifact from the eager model: {deviation:.2e}")
        if not deviation <= TOLERANCE[spec["dtype"]]:
            raise ExportError(
                f"the exported artifact deviates from the eager model by {deviation:.2e} "
                f"(tolerance {TOLERANCE[spec['dtype']]:.0e} for {spec['dtype']}); nothing was written"
            )
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp_dir)
    return output
