"""Reading labelled structures from ASE-readable files, rMD17-style npz files and DeePMD npy folders.

Every reader returns `Frame`s in vivace's conventions, in the LAMMPS units style asked for (`units`: metal by
default, or real; see vivace.units), whatever units the file stores (the source options say which):
- energy: total energy of the configuration (eV in metal, kcal/mol in real);
- forces: F = -dE/dx, energy/A;
- stress: sigma = (1/V) dE/d(strain), the ASE sign (positive under tension), energy/A^3, 3x3.
  Files that store a pressure-like stress (positive under compression: VASP, LAMMPS's pressure tensor) say
  `stress_sign: pressure`. A virial W = -V sigma in energy units (DeePMD's virial.npy) is converted to stress.
- weight: a per-configuration weight on every loss term of that structure (default 1).

A data source is a path, a mapping {path, format, keys, units...}, or a list of those; see `SOURCE_KEYS`.
"""

import glob
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..units import KCAL_PER_MOL_PER_EV, unit_style

# Each unit in eV (or A, or eV/A^3).
ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": 1.0 / KCAL_PER_MOL_PER_EV,
    "kJ/mol": 4.184 / KCAL_PER_MOL_PER_EV,
    "Hartree": 27.211386245988,
    "Ry": 13.605693122994,
}
LENGTH_UNITS = {"A": 1.0, "Angstrom": 1.0, "Bohr": 0.529177211, "nm": 10.0}
STRESS_UNITS = {"eV/A^3": 1.0, "GPa": 1 / 160.21766, "kbar": 0.1 / 160.21766, "bar": 1e-4 / 160.21766}

SOURCE_KEYS = {
    "path": None,  # file, folder or glob
    "format": "auto",  # auto | ase | rmd17 | npz | deepmd
    "index": ":",  # which frames of an ASE file
    "keys": {},  # label name -> name in the file: energy, forces, stress, virial, weight (+ positions, numbers for npz)
    "energy_unit": None,  # default eV; kcal/mol for rmd17
    "length_unit": "A",
    "stress_unit": "eV/A^3",
    "stress_sign": "ase",  # ase: positive under tension; pressure: positive under compression
    "type_map": None,  # deepmd: element of each type index, when the folder has no type_map.raw
}

RMD17_KEYS = {"numbers": "nuclear_charges", "positions": "coords", "energy": "energies", "forces": "forces"}


@dataclass
class Frame:
    symbols: List[str]
    positions: np.ndarray  # (N, 3) A
    cell: np.ndarray  # (3, 3) rows are cell vectors
    pbc: np.ndarray  # (3,)
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None  # (3, 3)
    weight: float = 1.0
    where: str = ""  # file and frame index, for error messages

    @classmethod
    def from_atoms(cls, atoms: Atoms) -> "Frame":
        """The labels ASE itself attaches (calculator results, or the energy/forces/stress keys of extxyz)."""
        return _ase_frame(atoms, _Source({"path": "<atoms>"}))


