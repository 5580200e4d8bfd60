"""The end-to-end demo: EAM copper reference data -> Allegro training -> .pt2 export -> LAMMPS NVE MD.

Prints the force error of the exported model against the reference potential on frames it never saw,
the energy drift of the MD run and its speed.
"""

import os
import re
import time

import numpy as np

from .lammps_run import deformation_commands, nvt_frames, read_thermo, run_lammps, sampled_states, wheel_potential

LATTICE = 3.615  # fcc copper, A
MASS = 63.546


def reference_md(workdir: str, temperature: float, strain, shear, seed: int, frames: int, every: int) -> list:
    """NVT MD of 108 fcc Cu atoms with EAM in a strained (and sheared) box; labelled ASE frames (energy, forces,
    stress)."""
    system = f"""lattice fcc {LATTICE}
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 {MASS}
pair_style eam
pair_coeff 1 1 {wheel_potential('Cu_u3.eam')}"""
    deform = deformation_commands(strain, shear)
    return nvt_frames(workdir, system, ["Cu"], temperature, seed, frames, every, equilibrate=500, deform=deform)


TRAIN_STATES = sampled_states(12, (100, 1300), max_strain=0.02, max_shear=0.03, seed=0)
TEST_STATES = [(900, 0.005, (0.0, 0.0, 0.0)), (400, -0.015, (0.0, 0.0, 0.0)), (700, 0.012, (0.02, -0.01, 0.015))]


def make_data(out: str):
    import ase.io

    train = []
    for k, (temperature, strain, shear) in enumerate(TRAIN_STATES):
        train += reference_md(os.path.join(out, f"md_train_{k}"), temperature, strain, shear, seed=1 + k, frames=10, every=25)
    test = []
    for k, (temperature, strain, shear) in enumerate(TEST_STATES):
        test += reference_md(os.path.join(out, f"md_test_{k}"), temperature, strain, shear, seed=97 + k, frames=8, every=40)
    ase.io.write(os.path.join(out, "train.xyz"), train)
    ase.io.write(os.path.join(out, "test.xyz"), test)
    return len(train), len(test)


def write_config(out: str, minutes: float) -> str:
    path = os.path.join(out, "train.yaml")
    with open(path, "w") as f:
        f.write(
            f"""run_dir: {os.path.join(out, 'run')}
seed: 0
units: metal
data:
  train: {os.path.join(out, 'train.xyz')}
  val_fraction: 0.1
model:
  kind: allegro
  dtype: float32
  r_max: 5.0
  l_max: 1
  parity: false
  num_layers: 2
  num_scalar_features: 32
  num_tensor_features: 8
  two_body_hidden: [32]
  latent_hidden: [32]
  readout_hidden: [16]
training:
  max_epochs: 1000
  max_minutes: {minutes}
  batch_size: 2
  learning_rate: 0.01
  energy_weight: 1.0
  force_weight: 10.0
  lr_patience: 5
"""
        )
    return path


def test_errors(artifact: str, test_file: str):
    import ase.io

    from .calculators import VivaceCalculator

    calc = VivaceCalculator(artifact)
    df, de = [], []
    for atoms in ase.io.read(test_file, ":"):
        ref_f, ref_e = atoms.get_forces(), atoms.get_potential_energy()
        atoms.calc = calc
        df.append((atoms.get_forces() - ref_f).ravel())
        de.append((atoms.get_potential_energy() - ref_e) / len(atoms))
    df, de = np.concatenate(df), np.array(de)
    return 1000 * np.abs(df).mean(), 1000 * np.sqrt((df**2).mean()), 1000 * np.abs(de).mean()


def equation_of_state(out: str, artifact: str) -> dict:
    """Zero-temperature lattice constant (A) and bulk modulus (GPa) of fcc Cu with EAM and with the model,
    both computed in LAMMPS by vivace.properties."""
    from .properties import Crystal, bulk_modulus, lattice_constant

    pair_lines = {
        "EAM": f"pair_style eam\npair_coeff 1 1 {wheel_potential('Cu_u3.eam')}",
        "model": f"pair_style allegro\npair_coeff * * {os.path.abspath(artifact)} Cu",
    }
    results = {}
    for name, lines in pair_lines.items():
        crystal = Crystal("fcc", LATTICE, ["Cu"], [MASS], lines)
        workdir = os.path.join(out, "properties", name)
        a = lattice_constant(crystal, workdir).a
        results[name] = (a, bulk_modulus(crystal, workdir, a))
    return results


