"""Energy+forces time per call and peak memory: vivace's Allegro and NequIP against upstream's.

    python benchmarks/model_speed.py [--upstream-python /path/to/venv/bin/python] [--threads 1 2]

Structure: frame 0 of ../shared/data/water192 (192 atoms, periodic) and its 2x2x2 and 4x4x4 supercells (1536
and 12288 atoms). Every case runs in its own process (so peak memory is that case's alone), at each thread
count, ours and upstream's processes alternated over --rounds; the comparison is each code's best (its
fastest thread count and mode) against the other's best. Memory is the peak resident size during the calls (warm-up included) over the resident
size before them (model loaded, inputs built). Ours: "eager" is the PyTorch model through the artifact contract (edge forces by
autograd); "compiled" is the AOTInductor artifact made by `vivace export`, run through the C++ core that
LAMMPS uses. Upstream (PyPI nequip / nequip-allegro, in its own virtualenv): benchmarks/upstream_model_speed.py,
eager and its own compiled path. Time is the median of --repeats calls after two warm-up calls. For Allegro,
the FLOPs of a call are counted by hand (kernel_speed.allegro_flops) and our best rate is given as a share of
the machine's peak at its thread count.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "water192", "data_0")
TYPE_NAMES = ["H", "O"]
HYPER = {
    "allegro": dict(
        r_max=5.0,
        l_max=2,
        parity=True,
        num_layers=2,
        num_scalar_features=64,
        num_tensor_features=32,
        two_body_hidden=[64],
        latent_hidden=[64],
        readout_hidden=[32],
    ),
    # upstream NequIP's default radial MLP is one hidden layer of 128
    "nequip": dict(r_max=5.0, l_max=2, parity=True, num_layers=4, num_features=32, radial_hidden=[128]),
}


def water(supercell: int):
    import numpy as np
    from ase import Atoms

    type_map = open(os.path.join(DATA, "type_map.raw")).read().split()
    types = np.loadtxt(os.path.join(DATA, "type.raw"), dtype=int)
    coord = np.load(os.path.join(DATA, "set.000", "coord.npy"))[0].reshape(-1, 3)
    box = np.load(os.path.join(DATA, "set.000", "box.npy"))[0].reshape(3, 3)
    atoms = Atoms([type_map[t] for t in types], positions=coord, cell=box, pbc=True)
    return atoms.repeat((supercell,) * 3)


class ResidentPeak:
    """Peak resident memory from now on over the resident size now, in MB (Linux /proc)."""

    def __init__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark VmHWM to the current resident size
        self.start = self._status("VmRSS:")

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024

    def rise(self) -> float:
        return self._status("VmHWM:") - self.start


def checkpoint_for(kind: str, dtype: str, folder: str) -> str:
    import torch

    from vivace.checkpoint import save_checkpoint
    from vivace.models import build_model

    torch.manual_seed(0)
    hyper = dict(HYPER[kind], avg_num_neighbors=40.0)
    model = build_model(kind, hyper, TYPE_NAMES, dtype)
    spec = {"kind": kind, "hyperparameters": hyper, "type_names": TYPE_NAMES, "dtype": dtype, "units": "metal"}
    path = os.path.join(folder, f"{kind}-{dtype}.ckpt")
    save_checkpoint(path, {"model": spec, "state_dict": model.state_dict()})
    return path


def worker(args) -> dict:
    """One case in this process: prints one JSON line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from vivace.calculators import load_backend
    from vivace.data import neighbor_graph

    atoms = water(args.supercell)
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, HYPER[args.model]["r_max"])
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)
    backend = load_backend(args.artifact if args.mode == "compiled" else args.checkpoint)
    if args.mode == "compiled":
        from vivace import _core

        _core.keep_freed_memory_for_reuse()  # as the LAMMPS pair style does
    if args.mode == "eager":
        for p in backend.model.parameters():
            p.requires_grad_(False)

    def call():
        return backend.evaluate(vectors, edge_index, types, len(atoms))

    peak = ResidentPeak()
    call()
    call()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    memory = peak.rise()
    return {
        "model": args.model,
        "dtype": args.dtype,
        "mode": args.mode,
        "atoms": len(atoms),
        "edges": int(edge_index.shape[1]),
        "seconds_per_call": statistics.median(times),
        "peak_memory_mb": memory,
    }


