"""Accuracy at equal wall time on rMD17: vivace vs upstream NequIP/Allegro (PyPI, separate virtualenv).

For each molecule: split 01's training file gives 950 training and 50 validation frames (a seeded
permutation); errors are measured on split 01's test file where one exists (ethanol in ../shared/data) and on
the 50 validation frames otherwise. Every run gets the same training budget in minutes (the fit itself;
statistics and evaluation come on top), the same threads, the same model hyperparameters (those of
benchmarks/model_speed.py), float64, Adam at lr 0.005, batch 4, plateau schedule (factor 0.5, patience 10)
on the validation force RMSE, and each code's default EMA of the weights (vivace 0.99, upstream 0.999 per step).

    python benchmarks/accuracy_rmd17.py --molecules ethanol aspirin --minutes 5

Prints one row per (molecule, model, code) and the force-MAE ratio vivace / upstream; appends the table to
benchmarks/results/accuracy_rmd17.txt.
"""

import argparse
import os
import sys
import time

import ase.io
import numpy as np
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
SHARED = os.path.join(HERE, "..", "..", "shared", "data", "rmd17")
KCAL_TO_EV = 0.0433641

ALLEGRO = dict(r_max=5.0, l_max=2, parity=True, num_layers=2, num_scalar_features=64, num_tensor_features=32,
               two_body_hidden=[64], latent_hidden=[64], readout_hidden=[32])  # fmt: skip
NEQUIP = dict(r_max=5.0, l_max=2, parity=True, num_layers=4, num_features=32, radial_hidden=[64, 64])


def write_split(molecule: str, folder: str):
    """train.xyz (950), val.xyz (50), test.xyz (the test file, or the validation frames), in eV and eV/A."""
    os.makedirs(folder, exist_ok=True)

    def frames(path, index=None):
        d = np.load(path)
        index = range(len(d["energies"])) if index is None else index
        out = []
        for k in index:
            a = Atoms(numbers=d["nuclear_charges"], positions=d["coords"][k])
            a.calc = SinglePointCalculator(a, energy=float(d["energies"][k]) * KCAL_TO_EV, forces=d["forces"][k] * KCAL_TO_EV)
            out.append(a)
        return out

    train_file = os.path.join(SHARED, f"rmd17_{molecule}_train_01.npz")
    order = np.random.default_rng(1).permutation(len(np.load(train_file)["energies"]))
    ase.io.write(os.path.join(folder, "train.xyz"), frames(train_file, order[:950]))
    ase.io.write(os.path.join(folder, "val.xyz"), frames(train_file, order[950:1000]))
    test_file = os.path.join(SHARED, f"rmd17_{molecule}_test_01.npz")
    test = frames(test_file) if os.path.isfile(test_file) else frames(train_file, order[950:1000])
    ase.io.write(os.path.join(folder, "test.xyz"), test)
    return ("test file" if os.path.isfile(test_file) else "validation"), len(test)


def train_vivace(kind: str, folder: str, workdir: str, minutes: float, threads: int):
    from vivace.checkpoint import load_checkpoint
    from vivace.data import load_structures
    from vivace.evaluation import evaluate_checkpoint
    from vivace.training import train

    config = {
        "run_dir": workdir,
        "data": {"train": os.path.join(folder, "train.xyz"), "validation": os.path.join(folder, "val.xyz"), "cache_dir": None},
        "model": {"kind": kind, "dtype": "float64", **(ALLEGRO if kind == "allegro" else NEQUIP)},
        "training": {"max_minutes": minutes, "max_epochs": 100000, "batch_size": 4, "learning_rate": 0.005,
                     "scheduler": "plateau", "lr_patience": 10, "lr_factor": 0.5, "early_stopping_patience": None,
                     "threads": threads, "plots": False, "tensorboard": False},
    }  # fmt: skip
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "benchmark.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    start = time.monotonic()
    train(config)
    seconds = time.monotonic() - start
    best = os.path.join(workdir, "best.ckpt")
    spec = load_checkpoint(best)["model"]
    test = load_structures(os.path.join(folder, "test.xyz"), spec["type_names"], spec["hyperparameters"]["r_max"])
    metrics = evaluate_checkpoint(best, test)
    epochs = load_checkpoint(os.path.join(workdir, "last.ckpt"))["epoch"]
    return {"energy_mae": metrics["total_energy_mae"], "force_mae": metrics["force_mae"], "epochs": epochs, "train_seconds": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    parser.add_argument("--models", nargs="+", default=["allegro", "nequip"])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of every run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default="benchmark_runs/rmd17")
    parser.add_argument("--skip-upstream", action="store_true")
    args = parser.parse_args(argv)
    if not os.path.isdir(SHARED):
        sys.exit(f"needs the rMD17 files in {SHARED}")
    import torch

    torch.set_num_threads(args.threads)
    from upstream_training import train_upstream

    rows = []
    header = f"{'molecule':10s} {'model':8s} {'code':9s} {'epochs':>6s} {'wall s':>7s} {'E MAE meV':>10s} {'F MAE meV/A':>12s}  errors on"
    print(header, flush=True)
    for molecule in args.molecules:
        folder = os.path.join(args.workdir, molecule, "data")
        where, n_test = write_split(molecule, folder)
        for kind in args.models:
            results = {}
            codes = ["vivace"] + ([] if args.skip_upstream else ["upstream"])
            for code in codes:
                workdir = os.path.abspath(os.path.join(args.workdir, molecule, f"{code}_{kind}"))
                if code == "vivace":
                    r = train_vivace(kind, folder, workdir, args.minutes, args.threads)
                else:
                    files = [os.path.abspath(os.path.join(folder, f"{s}.xyz")) for s in ("train", "val", "test")]
                    r = train_upstream(kind, *files, workdir, minutes=args.minutes, threads=args.threads)
                results[code] = r
                row = (f"{molecule:10s} {kind:8s} {code:9s} {r['epochs']:6d} {r['train_seconds']:7.0f} "
                       f"{r['energy_mae']:10.2f} {r['force_mae']:12.2f}  {where} ({n_test})")  # fmt: skip
                rows.append(row)
                print(row, flush=True)
            if "upstream" in results:
                ratio = results["vivace"]["force_mae"] / results["upstream"]["force_mae"]
                line = f"{molecule:10s} {kind:8s} force MAE vivace / upstream = {ratio:.2f}"
                rows.append(line)
                print(line, flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "accuracy_rmd17.txt"), "a") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M')}  budget {args.minutes} min per run, {args.threads} threads, torch {torch.__version__}\n")
        f.write(header + "\n" + "\n".join(rows) + "\n\n")


if __name__ == "__main__":
    main()