class _Source:
    """One data source with its options checked and defaults filled in."""

    def __init__(self, spec: Union[str, Dict[str, Any]], units: str = "metal"):
        style = unit_style(units)
        spec = {"path": spec} if isinstance(spec, (str, os.PathLike)) else dict(spec)
        unknown = sorted(set(spec) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(f"unknown data source key(s) {unknown} (known: {', '.join(SOURCE_KEYS)})")
        self.spec = {**SOURCE_KEYS, **spec}
        self.path = str(self.spec["path"]) if self.spec["path"] is not None else None
        if not self.path:
            raise ValueError("a data source needs a 'path'")
        self.format = self.spec["format"]
        if self.format == "auto":
            self.format = _detect_format(self.path)
        if self.format not in ("ase", "rmd17", "npz", "deepmd"):
            raise ValueError(f"unknown data format '{self.format}' (known: auto, ase, rmd17, npz, deepmd)")
        energy_unit = self.spec["energy_unit"] or ("kcal/mol" if self.format == "rmd17" else "eV")
        # into `units`: both supported styles measure length in A, so only energies change
        self.energy_factor = _factor(ENERGY_UNITS, energy_unit, "energy_unit") / style.energy_in_ev
        self.length_factor = _factor(LENGTH_UNITS, self.spec["length_unit"], "length_unit")
        self.stress_factor = _factor(STRESS_UNITS, self.spec["stress_unit"], "stress_unit") / style.energy_in_ev
        self.units = units
        if self.spec["stress_sign"] not in ("ase", "pressure"):
            raise ValueError(f"stress_sign must be 'ase' or 'pressure', not '{self.spec['stress_sign']}'")
        if self.spec["stress_sign"] == "pressure":
            self.stress_factor = -self.stress_factor
        self.keys = dict(self.spec["keys"] or {})
        if self.format == "rmd17":
            self.keys = {**RMD17_KEYS, **self.keys}

    def files(self) -> List[str]:
        """The files whose content this source reads (for the cache key)."""
        if self.format == "deepmd":
            return [
                f
                for system in _deepmd_systems(self.path)
                for f in sorted(glob.glob(os.path.join(system, "*.raw")) + glob.glob(os.path.join(system, "set.*", "*.npy")))
            ]
        return [self.path]

    def describe(self) -> str:
        return f"{self.path} ({self.format}, energies x{self.energy_factor:g} into units {self.units})"


def _factor(table: Dict[str, float], name: str, key: str) -> float:
    if name not in table:
        raise ValueError(f"unknown {key} '{name}' (known: {', '.join(table)})")
    return table[name]


def _deepmd_systems(path: str) -> List[str]:
    """A DeePMD system folder, or a folder of them (one level down)."""
    if os.path.isfile(os.path.join(path, "type.raw")):
        return [path]
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "*", "type.raw")))


def _detect_format(path: str) -> str:
    if os.path.isdir(path):
        if _deepmd_systems(path):
            return "deepmd"
        raise ValueError(f"'{path}' is a folder but neither a DeePMD system nor a folder of them (no type.raw)")
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file '{path}' does not exist")
        with np.load(path) as f:
            return "rmd17" if {"nuclear_charges", "coords"} <= set(f.files) else "npz"
    return "ase"


def read_data(source: Union[str, Dict[str, Any], Sequence], units: str = "metal") -> List[Frame]:
    """All frames of a data source (a path, a mapping with options, or a list of those), in LAMMPS `units`."""
    frames: List[Frame] = []
    for s in sources(source, units):
        frames.extend(_READERS[s.format](s))
    return frames


def sources(source, units: str = "metal") -> List[_Source]:
    items = source if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise ValueError("an empty list of data sources")
    return [item if isinstance(item, _Source) else _Source(item, units) for item in items]


def _stress_tensor(value, where: str) -> np.ndarray:
    value = np.asarray(value, dtype=np.float64)
    if value.size == 6:  # Voigt, ASE order xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = value.ravel()
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if value.size == 9:
        return value.reshape(3, 3)
    raise ValueError(f"{where}: a stress or virial needs 6 (Voigt) or 9 components, not {value.size}")


def _finish(frame: Frame, source: _Source, virial, where: str) -> Frame:
    """Unit conversion, stress from a virial, and refusal of non-finite numbers, in place."""
    frame.where = where
    frame.positions = frame.positions * source.length_factor
    frame.cell = frame.cell * source.length_factor
    if frame.energy is not None:
        frame.energy = float(frame.energy) * source.energy_factor
    if frame.forces is not None:
        frame.forces = np.asarray(frame.forces, dtype=np.float64).reshape(-1, 3) * (source.energy_factor / source.length_factor)
        if frame.forces.shape[0] != len(frame.symbols):
            raise ValueError(f"{where}: {frame.forces.shape[0]} force rows for {len(frame.symbols)} atoms")
    if frame.stress is not None:
        frame.stress = _stress_tensor(frame.stress, where) * source.stress_factor
    if virial is not None:
        volume = abs(np.linalg.det(frame.cell))
        if volume < 1e-12:
            raise ValueError(f"{where}: a virial needs a periodic cell with a volume")
        frame.stress = -_stress_tensor(virial, where) * source.energy_factor / volume
    for name in ("positions", "cell", "energy", "forces", "stress"):
        value = getattr(frame, name)
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: the {name} contain NaN or infinity" if name != "energy" else f"{where}: the energy is not finite")
    return frame


