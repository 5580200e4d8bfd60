"""The `vivace` command: train, evaluate, export, info, demo."""

import argparse
import sys


def _train(args):
    from .training import train

    if (args.config is None) == (args.resume is None):
        raise ValueError("give either a config file or --resume RUN_DIR")
    run_dir = train(args.config, resume=args.resume)
    print(f"vivace train: checkpoints in {run_dir}/best.ckpt and {run_dir}/last.ckpt")


def _evaluate(args):
    from .evaluation import evaluate

    data = args.data if len(args.data) > 1 else args.data[0]
    if args.format:
        data = [{"path": d, "format": args.format} for d in args.data]
    evaluate(args.model, data, out_dir=args.out, batch_size=args.batch_size)


def _export(args):
    from .export import export

    path = export(args.checkpoint, args.output, fmt=args.format, device=args.device, kernel=args.kernel,
                  exchange=not args.no_exchange)
    print(f"vivace export: wrote {path}")


def _info(args):
    from . import _core

    model = _core.Model(args.artifact)
    print(f"{args.artifact}: {model.format}")
    for key, value in sorted(model.metadata.items()):
        print(f"  {key}: {value}")


def _demo(args):
    from .demo import main as demo_main

    demo_main(args.out, minutes=args.minutes)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="vivace", description="equivariant interatomic potentials for LAMMPS")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config, or continue an interrupted run")
    p.add_argument("config", nargs="?")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.ckpt")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="errors and parity plots of a checkpoint or artifact on a dataset")
    p.add_argument("model", help="a .ckpt checkpoint or a .pt2/.pth artifact")
    p.add_argument("data", nargs="+", help="labelled data: ASE-readable files, rMD17 npz, DeePMD folders")
    p.add_argument("--format", choices=["ase", "rmd17", "npz", "deepmd"], help="data format (default: detected)")
    p.add_argument("--out", help="folder for metrics.json and parity.png")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="export a checkpoint as a .pt2 (AOTInductor) or .pth (TorchScript) artifact")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--format", choices=["aotinductor", "torchscript"], default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--kernel", choices=["fused", "torch"], default=None,
                   help="Allegro's tensor product and NequIP's convolution: the fused C++ operators (default "
                        "on a CPU) or PyTorch's")
    p.add_argument("--no-exchange", action="store_true",
                   help="NequIP: leave out the layer programs that LAMMPS ranks exchange features with (the "
                        "artifact then runs on one rank or with 'pair_style nequip shell'; a .pt2 compiles faster)")
    p.set_defaults(func=_export)

    p = sub.add_parser("info", help="print an artifact's metadata")
    p.add_argument("artifact")
    p.set_defaults(func=_info)

    p = sub.add_parser("demo", help="data -> training -> export -> LAMMPS MD, with accuracy and speed")
    p.add_argument("--out", default="demo_output")
    p.add_argument("--minutes", type=float, default=4.0, help="training time budget")
    p.set_defaults(func=_demo)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"vivace {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
