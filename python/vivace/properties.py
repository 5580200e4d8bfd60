"""Crystal properties of any potential, measured in LAMMPS from its pair style lines.

The same code measures a reference classical potential (`pair_style eam`, `sw`, ...) and a trained model
(`pair_style allegro` + `pair_coeff * * model.pt2 Cu`). Metal units: eV, Angstrom, amu; results in GPa
(moduli), J/m^2 (surface energies) and THz (frequencies). Every function runs LAMMPS in its own subfolder of
`workdir`, whose `in.lammps` can be inspected and rerun.

Cubic crystals only (`fcc`, `diamond`), built from LAMMPS's conventional cells with every atom of type 1.
"""

import os
import time
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence

import numpy as np

from .lammps_run import LammpsError, read_dump_frames, run_lammps

EV_PER_A3_IN_GPA = 160.21766208
BAR_IN_GPA = 1e-4
EV_PER_A2_IN_J_PER_M2 = 16.021766208
# omega^2 of 1 eV/(A^2 amu) in s^-2: 1.602176634e-19 J / (1e-20 m^2 * 1.66053906660e-27 kg)
EV_PER_A2_AMU_IN_PER_S2 = 1.602176634e-19 / (1e-20 * 1.66053906660e-27)

# fractional positions of the conventional cubic cell
FCC_BASIS = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
BASIS = {"fcc": FCC_BASIS, "diamond": np.concatenate([FCC_BASIS, FCC_BASIS + 0.25])}
# primitive-cell basis (one atom per sublattice), fractional
NEAREST_NEIGHBOUR = {"fcc": np.sqrt(2) / 2, "diamond": np.sqrt(3) / 4}  # in units of a
COORDINATION = {"fcc": 12, "diamond": 4}
SUBLATTICES = {"fcc": np.zeros((1, 3)), "diamond": np.array([[0, 0, 0], [0.25, 0.25, 0.25]])}
# surface orientations (x, y, z = surface normal) and their rectangular periods in units of a
SURFACES = {
    "100": (((1, 0, 0), (0, 1, 0), (0, 0, 1)), (1.0, 1.0, 1.0)),
    "111": (((1, -1, 0), (1, 1, -2), (1, 1, 1)), (np.sqrt(2) / 2, np.sqrt(6) / 2, np.sqrt(3))),
}
MINIMIZE = "minimize 0 1e-8 1000 10000"  # etol ftol(eV/A) maxiter maxeval


@dataclass
class Crystal:
    lattice: str  # "fcc" or "diamond" (LAMMPS lattice keyword)
    a: float  # starting lattice constant guess, A
    elements: list  # element of each LAMMPS type, e.g. ["Cu"] or ["Cu", "Al"]
    masses: list  # amu per type
    pair_lines: str  # e.g. "pair_style eam\npair_coeff 1 1 /path/Cu_u3.eam"
    # the crystal is made with all atoms of type 1 (pure element); the extra types exist so that
    # a multi-element model's pair_coeff is valid


class _Unpackable:
    """Dataclass results that also unpack like the tuples of the documented signatures."""

    def __iter__(self):
        return iter(getattr(self, f.name) for f in fields(self))


@dataclass
class Lattice(_Unpackable):
    a: float  # A
    energy_per_atom: float  # eV


@dataclass
class RDF(_Unpackable):
    r: np.ndarray  # bin centres, A
    g: np.ndarray
    first_peak: float  # A
    onset: float  # A: centre of the first bin with g(r) > 0, the closest approach sampled (a collapse shows here)


# ---------------------------------------------------------------- LAMMPS input pieces


def _header(boundary: str = "p p p") -> str:
    return f"""units metal
atom_style atomic
atom_modify map array
boundary {boundary}
"""


def _finish_setup(c: Crystal) -> str:
    """Masses, pair style and a thermo line whose computes variables can read after each run/minimize."""
    masses = "\n".join(f"mass {k + 1} {m}" for k, m in enumerate(c.masses))
    return f"""{masses}
{c.pair_lines}
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6] lx ly lz
thermo_modify format float %.17g norm no
"""


