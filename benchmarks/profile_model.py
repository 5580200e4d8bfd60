"""Where the time of one energy+forces call goes, by PyTorch operator: does a fused kernel pay?

    . .venv/bin/activate && python benchmarks/profile_model.py --kind nequip --atoms 1536 --threads 2

Model: model_speed.py's (NequIP: 4 layers, 32 features, l_max 2; Allegro: 64/32 features, l_max 2), random
weights, eager (the PyTorch model through the artifact contract, forces by autograd), on lammps_speed.py's
rattled Al-Cu alloy. The profiler's self CPU time per operator over --calls calls (after two warm-ups) is
printed by share, and summed into what a fused tensor-product kernel could replace (the gathers, products and
scatters of the convolution: index_select, mul, index_add, bmm on edges) and what it could not (the linear
layers' and MLPs' matrix multiplies, activations, the rest).
"""

import argparse
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from kernel_speed import graph  # noqa: E402
from model_speed import HYPER  # noqa: E402

TYPES = ["Al", "Cu"]
# operator families: dense linear algebra, the per-edge tensor-product work, and the rest
FAMILIES = {
    "matmul (linear layers, MLPs, dense contractions)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul"),
    "gather / scatter": ("aten::index_select", "aten::index_add", "aten::index_add_", "aten::index", "aten::scatter_add_",
                         "aten::gather", "aten::index_put_"),
    "elementwise": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::sigmoid", "aten::tanh",
                    "aten::mul_", "aten::add_", "aten::silu_backward", "aten::sigmoid_backward", "aten::neg", "aten::pow",
                    "aten::sqrt", "aten::cos", "aten::sin", "aten::where", "aten::exp"),
}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["nequip", "allegro"], default="nequip")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--atoms", type=int, default=1536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from vivace.calculators import load_backend
    from vivace.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hyper = dict(HYPER[args.kind], avg_num_neighbors=50.0)
    model = build_model(args.kind, hyper, TYPES, args.dtype)
    spec = {"kind": args.kind, "hyperparameters": hyper, "type_names": TYPES, "dtype": args.dtype}
    backend = load_backend((model, spec))
    inputs = graph(args.atoms, float(hyper["r_max"]))
    for _ in range(2):
        backend.evaluate(*inputs)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.calls):
            backend.evaluate(*inputs)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(t for _, t in rows)
    by_family = defaultdict(float)
    for key, t in rows:
        family = next((name for name, ops in FAMILIES.items() if key in ops), "other")
        by_family[family] += t
    print(f"{args.kind} {args.dtype}, {inputs[3]} atoms, {inputs[1].shape[1]} edges, {args.threads} threads: "
          f"{total / args.calls / 1e3:.1f} ms of operator time per call")  # fmt: skip
    for name, t in sorted(by_family.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * t / total:5.1f}%  {name}")
    print("top operators:")
    for key, t in sorted(rows, key=lambda kv: -kv[1])[: args.top]:
        print(f"  {100 * t / total:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
