"""torch.compile in training, measured: the training step (energy + force loss, double backward) and the
validation pass (energy + forces, single backward), eager vs compiled, side by side in one run.

    python benchmarks/train_compile.py --kind allegro --threads 2

Data: rMD17 ethanol from ../shared/data when present (batches of 4 molecules), else EMT Al-Cu cells.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from accuracy_rmd17 import ALLEGRO, NEQUIP, SHARED  # noqa: E402


def structures(count):
    from vivace.data import read_data, structures_from_frames, type_names_of

    path = os.path.join(SHARED, "rmd17_ethanol_train_01.npz")
    if os.path.isfile(path):
        frames = read_data(path)[:count]
    else:
        from ase.build import bulk
        from ase.calculators.emt import EMT

        from vivace.data import Frame

        frames = []
        for k in range(count):
            a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
            a.rattle(0.1, seed=k)
            a.calc = EMT()
            a.get_forces()
            frames.append(Frame.from_atoms(a))
    names = type_names_of(frames)
    return structures_from_frames(frames, names, 5.0), names


FIRST = {}


def timed(fn, repeats, name=None):
    start = time.perf_counter()
    fn()  # warm-up (and compilation)
    if name:
        FIRST[name] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", default="allegro", choices=["allegro", "nequip"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from vivace.data import collate
    from vivace.losses import Loss, LossDenominators, predict
    from vivace.models import EdgeForceModel, build_model

    data, names = structures(64)
    hyper = dict(ALLEGRO if args.kind == "allegro" else NEQUIP, avg_num_neighbors=8.0)
    torch.manual_seed(0)
    model = build_model(args.kind, hyper, names, "float64")
    batches = [collate(data[k : k + 4]) for k in range(0, len(data), 4)]
    loss_fn = Loss()

    def train_pass(m):
        def run():
            for b in batches:
                loss = loss_fn(predict(EdgeForceModel(m, create_graph=True), b), b, LossDenominators(1.0, 3.0 * b.positions.shape[0], 1.0))
                loss.backward()
        return run

    def validation_pass(m):
        def run():
            for b in batches:
                predict(EdgeForceModel(m), b)
        return run

    rows = []
    eager_val = timed(validation_pass(model), args.repeats)
    torch._dynamo.reset()
    compiled_val = timed(validation_pass(torch.compile(model)), args.repeats, "compiled validation")
    eager_train = timed(train_pass(model), max(1, args.repeats // 4))
    torch._dynamo.reset()
    try:
        compiled_train = timed(train_pass(torch.compile(model)), max(1, args.repeats // 4))
        rows.append(("training step", eager_train, compiled_train))
    except Exception as e:  # torch 2.13: "torch.compile with aot_autograd does not currently support double backward"
        rows.append(("training step", eager_train, None))
        print(f"training step: torch.compile fails: {str(e).splitlines()[0]}")
    rows.append(("validation pass", eager_val, compiled_val))
    print(f"{args.kind}, {len(batches)} batches of 4 structures, {args.threads} threads, torch {torch.__version__}")
    for name, eager, compiled in rows:
        if compiled is None:
            print(f"  {name:16s} eager {1000 * eager:8.1f} ms   compiled: not possible")
        else:
            print(f"  {name:16s} eager {1000 * eager:8.1f} ms   compiled {1000 * compiled:8.1f} ms   speed-up {eager / compiled:.2f}x"
                  f"   (first compiled pass, compilation included: {FIRST['compiled validation']:.1f} s)")


if __name__ == "__main__":
    main()