def _bulk(c: Crystal, a: float, cells: int, triclinic: bool = False) -> str:
    """A cells^3 supercell of the conventional cubic cell, all atoms of type 1."""
    return _header() + f"""lattice {c.lattice} {a}
region box block 0 {cells} 0 {cells} 0 {cells}
create_box {len(c.elements)} box
create_atoms 1 box
{'change_box all triclinic' if triclinic else ''}
""" + _finish_setup(c)


def _result(tag: str, *expressions: str) -> str:
    """A print line of `RESULT tag v1 v2 ...` with each value an equal-style expression at full precision."""
    return f'print "RESULT {tag} ' + " ".join(f"$({e}:%.17g)" for e in expressions) + '"\n'


VIRIAL = [f"c_pv[{k}]" for k in range(1, 7)]  # bar, LAMMPS order xx yy zz xy xz yz; stress = -pressure


def _results(output: str) -> Dict[str, np.ndarray]:
    found = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            tag, *values = line.split()[1:]
            found[tag] = np.array([float(v) for v in values])
    return found


def _run(script: str, workdir: str, name: str) -> Dict[str, np.ndarray]:
    return _results(run_lammps(script, os.path.join(workdir, name)))


# ---------------------------------------------------------------- properties


def lattice_constant(c: Crystal, workdir: str, cells: int = 2) -> Lattice:
    """Relaxes the cubic cell to zero pressure (box/relax iso 0, ions free) at T=0; twice, since box/relax
    measures the pressure against the box it started from."""
    relax = "fix relax all box/relax iso 0.0 vmax 0.001\n" + MINIMIZE + "\nunfix relax\n"
    script = _bulk(c, c.a, cells) + relax + relax + "run 0\n" + _result("lattice", f"lx/{cells}", "pe/atoms")
    a, energy = _run(script, workdir, "lattice_constant")["lattice"]
    return Lattice(a, energy)


def cohesive_energy(c: Crystal, workdir: str, a: float) -> float:
    """E(isolated atom) - E(bulk)/atom, in eV; the atom sits alone in a 40 A non-periodic box."""
    bulk = _bulk(c, a, 2) + "run 0\n" + _result("bulk", "pe/atoms")
    atom = _header("f f f") + f"""region box block -20 20 -20 20 -20 20 units box
create_box {len(c.elements)} box
create_atoms 1 single 0 0 0 units box
""" + _finish_setup(c) + "run 0\n" + _result("atom", "pe")
    e_bulk = _run(bulk, workdir, "cohesive_energy/bulk")["bulk"][0]
    e_atom = _run(atom, workdir, "cohesive_energy/atom")["atom"][0]
    return e_atom - e_bulk


def _strained(boxes: Sequence[Dict[str, float]]) -> str:
    """LAMMPS lines that, for each box (change_box `final` values, A), deform the reference cell affinely,
    relax the ions at fixed box and print `RESULT k pe vol pxx pyy pzz pxy pxz pyz`."""
    lines = ""
    for k, box in enumerate(boxes):
        change = " ".join(f"{dim} final {'' if dim in ('xy', 'xz', 'yz') else '0 '}{float(value)!r}"
                          for dim, value in box.items())
        lines += f"change_box all {change} remap units box\nrun 0\n{MINIMIZE}\n"
        lines += _result(f"s{k}", "pe", "vol", *VIRIAL)
    return lines


def bulk_modulus(c: Crystal, workdir: str, a: float, strain: float = 0.03, points: int = 7) -> float:
    """B0 in GPa from a 3rd-order Birch-Murnaghan fit of E(V), volumes within +-`strain` of a^3, ions relaxed.

    Birch-Murnaghan's E(V) is a cubic polynomial in x = V^(-2/3), so the fit is linear least squares; at the
    minimum x0 (dE/dx = 0), B0 = V d2E/dV2 = V0 E''(x0) (dx/dV)^2 with dx/dV = -2/3 V^(-5/3).
    """
    cells = 2
    volumes = (a * cells) ** 3 * (1 + np.linspace(-strain, strain, points))
    lengths = np.cbrt(volumes)
    script = _bulk(c, a, cells) + _strained([dict(x=L, y=L, z=L) for L in lengths])
    found = _run(script, workdir, "bulk_modulus")
    energy, volume = np.array([found[f"s{k}"][:2] for k in range(points)]).T
    poly = np.polynomial.Polynomial.fit(volume ** (-2 / 3), energy, 3).convert()
    x0 = _minimum(poly, volume ** (-2 / 3))
    v0 = x0 ** (-1.5)
    return float(v0 * poly.deriv(2)(x0) * (2 / 3 * v0 ** (-5 / 3)) ** 2 * EV_PER_A3_IN_GPA)