def _ase_frame(atoms: Atoms, source: _Source, where: str = "") -> Frame:
    keys = source.keys
    results = atoms.calc.results if atoms.calc is not None else {}

    def label(name: str, default_keys: Sequence[str], per_atom: bool):
        if name in keys:
            store = atoms.arrays if per_atom else atoms.info
            if keys[name] in store:
                return store[keys[name]]
            if keys[name] in results:
                return results[keys[name]]
            raise ValueError(f"{where}: no '{keys[name]}' (mapped from '{name}') in the structure")
        for key in default_keys:
            value = (atoms.arrays if per_atom else atoms.info).get(key)
            if value is None:
                value = results.get(key)
            if value is not None:
                return value
        return None

    frame = Frame(
        symbols=atoms.get_chemical_symbols(),
        positions=atoms.positions.astype(np.float64),
        cell=atoms.cell.array.astype(np.float64),
        pbc=np.array(atoms.pbc, dtype=bool),
        energy=label("energy", ("energy", "free_energy"), False),
        forces=label("forces", ("forces",), True),
        stress=label("stress", ("stress",), False),
    )
    weight = label("weight", ("weight", "config_weight"), False)
    frame.weight = 1.0 if weight is None else float(weight)
    return _finish(frame, source, label("virial", ("virial",), False), where)


def _read_ase(source: _Source) -> List[Frame]:
    import ase.io

    if not os.path.exists(source.path):
        raise FileNotFoundError(f"data file '{source.path}' does not exist")
    try:
        images = ase.io.read(source.path, index=source.spec["index"])
    except Exception as e:  # ASE raises many types for malformed files
        raise ValueError(f"cannot read '{source.path}' as a structure file: {e}") from e
    images = images if isinstance(images, list) else [images]
    if not images:
        raise ValueError(f"'{source.path}' holds no structures")
    return [_ase_frame(a, source, f"{source.path}, structure {n}") for n, a in enumerate(images)]


def _read_npz(source: _Source) -> List[Frame]:
    """One molecule or cell per file: numbers (N,), positions (F, N, 3), energy (F,), forces (F, N, 3), and
    optionally cell (F, 3, 3) or (3, 3), stress, virial, weight (F,) under the names `keys` maps them to."""
    if not os.path.isfile(source.path):
        raise FileNotFoundError(f"data file '{source.path}' does not exist")
    keys = {"numbers": "numbers", "positions": "positions", "energy": "energy", "forces": "forces", **source.keys}
    try:
        data = dict(np.load(source.path))
    except Exception as e:
        raise ValueError(f"cannot read '{source.path}' as an npz file: {e}") from e
    missing = [f"'{keys[k]}' ({k})" for k in ("numbers", "positions") if keys[k] not in data]
    if missing:
        raise ValueError(f"{source.path}: no {', '.join(missing)}; present keys: {sorted(data)}")

    def get(name):
        return data.get(keys[name]) if name in keys else None

    numbers = np.asarray(data[keys["numbers"]]).astype(int)
    positions = np.asarray(data[keys["positions"]], dtype=np.float64)
    positions = positions.reshape(positions.shape[0], -1, 3) if positions.ndim != 3 else positions
    count = positions.shape[0]
    if numbers.ndim == 2:
        numbers = numbers[0]
    symbols = [chemical_symbols[z] for z in numbers]
    energy, forces, cell = get("energy"), get("forces"), get("cell")
    stress, virial, weight = get("stress"), get("virial"), get("weight")
    for name, value in (("energy", energy), ("forces", forces), ("stress", stress), ("virial", virial), ("weight", weight)):
        if value is not None and len(value) != count:
            raise ValueError(f"{source.path}: '{keys[name]}' has {len(value)} entries for {count} frames")
    frames = []
    for k in range(count):
        c = np.zeros((3, 3)) if cell is None else np.asarray(cell if np.ndim(cell) == 2 else cell[k]).reshape(3, 3)
        frame = Frame(
            symbols=symbols,
            positions=positions[k],
            cell=c.astype(np.float64),
            pbc=np.full(3, cell is not None),
            energy=None if energy is None else float(np.ravel(energy[k])[0]),
            forces=None if forces is None else forces[k],
            stress=None if stress is None else stress[k],
            weight=1.0 if weight is None else float(weight[k]),
        )
        frames.append(_finish(frame, source, None if virial is None else virial[k], f"{source.path}, frame {k}"))
    return frames