def nve_run(out: str, artifact: str, steps: int, nprocs: int, threads: int, pair_options: str = ""):
    workdir = os.path.join(out, "lammps_nve")
    script = f"""
units metal
atom_style atomic
boundary p p p
lattice fcc {LATTICE}
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 {MASS}
pair_style allegro threads {threads}{pair_options}
pair_coeff * * {os.path.abspath(artifact)} Cu
velocity all create 1200 4928459 mom yes rot yes dist gaussian
fix nve all nve
timestep 0.001
thermo 20
thermo_style custom step temp pe ke etotal press
thermo_modify format float %.10f
run {steps}
"""
    text = run_lammps(script, workdir, nprocs=nprocs)
    loop = re.search(r"Loop time of ([\d.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", text)
    seconds, _, nsteps, natoms = float(loop[1]), int(loop[2]), int(loop[3]), int(loop[4])
    thermo = read_thermo(text)
    return seconds, nsteps, natoms, thermo


def main(out: str = "demo_output", minutes: float = 4.0):
    from .checkpoint import load_checkpoint
    from .export import export
    from .training import train

    os.makedirs(out, exist_ok=True)
    t0 = time.monotonic()
    timings = {}

    print("== 1/4 reference data: EAM copper (Cu_u3.eam) NVT MD in LAMMPS", flush=True)
    n_train, n_test = make_data(out)
    timings["data"] = time.monotonic() - t0
    print(f"   {n_train} training frames (100-1300 K, volumes -6% to +6%, half stretched unevenly, half sheared; "
          f"energies, forces, stresses), {n_test} unseen test frames (3 other states)", flush=True)

    print(f"== 2/4 training Allegro for {minutes:g} min", flush=True)
    t = time.monotonic()
    run_dir = train(write_config(out, minutes))
    timings["train"] = time.monotonic() - t

    print("== 3/4 export to AOTInductor", flush=True)
    t = time.monotonic()
    artifact = export(os.path.join(run_dir, "best.ckpt"), os.path.join(out, "cu_allegro.pt2"))
    timings["export"] = time.monotonic() - t

    print("== 4/4 accuracy, equation of state, and LAMMPS NVE MD with pair_style allegro (256 atoms, 1200 K start, 1 fs)", flush=True)
    t = time.monotonic()
    f_mae, f_rmse, e_mae = test_errors(artifact, os.path.join(out, "test.xyz"))
    eos = equation_of_state(out, artifact)
    steps = 1000
    threads = max(1, min(os.cpu_count() or 1, 2))
    seconds, nsteps, natoms, thermo = nve_run(out, artifact, steps, nprocs=1, threads=threads)
    timings["md"] = time.monotonic() - t

    time_ps = thermo["Step"] * 0.001
    etotal = thermo["TotEng"]
    drift = np.polyfit(time_ps, etotal / natoms, 1)[0] * 1000  # meV/atom/ps
    spread = (etotal.max() - etotal.min()) / natoms * 1000
    total = time.monotonic() - t0
    print()
    print("vivace demo results")
    print(f"  force error on {n_test} unseen EAM frames: MAE {f_mae:.1f} meV/A, RMSE {f_rmse:.1f} meV/A")
    print(f"  energy error on unseen frames: MAE {e_mae:.2f} meV/atom")
    best = load_checkpoint(os.path.join(run_dir, "best.ckpt"))
    v = best["metrics"]
    print(f"  validation set (best epoch {best['epoch']}): energy MAE {v['energy_mae']:.2f} meV/atom, force MAE "
          f"{v['force_mae']:.1f} meV/A, stress MAE {v['stress_mae']:.2f} meV/A^3")
    (a_model, b_model), (a_ref, b_ref) = eos["model"], eos["EAM"]
    print(f"  lattice constant (0 K): model {a_model:.4f} A, EAM {a_ref:.4f} A ({100 * (a_model / a_ref - 1):+.2f}%)")
    print(f"  bulk modulus: model {b_model:.1f} GPa, EAM {b_ref:.1f} GPa ({100 * (b_model / b_ref - 1):+.1f}%)")
    print(f"  NVE energy drift over {nsteps} steps ({time_ps[-1]:.1f} ps, T0 = 1200 K): {drift:+.3f} meV/atom/ps, "
          f"max excursion {spread:.3f} meV/atom; mean T {thermo['Temp'].mean():.0f} K")
    print(f"  speed: {nsteps / seconds:.1f} timesteps/s, {seconds / nsteps / natoms * 1e6:.1f} us/atom-step "
          f"({natoms} atoms, 1 MPI rank x {threads} torch threads)")
    print(f"  wall time: data {timings['data']:.0f} s, training {timings['train']:.0f} s, export {timings['export']:.0f} s, "
          f"accuracy + MD {timings['md']:.0f} s, total {total:.0f} s")
    print(f"  outputs in {out}/ (train.xyz, test.xyz, run/, cu_allegro.pt2, properties/, lammps_nve/)")
