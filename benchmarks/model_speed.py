"""Energy+forces time per call and peak memory: vivace's Allegro and NequIP against upstream's.

    python benchmarks/model_speed.py [--upstream-python /path/to/venv/bin/python] [--threads 2]

Structure: frame 0 of ../shared/data/water192 (192 atoms, periodic) and its 2x2x2 supercell (1536 atoms).
Every case runs in its own process (so peak memory is that case's alone), one after the other, with the
same thread count. Memory is the peak resident size during the calls (warm-up included) over the resident
size before them (model loaded, inputs built). Ours: "eager" is the PyTorch model through the artifact contract (edge forces by
autograd); "compiled" is the AOTInductor artifact made by `vivace export`, run through the C++ core that
LAMMPS uses. Upstream (PyPI nequip / nequip-allegro, in its own virtualenv): benchmarks/upstream_model_speed.py,
eager and its own compiled path. Time is the median of --repeats calls after two warm-up calls. The ratio columns are upstream's best (the
faster of eager and compiled; the smaller memory) over ours.
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["allegro", "nequip"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--supercells", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--upstream-python", default=os.environ.get("UPSTREAM_PYTHON", "/work/upstream-venv/bin/python"))
    parser.add_argument(
        "--upstream-compiled-supercells", nargs="+", type=int, default=[1, 2],
        help="supercells for which upstream's compiled path is measured (its first compile takes minutes)",
    )
    args = parser.parse_args()

    if not os.path.isdir(DATA):
        sys.exit(f"model_speed: {DATA} not found (the shared water192 data is needed)")
    upstream = os.path.exists(args.upstream_python)
    if not upstream:
        print(f"model_speed: no upstream interpreter at {args.upstream_python}; upstream columns left empty")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        from vivace.export import export

        for kind in args.models:
            for dtype in args.dtypes:
                checkpoint = checkpoint_for(kind, dtype, folder)
                start = time.perf_counter()
                artifact = export(checkpoint, os.path.join(folder, f"{kind}-{dtype}.pt2"))
                print(f"model_speed: exported {kind} {dtype} in {time.perf_counter() - start:.0f} s", flush=True)
                for supercell in args.supercells:
                    row = {"model": kind, "dtype": dtype, "supercell": supercell}
                    for mode in ("eager", "compiled"):
                        common = ["--model", kind, "--dtype", dtype, "--mode", mode, "--supercell", str(supercell)]
                        common += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
                        ours = run_json(
                            [sys.executable, __file__, "--worker", "--checkpoint", checkpoint, "--artifact", artifact]
                            + common
                        )
                        if mode == "compiled" and supercell not in args.upstream_compiled_supercells:
                            upstream_args = None
                        else:
                            upstream_args = common + ["--data-dir", DATA, "--artifact-dir", folder]
                        theirs = (
                            run_json([args.upstream_python, os.path.join(HERE, "upstream_model_speed.py")] + upstream_args)
                            if upstream and upstream_args
                            else {"error": "not run"}
                        )
                        row[f"ours_{mode}"], row[f"upstream_{mode}"] = ours, theirs
                        print(f"model_speed: {kind} {dtype} x{supercell} {mode}: ours {ours} | upstream {theirs}", flush=True)
                    rows.append(row)
    print_table(rows, args.threads)


def print_table(rows, threads):
    def t(case):
        return f"{1000 * case['seconds_per_call']:9.1f}" if "seconds_per_call" in case else f"{'-':>9}"

    def m(case):
        return f"{case['peak_memory_mb']:8.0f}" if "peak_memory_mb" in case else f"{'-':>8}"

    print(f"\nenergy+forces per call, {threads} threads; ms, and peak MB over the resident size before the calls")
    header = "model    dtype    atoms  edges | ours eager ms  MB | ours AOTI ms  MB | upstr eager ms  MB | upstr comp ms  MB | speed-up (best/best, per mode) | memory ratio"
    print(header)
    for row in rows:
        oe, oc, ue, uc = (row[k] for k in ("ours_eager", "ours_compiled", "upstream_eager", "upstream_compiled"))
        ref = oe if "atoms" in oe else oc
        best_up = min((c["seconds_per_call"] for c in (ue, uc) if "seconds_per_call" in c), default=None)
        mem_up = min((c["peak_memory_mb"] for c in (ue, uc) if "peak_memory_mb" in c), default=None)
        ratios = []
        for ours in (oe, oc):
            ratios.append(f"{best_up / ours['seconds_per_call']:5.1f}x" if best_up and "seconds_per_call" in ours else "   - ")
        mem_ours = min((c["peak_memory_mb"] for c in (oe, oc) if "peak_memory_mb" in c), default=None)
        mem_ratio = f"{mem_up / max(mem_ours, 1):5.1f}x" if mem_up and mem_ours else "  -"
        print(
            f"{row['model']:8s} {row['dtype']:8s} {ref.get('atoms', '-'):>5} {ref.get('edges', '-'):>6} |"
            f"{t(oe)} {m(oe)} |{t(oc)} {m(oc)} |{t(ue)} {m(ue)} |{t(uc)} {m(uc)} | "
            f"eager {ratios[0]} AOTI {ratios[1]} | {mem_ratio}"
        )


if __name__ == "__main__":
    main()
