"""Allegro's tensor product: the fused C++ operator (vivace::channelwise_tp) against PyTorch's (inductor's
kernels in the AOTInductor artifact), in the same model, through the C++ core that LAMMPS uses.

    python benchmarks/kernel_speed.py [--threads 1 2] [--dtypes float32 float64] [--atoms 192 1536 12288]

Model: model_speed.py's Allegro (r_max 5, l_max 2 with parity, 2 layers, 64 scalar / 32 tensor features),
random weights, exported twice to .pt2 (`vivace export --kernel fused` and `--kernel torch`). Structure: a
rattled fcc Al-Cu alloy at 3.7 A (lammps_speed.py's), about 52 edges per atom. For each thread count the two
artifacts' energy+forces calls alternate (fused, torch, fused, ...), each timed; the table gives medians.

FLOPs of one energy+forces call are counted by hand from the model's structure (useful work only: every
linear layer's multiply-adds forward and backward to its input, and the tensor products' entries times
channels, 3 FLOPs per entry forward and 5 backward; activations, gathers and scatters not counted), so the
achieved GFLOP/s can be set against the machine's peak (--peak-gflops per core, float64; float32 twice that).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from lammps_speed import alloy  # noqa: E402
from machine import cpu_name  # noqa: E402
from model_speed import HYPER  # noqa: E402

TYPES = ["Al", "Cu"]


def checkpoint(dtype: str, folder: str) -> str:
    import torch

    from vivace.checkpoint import save_checkpoint
    from vivace.models import build_model

    torch.manual_seed(0)
    hyper = dict(HYPER["allegro"], avg_num_neighbors=50.0)
    model = build_model("allegro", hyper, TYPES, dtype)
    spec = {"kind": "allegro", "hyperparameters": hyper, "type_names": TYPES, "dtype": dtype, "units": "metal"}
    path = os.path.join(folder, f"allegro-{dtype}.ckpt")
    save_checkpoint(path, {"model": spec, "state_dict": model.state_dict()})
    return path


def allegro_flops(model, num_edges: int) -> float:
    """FLOPs of one energy+forces call of an Allegro model on num_edges edges (see the module docstring)."""
    from vivace.nn import Linear
    from vivace.nn.tensor_product import ChannelwiseTensorProduct

    per_edge = 0.0
    for module in model.modules():
        if isinstance(module, Linear):
            fan_in, fan_out = module.weight.shape
            per_edge += 2 * 2 * fan_in * fan_out  # forward, and backward to the input
        elif isinstance(module, ChannelwiseTensorProduct):
            per_edge += (3 + 5) * module.contraction.entries.shape[1] * module.weight.shape[1]
    return per_edge * num_edges


def graph(atoms_count: int, r_max: float):
    from vivace.data import neighbor_graph

    atoms = alloy(atoms_count)
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, r_max)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    types = np.array([TYPES.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)
    return vectors, edge_index, types, len(atoms)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--atoms", nargs="+", type=int, default=[192, 1536, 12288])
    parser.add_argument("--rounds", type=int, default=5, help="calls of each artifact per case, alternated")
    parser.add_argument("--peak-gflops", type=float, default=41.6,
                        help="float64 peak per core (AMD EPYC Zen 4 at 2.6 GHz: 2 x 256-bit FMA = 16 FLOP/cycle)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "kernel_speed.txt"))
    args = parser.parse_args(argv)

    import torch

    from vivace import _core
    from vivace.checkpoint import load_checkpoint, model_from_checkpoint
    from vivace.export import export

    _core.keep_freed_memory_for_reuse()  # as the LAMMPS pair style does
    lines = [f"# python benchmarks/kernel_speed.py --threads {' '.join(map(str, args.threads))} --dtypes "
             f"{' '.join(args.dtypes)} --atoms {' '.join(map(str, args.atoms))} --rounds {args.rounds}   "
             f"({time.strftime('%Y-%m-%d')}, {cpu_name()}, torch {torch.__version__})",
             "# energy+forces per call through the C++ core (AOTInductor .pt2), median of the alternated calls; "
             "GFLOP/s from the hand count, % of peak at that thread count",
             f"{'dtype':<8} {'atoms':>6} {'edges':>8} {'threads':>7} {'GFLOP':>7} | {'fused ms':>9} {'GFLOP/s':>8} "
             f"{'%peak':>6} | {'torch ms':>9} {'GFLOP/s':>8} {'%peak':>6} | {'torch/fused':>11}"]  # fmt: skip
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for dtype in args.dtypes:
            ckpt = checkpoint(dtype, folder)
            model, _ = model_from_checkpoint(load_checkpoint(ckpt))
            artifacts = {k: export(ckpt, os.path.join(folder, f"{dtype}-{k}.pt2"), kernel=k) for k in ("fused", "torch")}
            for atoms_count in args.atoms:
                vectors, edge_index, types, n = graph(atoms_count, HYPER["allegro"]["r_max"])
                flops = allegro_flops(model, edge_index.shape[1])
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    models = {k: _core.Model(path, -1) for k, path in artifacts.items()}
                    times = {k: [] for k in models}
                    for k, m in models.items():  # warm-up
                        m.evaluate(vectors, edge_index, types, n)
                    for _ in range(args.rounds):
                        for k, m in models.items():
                            start = time.perf_counter()
                            m.evaluate(vectors, edge_index, types, n)
                            times[k].append(time.perf_counter() - start)
                    peak = args.peak_gflops * threads * (2 if dtype == "float32" else 1)
                    cells = []
                    for k in ("fused", "torch"):
                        t = statistics.median(times[k])
                        cells.append(f"{1000 * t:9.1f} {flops / t / 1e9:8.2f} {100 * flops / t / 1e9 / peak:5.1f}%")
                    ratio = statistics.median(times["torch"]) / statistics.median(times["fused"])
                    line = (f"{dtype:<8} {n:>6} {edge_index.shape[1]:>8} {threads:>7} {flops / 1e9:7.2f} | "
                            f"{cells[0]} | {cells[1]} | {ratio:10.2f}x")  # fmt: skip
                    print(line, flush=True)
                    lines.append(line)
                    del models
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
