"""Speed benchmark of the upstream NequIP / Allegro models (mir-group `nequip`,
`nequip-allegro` from PyPI) on the water192 structure, for comparison with vivace.

Runs in a separate virtualenv that has the upstream packages (NOT vivace's), e.g.

    /work/upstream-venv/bin/python benchmarks/upstream_model_speed.py \
        --model allegro --dtype float32 --mode eager --supercell 1 --threads 2 --repeats 3

Prints one JSON line on stdout. Everything else (warnings, logs) goes to stderr.

What is timed: one call of the upstream model on an AtomicDataDict that already
holds the neighbor list, i.e. exactly what `nequip.integrations.ase.NequIPCalculator
.call_model` runs: total energy + forces (+ virial/stress, which the upstream
ForceStressOutput / `--target ase` AOTI artifact always produce for a periodic cell).
The input is built by the calculator's own path (`from_ase` + the
`ChemicalSpeciesToAtomTypeMapper` and `NeighborListTransform` transforms from
`nequip.integrations.utils.basic_transforms`, matscipy neighbor list backend).

Modes:
  eager    -- the `GraphModel` returned by the upstream model builder.
  compiled -- AOTInductor: the same code path as `nequip-compile --mode aotinductor
              --target ase --device cpu` (`nequip.utils.aot.aot_export_model`), loaded
              back with `nequip.model.inference_models.load_compiled_model` (what
              `NequIPCalculator.from_compiled_model` uses). If that fails, falls back
              to upstream's torch.compile wrapper (`compile_mode="compile"`,
              `CompileGraphModel`). The JSON field "compiled_with" says which.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

DATA_DIR_DEFAULT = "/work/shared/data/water192/data_0"
TYPE_NAMES = ["H", "O"]
R_MAX = 5.0


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def load_atoms(data_dir, supercell):
    import ase

    type_map = open(os.path.join(data_dir, "type_map.raw")).read().split()
    types = np.loadtxt(os.path.join(data_dir, "type.raw"), dtype=int).reshape(-1)
    coord = np.load(os.path.join(data_dir, "set.000", "coord.npy"))[0].reshape(-1, 3)
    box = np.load(os.path.join(data_dir, "set.000", "box.npy"))[0].reshape(3, 3)
    symbols = [type_map[t] for t in types]
    atoms = ase.Atoms(symbols=symbols, positions=coord, cell=box, pbc=True)
    if supercell != 1:
        atoms = atoms.repeat((supercell, supercell, supercell))
    return atoms


def make_data(atoms):
    """AtomicDataDict via the upstream ASE-calculator data path."""
    from nequip.data import AtomicDataDict, from_ase
    from nequip.integrations.utils import basic_transforms

    transforms = basic_transforms(
        metadata={},
        r_max=R_MAX,
        type_names=TYPE_NAMES,
        chemical_species_to_atom_type_map={t: t for t in TYPE_NAMES},
    )
    data = from_ase(atoms)
    for t in transforms:
        data = t(data)
    data = AtomicDataDict.to_(data, "cpu")
    return data


def build_allegro(model_dtype, avg_num_neighbors, compile_mode="eager"):
    from allegro.model import AllegroModel

    return AllegroModel(
        seed=123,
        model_dtype=model_dtype,
        type_names=TYPE_NAMES,
        compile_mode=compile_mode,
        r_max=R_MAX,
        l_max=2,
        parity=True,
        # upstream defaults of TwoBodyBesselScalarEmbed, written out explicitly
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 8,
            "bessel_trainable": False,
            "polynomial_cutoff_p": 6,
        },
        radial_chemical_embed_dim=64,  # default None -> num_scalar_features
        scalar_embed_mlp_hidden_layers_depth=1,
        scalar_embed_mlp_hidden_layers_width=64,
        scalar_embed_mlp_nonlinearity="silu",
        num_layers=2,
        num_scalar_features=64,
        num_tensor_features=32,
        allegro_mlp_hidden_layers_depth=1,
        allegro_mlp_hidden_layers_width=64,
        allegro_mlp_nonlinearity="silu",
        tp_path_channel_coupling=True,
        readout_mlp_hidden_layers_depth=1,
        readout_mlp_hidden_layers_width=32,
        readout_mlp_nonlinearity="silu",
        avg_num_neighbors=avg_num_neighbors,
        per_type_energy_scales={"H": 1.0, "O": 1.0},
        per_type_energy_shifts={"H": 0.0, "O": 0.0},
    )


def build_nequip(model_dtype, avg_num_neighbors, compile_mode="eager"):
    from nequip.model import NequIPGNNModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NequIPGNNModel(
            seed=123,
            model_dtype=model_dtype,
            type_names=TYPE_NAMES,
            compile_mode=compile_mode,
            r_max=R_MAX,
            num_layers=4,
            l_max=2,
            parity=True,
            num_features=32,
            # remaining args at their upstream defaults, written out explicitly
            type_embed_num_features=None,  # -> num_features[0] = 32
            radial_mlp_depth=1,
            radial_mlp_width=128,
            num_bessels=8,
            bessel_trainable=False,
            polynomial_cutoff_p=6,
            readout_mlp_hidden_layers_depth=0,
            avg_num_neighbors=avg_num_neighbors,
            per_type_energy_scales={"H": 1.0, "O": 1.0},
            per_type_energy_shifts={"H": 0.0, "O": 0.0},
        )


def aoti_compile(model, data, out_path):
    """Same steps as `nequip-compile --mode aotinductor --target ase --device cpu`.

    If `out_path` already exists it is loaded instead of recompiled."""
    import torch
    from nequip.data import AtomicDataDict
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT, AOTI_ASE_TARGET
    from nequip.utils.aot import aot_export_model
    from nequip.utils.aoti_metadata import (
        NEQUIP_AOTI_INPUTS_KEY,
        NEQUIP_AOTI_OUTPUTS_KEY,
        serialize_aoti_keys,
    )
    from nequip.utils.global_state import get_latest_global_state
    from nequip.model.inference_models import load_compiled_model

    tdict = COMPILE_TARGET_DICT[AOTI_ASE_TARGET]
    input_fields, output_fields = list(tdict["input"]), list(tdict["output"])
    batch_map = {
        "graph": torch.export.Dim.STATIC,
        "node": torch.export.dynamic_shapes.Dim("num_nodes", min=2, max=torch.inf),
        "edge": torch.export.dynamic_shapes.Dim("num_edges", min=2, max=torch.inf),
    }
    batch_map = tdict["batch_map_settings"](batch_map)
    cdata = tdict["data_settings"]({k: v.clone() for k, v in data.items()})

    metadata = model.metadata.copy()
    metadata.update(get_latest_global_state(only_metadata_related=True))
    metadata = {k: str(int(v)) if isinstance(v, bool) else v for k, v in metadata.items()}
    metadata[NEQUIP_AOTI_INPUTS_KEY] = serialize_aoti_keys(input_fields)
    metadata[NEQUIP_AOTI_OUTPUTS_KEY] = serialize_aoti_keys(output_fields)
    metadata = {k: str(v) for k, v in metadata.items()}

    if os.path.exists(out_path):
        cmodel, _ = load_compiled_model(out_path, "cpu", input_fields, output_fields)
        return cmodel
    aot_export_model(
        model=model,
        device="cpu",
        input_fields=input_fields,
        output_fields=output_fields,
        data=AtomicDataDict.to_(cdata, "cpu"),
        batch_map=batch_map,
        output_path=out_path,
        inductor_configs={"aot_inductor.metadata": metadata},
        constant_fold=False,
        seed=1,
    )
    cmodel, _ = load_compiled_model(out_path, "cpu", input_fields, output_fields)
    return cmodel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["allegro", "nequip"], required=True)
    p.add_argument("--dtype", choices=["float32", "float64"], required=True)
    p.add_argument("--mode", choices=["eager", "compiled"], default="eager")
    p.add_argument("--supercell", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--data-dir", default=DATA_DIR_DEFAULT)
    p.add_argument(
        "--artifact-dir",
        default=None,
        help="keep/reuse the AOTI .nequip.pt2 here (keyed by model, dtype, threads: "
        "inductor bakes the OpenMP thread count in at compile time); default: temp dir",
    )
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import importlib.metadata as im
    from nequip.data import AtomicDataDict
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)

    versions = {
        pkg: im.version(pkg)
        for pkg in ("nequip", "nequip-allegro", "torch", "e3nn", "ase", "matscipy")
    }

    atoms = load_atoms(args.data_dir, args.supercell)
    data = make_data(atoms)
    n_atoms = AtomicDataDict.num_nodes(data)
    n_edges = int(data[AtomicDataDict.EDGE_INDEX_KEY].shape[1])
    # upstream configs set avg_num_neighbors from training-data statistics
    # (`${training_data_stats:num_neighbors_mean}`); use this structure's mean
    avg_num_neighbors = n_edges / n_atoms

    builder = build_allegro if args.model == "allegro" else build_nequip
    model = builder(args.dtype, avg_num_neighbors)
    model.eval()

    compiled_with = None
    compile_seconds = None
    compile_error = None
    run_model = model
    tmp = None
    if args.mode == "compiled":
        if args.artifact_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="upstream_aoti_")
            adir = tmp.name
        else:
            adir = args.artifact_dir
            os.makedirs(adir, exist_ok=True)
        pt2 = os.path.join(
            adir, f"{args.model}_{args.dtype}_t{args.threads}.nequip.pt2"
        )
        reused = os.path.exists(pt2)
        t0 = time.perf_counter()
        try:
            run_model = aoti_compile(model, data, pt2)
            compiled_with = "aotinductor (nequip.utils.aot.aot_export_model, target=ase)"
            if reused:
                compiled_with += " [reused artifact]"
        except Exception as e:  # fall back to torch.compile
            compile_error = f"AOTI failed: {type(e).__name__}: {e}"[:500]
            _log(traceback.format_exc())
            run_model = builder(args.dtype, avg_num_neighbors, compile_mode="compile")
            run_model.eval()
            compiled_with = "torch.compile (nequip CompileGraphModel)"
        compile_seconds = time.perf_counter() - t0

    def call():
        out = run_model(dict(data))
        e = out[AtomicDataDict.TOTAL_ENERGY_KEY]
        f = out[AtomicDataDict.FORCE_KEY]
        return e, f

    # peak resident memory of the calls (warm-up included) over the resident size before them
    import gc

    gc.collect()
    _reset_hwm()
    rss0 = _status_kb("VmRSS")

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        e, f = call()
    warmup_seconds = time.perf_counter() - t0
    if compile_seconds is not None and compiled_with.startswith("torch.compile"):
        compile_seconds += warmup_seconds

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        e, f = call()
        times.append(time.perf_counter() - t0)

    hwm = _status_kb("VmHWM")
    peak_mb = (hwm - rss0) / 1024.0

    result = {
        "model": args.model,
        "dtype": args.dtype,
        "mode": args.mode,
        "atoms": int(n_atoms),
        "edges": n_edges,
        "seconds_per_call": statistics.median(times),
        "times": times,
        "peak_memory_mb": round(peak_mb, 2),
        "compiled_with": compiled_with,
        "compile_seconds": compile_seconds,
        "compile_error": compile_error,
        "threads": args.threads,
        "supercell": args.supercell,
        "avg_num_neighbors": avg_num_neighbors,
        "energy": float(e.detach().reshape(-1)[0]),
        "energy_dtype": str(e.dtype),
        "forces_dtype": str(f.dtype),
        "num_params": int(sum(p.numel() for p in model.parameters())),
        "upstream_versions": versions,
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