def _read_deepmd(source: _Source) -> List[Frame]:
    systems = _deepmd_systems(source.path)
    if not systems:
        raise FileNotFoundError(f"'{source.path}' is not a DeePMD system folder (no type.raw), nor a folder of them")
    return [frame for system in systems for frame in _read_deepmd_system(system, source)]


def _read_deepmd_system(folder: str, source: _Source) -> List[Frame]:
    """A DeePMD system folder: type.raw, type_map.raw (or the `type_map` option), set.*/coord.npy, box.npy,
    energy.npy, force.npy, optional virial.npy (W = -V sigma, eV), a `nopbc` file for open boundaries."""
    types = np.loadtxt(os.path.join(folder, "type.raw"), dtype=int, ndmin=1)
    type_map = source.spec["type_map"]
    if type_map is None:
        path = os.path.join(folder, "type_map.raw")
        if not os.path.isfile(path):
            raise ValueError(f"'{folder}' has no type_map.raw: give the elements with the 'type_map' option")
        with open(path) as f:
            type_map = f.read().split()
    if types.max() >= len(type_map):
        raise ValueError(f"'{folder}': type index {types.max()} but type_map has {len(type_map)} entries")
    unknown = [s for s in type_map if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"'{folder}': type_map names {unknown}, which are not elements")
    symbols = [type_map[t] for t in types]
    periodic = not os.path.exists(os.path.join(folder, "nopbc"))
    keys = {"positions": "coord", "cell": "box", "energy": "energy", "forces": "force", "virial": "virial", **source.keys}
    set_dirs = sorted(glob.glob(os.path.join(folder, "set.*")))
    if not set_dirs:
        raise ValueError(f"'{folder}' has no set.* folders")
    n = len(types)
    frames = []
    for set_dir in set_dirs:
        def load(name, required):
            path = os.path.join(set_dir, keys[name] + ".npy")
            if not os.path.isfile(path):
                if required:
                    raise ValueError(f"'{set_dir}' has no {keys[name]}.npy")
                return None
            return np.load(path)

        coord = load("positions", True).reshape(-1, n, 3)
        count = coord.shape[0]
        box = load("cell", periodic)
        energy, force, virial = load("energy", False), load("forces", False), load("virial", False)
        weight = load("weight", False) if "weight" in keys else None
        for k in range(count):
            frame = Frame(
                symbols=symbols,
                positions=coord[k].astype(np.float64),
                cell=np.zeros((3, 3)) if box is None else box.reshape(count, 3, 3)[k].astype(np.float64),
                pbc=np.full(3, periodic),
                energy=None if energy is None else float(np.ravel(energy)[k]),
                forces=None if force is None else force.reshape(count, n, 3)[k],
                weight=1.0 if weight is None else float(np.ravel(weight)[k]),
            )
            v = None if virial is None else virial.reshape(count, 9)[k]
            frames.append(_finish(frame, source, v, f"{set_dir}, frame {k}"))
    return frames


_READERS = {"ase": _read_ase, "rmd17": _read_npz, "npz": _read_npz, "deepmd": _read_deepmd}