def _minimum(poly: np.polynomial.Polynomial, x: np.ndarray) -> float:
    """The real stationary point of `poly` with positive curvature inside the sampled range."""
    roots = poly.deriv().roots()
    roots = roots[np.isreal(roots)].real
    inside = [r for r in roots if x.min() <= r <= x.max() and poly.deriv(2)(r) > 0]
    if not inside:
        raise ValueError("E(V) has no minimum inside the sampled volumes: is a the relaxed lattice constant?")
    return float(inside[0])


def elastic_constants(c: Crystal, workdir: str, a: float, strain: float = 0.005) -> Dict[str, float]:
    """C11, C12, C44 in GPa by central differences of the virial stress (sigma = -p) under strains of
    +-`strain`, ions relaxed at fixed box for each (the internal relaxation that diamond's C44 needs).

    e_xx = e: sigma_xx = C11 e, sigma_yy = sigma_zz = C12 e. Tilt xy = g L (engineering shear g): sigma_xy = C44 g.
    """
    cells = 2
    L = a * cells
    boxes = [dict(x=L * (1 + s)) for s in (strain, -strain)]
    boxes += [dict(x=L, xy=L * s) for s in (strain, -strain)]
    script = _bulk(c, a, cells, triclinic=True) + _strained(boxes)
    found = _run(script, workdir, "elastic_constants")
    stress = [-found[f"s{k}"][2:] * BAR_IN_GPA for k in range(4)]  # xx yy zz xy xz yz
    d_normal = (stress[0] - stress[1]) / (2 * strain)
    d_shear = (stress[2] - stress[3]) / (2 * strain)
    return {"C11": float(d_normal[0]), "C12": float((d_normal[1] + d_normal[2]) / 2), "C44": float(d_shear[3])}