def run_json(command) -> dict:
    out = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1])


def combine(results) -> dict:
    """One case measured in several alternated rounds: the median of the rounds' medians, the largest memory."""
    good = [r for r in results if "seconds_per_call" in r]
    if not good:
        return results[-1] if results else {"error": "not run"}
    return dict(good[0], seconds_per_call=statistics.median(r["seconds_per_call"] for r in good),
                peak_memory_mb=max(r["peak_memory_mb"] for r in good), rounds=len(good))  # fmt: skip


def flops_of(kind: str, checkpoint: str, edges: int):
    """Hand-counted FLOPs of one energy+forces call (kernel_speed.allegro_flops); None for NequIP."""
    if kind != "allegro":
        return None
    from kernel_speed import allegro_flops

    from vivace.checkpoint import load_checkpoint, model_from_checkpoint

    return allegro_flops(model_from_checkpoint(load_checkpoint(checkpoint))[0], edges)


def main():
    if "--worker" in sys.argv:
        case = argparse.ArgumentParser()
        for key in ("model", "mode", "dtype", "checkpoint", "artifact"):
            case.add_argument(f"--{key}")
        for key in ("supercell", "threads", "repeats"):
            case.add_argument(f"--{key}", type=int)
        case.add_argument("--worker", action="store_true")
        print(json.dumps(worker(case.parse_args())), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="each code runs at each; best vs best")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process, after two warm-up calls")
    parser.add_argument("--rounds", type=int, default=2, help="processes per case, ours and upstream's alternated")
    parser.add_argument("--models", nargs="+", default=["allegro", "nequip"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--supercells", nargs="+", type=int, default=[1, 2, 4], help="of the 192-atom cell")
    parser.add_argument("--peak-gflops", type=float, default=41.6, help="float64 peak per core (see kernel_speed.py)")
    parser.add_argument("--upstream-python", default=os.environ.get("UPSTREAM_PYTHON", "/work/upstream-venv/bin/python"))
    parser.add_argument(
        "--upstream-compiled-supercells", nargs="*", type=int, default=[1, 2],
        help="supercells for which upstream's compiled path is measured (its first compile takes minutes)",
    )
    parser.add_argument(
        "--upstream-eager-supercells", nargs="*", type=int, default=[1, 2],
        help="supercells for which upstream's eager path is measured (its Allegro float32 peak is 9.8 GB at 1536 "
             "atoms and grows with the edges: about 78 GB at 12288)",
    )  # fmt: skip
    args = parser.parse_args()

    if not os.path.isdir(DATA):
        sys.exit(f"model_speed: {DATA} not found (the shared water192 data is needed)")
    upstream = os.path.exists(args.upstream_python)
    if not upstream:
        print(f"model_speed: no upstream interpreter at {args.upstream_python}; upstream columns left empty")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        from vivace.export import export

        for kind in args.models:
            for dtype in args.dtypes:
                checkpoint = checkpoint_for(kind, dtype, folder)
                start = time.perf_counter()
                # NequIP's layer programs serve graphs above 2^17 edges (the 12288-atom cell) and MPI ranks: below,
                # the core runs the whole program, so smaller runs skip compiling them (about half the export)
                artifact = export(checkpoint, os.path.join(folder, f"{kind}-{dtype}.pt2"), exchange=max(args.supercells) > 2)
                print(f"model_speed: exported {kind} {dtype} in {time.perf_counter() - start:.0f} s", flush=True)
                for supercell in args.supercells:
                    row = {"model": kind, "dtype": dtype, "supercell": supercell, "cases": {}}
                    for threads in args.threads:
                        for mode in ("eager", "compiled"):
                            common = ["--model", kind, "--dtype", dtype, "--mode", mode, "--supercell", str(supercell)]
                            common += ["--threads", str(threads), "--repeats", str(args.repeats)]
                            ours_cmd = [sys.executable, __file__, "--worker", "--checkpoint", checkpoint,
                                        "--artifact", artifact] + common  # fmt: skip
                            theirs_cmd = None
                            wanted = args.upstream_eager_supercells if mode == "eager" else args.upstream_compiled_supercells
                            if upstream and supercell in wanted:
                                theirs_cmd = [args.upstream_python, os.path.join(HERE, "upstream_model_speed.py")]
                                theirs_cmd += common + ["--data-dir", DATA, "--artifact-dir", folder]
                            ours, theirs = [], []
                            for _ in range(args.rounds):  # alternated: ours, upstream's, ours, ...
                                ours.append(run_json(ours_cmd))
                                if theirs_cmd:
                                    theirs.append(run_json(theirs_cmd))
                            row["cases"][("ours", mode, threads)] = combine(ours)
                            row["cases"][("upstream", mode, threads)] = combine(theirs)
                            print(f"model_speed: {kind} {dtype} x{supercell} {mode} {threads} threads: ours "
                                  f"{row['cases'][('ours', mode, threads)]} | upstream "
                                  f"{row['cases'][('upstream', mode, threads)]}", flush=True)  # fmt: skip
                    edges = next((c["edges"] for c in row["cases"].values() if "edges" in c), None)
                    row["flops"] = flops_of(kind, checkpoint, edges) if edges else None
                    rows.append(row)
    print_table(rows, args)


def print_table(rows, args):
    def best(row, code):
        timed = [(c["seconds_per_call"], mode, threads) for (who, mode, threads), c in row["cases"].items()
                 if who == code and "seconds_per_call" in c]  # fmt: skip
        return min(timed) if timed else None

    def cell(row, code, mode, threads):
        c = row["cases"].get((code, mode, threads), {})
        return f"{1000 * c['seconds_per_call']:9.1f}" if "seconds_per_call" in c else f"{'-':>9}"

    def memory(row, code):
        found = [c["peak_memory_mb"] for (who, _, _), c in row["cases"].items() if who == code and "peak_memory_mb" in c]
        return min(found) if found else None

    threads = args.threads
    print(f"\nenergy+forces per call in ms (median over {args.rounds} alternated processes of the median of "
          f"{args.repeats} calls); each code at {', '.join(map(str, threads))} threads, eager and compiled "
          "(ours: AOTInductor through the C++ core); the speed-up is upstream's best over ours, whatever threads and "
          "mode each took; memory: the smallest peak MB over the resident size before the calls")  # fmt: skip
    head = f"{'model':8} {'dtype':8} {'atoms':>5} {'edges':>7} |"
    for code in ("ours", "upstream"):
        for mode in ("eager", "compiled"):
            for t in threads:
                head += f" {code[:2]} {mode[:4]} {t}t".rjust(10)
        head += " |"
    head += "  ours best       upstream best    speed-up | GFLOP/s %peak | memory ratio"
    print(head)
    for row in rows:
        ref = next((c for c in row["cases"].values() if "atoms" in c), {})
        line = f"{row['model']:8} {row['dtype']:8} {ref.get('atoms', '-'):>5} {ref.get('edges', '-'):>7} |"
        for code in ("ours", "upstream"):
            for mode in ("eager", "compiled"):
                for t in threads:
                    line += " " + cell(row, code, mode, t)
            line += " |"
        ours, theirs = best(row, "ours"), best(row, "upstream")
        describe = lambda b: f"{1000 * b[0]:8.1f} {b[1][:4]} {b[2]}t" if b else f"{'-':>16}"  # noqa: E731
        ratio = f"{theirs[0] / ours[0]:6.1f}x" if ours and theirs else f"{'-':>7}"
        line += f" {describe(ours)}  {describe(theirs)}  {ratio} |"
        if row["flops"] and ours:
            rate = row["flops"] / ours[0] / 1e9
            peak = args.peak_gflops * ours[2] * (2 if row["dtype"] == "float32" else 1)
            line += f" {rate:7.1f} {100 * rate / peak:4.0f}% |"
        else:
            line += f" {'-':>7} {'-':>5} |"
        mo, mu = memory(row, "ours"), memory(row, "upstream")
        line += f" {mu / max(mo, 1):6.1f}x" if mo and mu else "      -"
        print(line)


if __name__ == "__main__":
    main()
