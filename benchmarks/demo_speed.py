"""The demo's LAMMPS MD speed with each tensor-product kernel, with the short-pair check off and without the
ZBL core, side by side in one run.

    bash scripts/demo.sh --out /tmp/demo                       # once: trains the demo's model
    . .venv/bin/activate && python benchmarks/demo_speed.py /tmp/demo [--threads 1 2] [--rounds 3]

The demo's best checkpoint (run/best.ckpt: Allegro, float32, l_max 1, 32/8 features) is exported twice to
.pt2, with the fused operator (the default on a CPU) and with PyTorch's tensor product (`--kernel torch`), and
the demo's NVE run (256 Cu atoms, 1200 K start, 1000 steps, 1 MPI rank, `pair_style allegro threads N`) runs
with each, and with the fused artifact under `short_pairs off` (what the default check against the training
data's shortest distances costs), and with a fused artifact exported without the ZBL core (`core_repulsion:
false`: what the default core costs inside the model), alternated over --rounds, at each thread count.
Reported: LAMMPS's loop time per atom-step (median), the ratio against BASELINE_US, the demo's speed when
issue 14 was filed (the demo's printed figure then, 2 threads, this machine), and the pair style's own split
of each call (its end-of-run timing line) into graph building and model.
"""

import argparse
import os
import re
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import cpu_name  # noqa: E402

BASELINE_US = 69.7  # us/atom-step, 1 rank x 2 threads: the demo's printed speed when issue 14 was filed


def call_split_ms(log: str) -> tuple:
    """Milliseconds per call the pair style spent building the graph and in the model, from its end-of-run
    timing line."""
    with open(log) as f:
        found = re.search(r"timing: ([\d.]+) ms per call per rank; model ([\d.]+)%.*\(graph ([\d.]+)%", f.read())
    total = float(found[1])
    return total * float(found[3]) / 100.0, total * float(found[2]) / 100.0


def without_core(checkpoint: str, output: str) -> str:
    """A copy of the checkpoint whose model has no ZBL core (the same weights)."""
    from vivace.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(checkpoint)
    payload["model"]["hyperparameters"]["core_repulsion"] = False
    save_checkpoint(output, payload)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo", help="a demo's output folder (bash scripts/demo.sh --out DIR)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "demo_speed.txt"))
    args = parser.parse_args(argv)

    from vivace.demo import nve_run
    from vivace.export import export

    checkpoint = os.path.join(args.demo, "run", "best.ckpt")
    if not os.path.exists(checkpoint):
        raise SystemExit(f"no {checkpoint}: run the demo first (bash scripts/demo.sh --out {args.demo})")
    work = os.path.join(args.demo, "speed")
    os.makedirs(work, exist_ok=True)
    artifacts = {kernel: export(checkpoint, os.path.join(work, f"{kernel}.pt2"), kernel=kernel)
                 for kernel in ("fused", "torch")}  # fmt: skip
    artifacts["no_core"] = export(without_core(checkpoint, os.path.join(work, "no_core.ckpt")),
                                  os.path.join(work, "no_core.pt2"), kernel="fused")

    runs = {"fused": (artifacts["fused"], ""), "torch": (artifacts["torch"], ""),
            "unchecked": (artifacts["fused"], " short_pairs off"), "no_core": (artifacts["no_core"], "")}  # fmt: skip
    times = {(name, t): [] for name in runs for t in args.threads}
    graph = {(name, t): [] for name in runs for t in args.threads}  # ms per call building the graph
    model = {(name, t): [] for name in runs for t in args.threads}  # ms per call in the model
    for _ in range(args.rounds):
        for t in args.threads:
            for name, (artifact, options) in runs.items():
                folder = os.path.join(work, f"{name}_{t}")
                seconds, nsteps, natoms, _ = nve_run(folder, artifact, args.steps, nprocs=1, threads=t,
                                                     pair_options=options)  # fmt: skip
                times[name, t].append(seconds / nsteps / natoms * 1e6)
                graph_call, model_call = call_split_ms(os.path.join(folder, "lammps_nve", "log.lammps"))
                graph[name, t].append(graph_call)
                model[name, t].append(model_call)

    lines = [f"# python benchmarks/demo_speed.py DEMO --threads {' '.join(map(str, args.threads))} --rounds "
             f"{args.rounds}   ({time.strftime('%Y-%m-%d')}, {cpu_name()})",
             "# the demo's NVE MD (256 atoms, 1 rank), us/atom-step, median of the rounds; baseline "
             f"{BASELINE_US} us/atom-step: the demo at 2 threads when issue 14 was filed",
             "# unchecked: fused with `short_pairs off`. The check runs while the graph is built: its cost is the"
             " pair style's graph time per call (its end-of-run timing line), checked minus unchecked, over the"
             " checked run's time per call (medians); whole runs differ by more than that from run to run",
             "# no core: fused, exported without the ZBL core; the core's cost is the model's time per call (the"
             " timing line's model share), with minus without, over the call (medians)",
             f"{'threads':>7} {'fused':>9} {'torch':>9} {'unchecked':>10} {'no core':>8} {'torch/fused':>12}"
             f" {'baseline/fused':>15} {'graph ms, checked':>18} {'unchecked':>10} {'check costs':>12}"
             f" {'model ms, core':>15} {'no core':>8} {'core costs':>11}"]  # fmt: skip
    for t in args.threads:
        fused, torch_, unchecked, no_core = (statistics.median(times[k, t]) for k in ("fused", "torch", "unchecked", "no_core"))
        checked_ms, unchecked_ms = (statistics.median(graph[k, t]) for k in ("fused", "unchecked"))
        core_ms, no_core_ms = (statistics.median(model[k, t]) for k in ("fused", "no_core"))
        call_ms = fused * 256 / 1e3  # us/atom-step x atoms
        lines.append(f"{t:>7} {fused:>9.1f} {torch_:>9.1f} {unchecked:>10.1f} {no_core:>8.1f} {torch_ / fused:>11.2f}x "
                     f"{BASELINE_US / fused:>14.2f}x {checked_ms:>18.3f} {unchecked_ms:>10.3f} "
                     f"{100 * (checked_ms - unchecked_ms) / call_ms:>+11.2f}% {core_ms:>15.3f} {no_core_ms:>8.3f} "
                     f"{100 * (core_ms - no_core_ms) / call_ms:>+10.2f}%")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