def vacancy_site(lattice: str, a: float, size: int, inward: float = 0.0) -> str:
    """LAMMPS commands that group the atom on a lattice site of a size^3 supercell whose neighbours are all
    inside the box as `gone` and its nearest neighbours as `near`, and move `near` towards the site by `inward`
    nearest-neighbour distances."""
    site = float(a * (size // 2))
    nearest = float(NEAREST_NEIGHBOUR[lattice] * a)
    towards = "".join(f"variable d{x} atom {-inward!r}*({x}-{site!r})*{nearest!r}/v_to_site\n" for x in "xyz")
    move = towards + "displace_atoms near move v_dx v_dy v_dz units box\n" if inward else ""
    return f"""region site sphere {site!r} {site!r} {site!r} 0.1 units box
group gone region site
variable to_site atom sqrt((x-{site!r})^2+(y-{site!r})^2+(z-{site!r})^2)
variable near atom v_to_site<{1.1 * nearest!r}&&v_to_site>0.1
group near variable near
""" + move


def vacancy_formation_energy(c: Crystal, workdir: str, a: float, size: int = 3, rattle: float = 0.01,
                             inward: float = 0.15, seed: int = 2024) -> float:
    """E(N-1) - (N-1)/N E(N) in eV, in a size^3 supercell at the lattice constant a, ions relaxed.

    The lowest of two relaxations: from the lattice with its ions displaced at random by up to `rattle` A (so
    that the minimizer does not stop where the forces vanish by symmetry alone), and from the same with the
    vacancy's nearest neighbours first moved towards it by `inward` nearest-neighbour distances. The second
    start finds reconstructed vacancies that the first cannot reach: Stillinger-Weber Si stays at its
    unrelaxed 4.34 eV from the lattice (the neighbours sit just beyond each other's cutoff, so nothing pulls
    them in) and relaxes to 2.69 eV from the inward start.
    """
    perfect = _bulk(c, a, size) + "run 0\n" + _result("perfect", "pe", "atoms")
    relax = f"""delete_atoms group gone
displace_atoms all random {rattle} {rattle} {rattle} {seed} units box
run 0
{MINIMIZE}
""" + _result("vacancy", "pe")
    energies = []
    for name, moved in (("", 0.0), ("_inward", inward)):
        site = vacancy_site(c.lattice, a, size, moved) + _result("site", "count(gone)", "count(near)")
        found = _run(perfect + site + relax, workdir, f"vacancy_formation_energy{name}")
        e_perfect, n = found["perfect"]
        gone, near = found["site"]
        if gone != 1 or near != COORDINATION[c.lattice]:
            raise RuntimeError(f"vacancy: {gone:.0f} atoms on the site and {near:.0f} around it, expected 1 and "
                               f"{COORDINATION[c.lattice]}")
        energies.append(float(found["vacancy"][0] - (n - 1) / n * e_perfect))
    return min(energies)


def surface_energy(c: Crystal, workdir: str, a: float, miller: str, repeats: Optional[Sequence[int]] = None,
                   vacuum: float = 15.0) -> float:
    """(E_slab - E_bulk) / (2 A) in J/m^2, where E_bulk is the same atoms fully periodic and E_slab has
    `vacuum` A added along the normal z (periodic in x and y), ions relaxed.

    The periodic cell (rectangular, x y z of SURFACES[miller]) starts in the middle of the widest gap between
    atomic planes, so the cut breaks the fewest bonds (diamond (111): the shuffle plane).
    """
    orient, periods = SURFACES[miller]
    repeats = repeats or ((2, 2, 5) if miller == "100" else (3, 2, 3))
    lengths = [float(a * p * n) for p, n in zip(periods, repeats)]
    z0 = _widest_gap(c.lattice, a, orient[2], a * periods[2])
    orientation = " ".join(f"orient {d} {' '.join(map(str, v))}" for d, v in zip("xyz", orient))
    periodic = _header() + f"""lattice {c.lattice} {a} {orientation}
region box block 0 {lengths[0]!r} 0 {lengths[1]!r} {z0!r} {z0 + lengths[2]!r} units box
create_box {len(c.elements)} box
create_atoms 1 box
""" + _finish_setup(c) + "run 0\n" + _result("bulk", "pe", "atoms")
    slab = f"""change_box all z final {z0!r} {z0 + lengths[2] + vacuum!r} units box
run 0
{MINIMIZE}
""" + _result("slab", "pe")
    script = periodic + slab
    found = _run(script, workdir, f"surface_energy_{miller}")
    e_bulk, n = found["bulk"]
    expected = len(BASIS[c.lattice]) * np.prod(lengths) / a ** 3
    if round(n) != round(expected):
        raise RuntimeError(f"surface {miller}: created {n:.0f} atoms, expected {expected:.1f}")
    return float((found["slab"][0] - e_bulk) / (2 * lengths[0] * lengths[1]) * EV_PER_A2_IN_J_PER_M2)


def _widest_gap(lattice: str, a: float, normal, period: float) -> float:
    """Height (along `normal`) of the middle of the widest gap between atomic planes, in [0, period)."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    cells = np.array(np.meshgrid(*[np.arange(-2, 3)] * 3)).reshape(3, -1).T
    heights = ((BASIS[lattice][:, None, :] + cells[None]) @ n * a).ravel() % period
    planes = np.unique(np.round(heights, 6))
    gaps = np.diff(np.append(planes, planes[0] + period))
    k = int(np.argmax(gaps))
    return float(planes[k] + gaps[k] / 2)


def zone_boundary_phonons(c: Crystal, workdir: str, a: float, cells: int = 2, h: float = 0.01) -> List[float]:
    """Frequencies (THz, sorted) at X = (2 pi/a)(1,0,0) from finite-displacement force constants.

    One atom of each sublattice k is displaced by +-h along each axis in a cells^3 supercell;
    Phi(k a; j b) = -dF_jb/du_ka by central differences. X is commensurate with the cubic cell, so the
    supercell's force constants (summed over periodic images) give D at X exactly:
    D(k a, k' b) = sum_{j in k'} Phi(k a; j b) exp(i q.(r_j - r_k)) / sqrt(m_k m_k'); nu = sqrt(eig D)/(2 pi).
    Imaginary modes are returned as negative numbers.
    """
    sublattices = SUBLATTICES[c.lattice] * a
    script = _bulk(c, a, cells) + "run 0\n"
    script += "write_dump all custom positions.dump id x y z modify format float %.17g\n"
    for k, r in enumerate(sublattices):
        script += f"region at{k} sphere {r[0]} {r[1]} {r[2]} 0.1 units box\ngroup moved{k} region at{k}\n"
        script += _result(f"moved{k}", f"count(moved{k})")
        for axis in range(3):
            for sign in (1, -1):
                step = np.zeros(3)
                step[axis] = sign * h
                script += f"""displace_atoms moved{k} move {step[0]} {step[1]} {step[2]} units box
run 0
write_dump all custom forces_{k}_{axis}_{sign:+d}.dump id fx fy fz modify format float %.17g
displace_atoms moved{k} move {-step[0]} {-step[1]} {-step[2]} units box
"""
    folder = os.path.join(workdir, "zone_boundary_phonons")
    found = _results(run_lammps(script, folder))
    assert all(found[f"moved{k}"][0] == 1 for k in range(len(sublattices))), "no atom at a sublattice origin"
    positions = read_dump_frames(os.path.join(folder, "positions.dump"))[0][:, 1:4]
    of_sublattice = _sublattice_of(positions, sublattices, a)
    q = 2 * np.pi / a * np.array([1.0, 0.0, 0.0])
    mass = c.masses[0]  # every atom is of type 1: sqrt(m_k m_k') = m
    n = len(sublattices)
    D = np.zeros((3 * n, 3 * n), complex)
    for k, r in enumerate(sublattices):
        for axis in range(3):
            forces = {s: read_dump_frames(os.path.join(folder, f"forces_{k}_{axis}_{s:+d}.dump"))[0][:, 1:4]
                      for s in (1, -1)}
            phi = -(forces[1] - forces[-1]) / (2 * h)  # (N, 3): Phi(k axis; j b)
            phase = np.exp(1j * (positions - r) @ q)
            for k2 in range(n):
                on = of_sublattice == k2
                D[3 * k + axis, 3 * k2 : 3 * k2 + 3] = (phase[on, None] * phi[on]).sum(0) / mass
    omega2 = np.linalg.eigvalsh((D + D.conj().T) / 2) * EV_PER_A2_AMU_IN_PER_S2
    return sorted(float(np.sign(w) * np.sqrt(abs(w)) / (2 * np.pi) / 1e12) for w in omega2)


def _sublattice_of(positions: np.ndarray, sublattices: np.ndarray, a: float) -> np.ndarray:
    """Index of the sublattice of each atom: r - r_k is an fcc lattice vector (a/2 (h k l), h+k+l even)."""
    which = np.full(len(positions), -1)
    for k, r in enumerate(sublattices):
        hkl = (positions - r) / (a / 2)
        on = (np.abs(hkl - np.round(hkl)).max(1) < 1e-3) & (np.round(hkl).sum(1) % 2 == 0)
        which[on] = k
    if (which < 0).any():
        raise RuntimeError("zone_boundary_phonons: atoms off the ideal lattice")
    return which


def liquid_rdf(c: Crystal, workdir: str, temperature: float, a: float, steps: int = 6000, seed: int = 12345,
               cells: int = 0, melt_temperature: Optional[float] = None, timestep: float = 0.001,
               bins: int = 120, cutoff: float = 6.0) -> RDF:
    """g(r) of the liquid from NPT molecular dynamics at zero pressure (Nose-Hoover, iso).

    The crystal (~500 atoms: 5^3 fcc or 4^3 diamond cells unless `cells` is given) is melted for steps/3 at
    `melt_temperature` (default 1.5 T), equilibrated for steps/3 at T and g(r) is averaged every 10 steps over
    the last steps/3. The first peak is the vertex of the parabola through the highest bin and its neighbours.
    """
    cells = cells or (5 if c.lattice == "fcc" else 4)
    melt = melt_temperature or 1.5 * temperature
    stage = steps // 3 // 10 * 10
    script = _bulk(c, a, cells) + f"""comm_modify cutoff {cutoff + 3.0}
compute rdf all rdf {bins} cutoff {cutoff}
timestep {timestep}
thermo 500
velocity all create {melt} {seed} mom yes rot yes dist gaussian
fix md all npt temp {melt} {melt} {100 * timestep} iso 0 0 {1000 * timestep}
run {stage}
unfix md
fix md all npt temp {temperature} {temperature} {100 * timestep} iso 0 0 {1000 * timestep}
run {stage}
reset_timestep 0
fix gr all ave/time 10 {stage // 10} {stage} c_rdf[*] file rdf.dat mode vector
run {stage}
"""
    folder = os.path.join(workdir, "liquid_rdf")
    run_lammps(script, folder)
    r, g = _read_rdf(os.path.join(folder, "rdf.dat"))
    return RDF(r, g, _parabola_peak(r, g), _onset(r, g))


def _read_rdf(path: str):
    """Bin centres and g(r) of the last block of a `fix ave/time ... c_rdf[*] mode vector` file."""
    with open(path) as f:
        rows = [l.split() for l in f if not l.startswith("#")]
    start = max(k for k, row in enumerate(rows) if len(row) == 2) + 1  # "timestep nrows" opens a block
    block = np.array(rows[start:], float)  # row, r, g(r), coordination
    return block[:, 1], block[:, 2]


def _onset(r: np.ndarray, g: np.ndarray) -> float:
    """Centre of the first bin where g(r) > 0 (NaN for an empty g)."""
    found = np.flatnonzero(g > 0)
    return float(r[found[0]]) if len(found) else float("nan")


def _parabola_peak(r: np.ndarray, g: np.ndarray) -> float:
    """The maximum of the parabola through the highest bin and its neighbours; the bin itself at either end
    (a collapsed liquid peaks in the first bin)."""
    k = int(np.argmax(g))
    if k == 0 or k == len(g) - 1:
        return float(r[k])
    g0, g1, g2 = g[k - 1 : k + 2]
    return float(r[k] + (r[1] - r[0]) * (g0 - g2) / (2 * (g0 - 2 * g1 + g2)))


def all_properties(c: Crystal, workdir: str, liquid_temperature: Optional[float] = None) -> dict:
    """Every property, the relaxed lattice constant fed to the others; `seconds` holds each call's time. A
    property whose LAMMPS run fails (a lost atom, a timeout) is NaN, with LAMMPS's message in `failures`; the
    others are still measured."""
    results, seconds, failures = {}, {}, {}

    def timed(name, function, *args, fallback=float("nan")):
        start = time.perf_counter()
        try:
            value = function(c, workdir, *args)
        except LammpsError as e:
            value = fallback
            failures[name] = str(e)
        seconds[name] = time.perf_counter() - start
        return value

    start = time.perf_counter()
    lattice = lattice_constant(c, workdir)  # everything else needs it: its failure is the function's
    seconds["lattice_constant"] = time.perf_counter() - start
    a = lattice.a
    results.update(a=a, energy_per_atom=lattice.energy_per_atom)
    results["cohesive_energy"] = timed("cohesive_energy", cohesive_energy, a)
    results["bulk_modulus"] = timed("bulk_modulus", bulk_modulus, a)
    nan = float("nan")
    results.update(timed("elastic_constants", elastic_constants, a, fallback=dict(C11=nan, C12=nan, C44=nan)))
    results["vacancy_formation_energy"] = timed("vacancy_formation_energy", vacancy_formation_energy, a)
    for miller in SURFACES:
        results[f"surface_energy_{miller}"] = timed(f"surface_energy_{miller}", surface_energy, a, miller)
    results["x_phonons"] = timed("zone_boundary_phonons", zone_boundary_phonons, a)
    if liquid_temperature is not None:
        rdf = timed("liquid_rdf", liquid_rdf, liquid_temperature, a, fallback=None)
        if rdf is not None:
            results.update(rdf_r=rdf.r, rdf_g=rdf.g, rdf_first_peak=rdf.first_peak, rdf_onset=rdf.onset)
        else:
            results["rdf_first_peak"] = results["rdf_onset"] = nan
    if failures:
        results["failures"] = failures
    results["seconds"] = seconds
    return results
