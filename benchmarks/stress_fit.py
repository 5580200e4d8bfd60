"""Where a model's elastic constants come from: its stress on the training set's 0 K crystals, and its
stress-strain response, against the reference potential's.

    . .venv/bin/activate && python benchmarks/stress_fit.py --system si --workdir /tmp/props/si [--model M.pt2]

For a folder that benchmarks/properties.py trained (its train.xyz and model.pt2):
1. the structures at rest in train.xyz (perfect strained lattices: every atom's force of the same size) and,
   for each, the model's shear stress (the largest off-diagonal component) and pressure over the reference's,
   next to the same ratios fitted over every frame (the thermal ones weigh most there);
2. the elastic constants as secants of the stress at engineering strains 0.25-3%, ions relaxed (as
   vivace.properties.elastic_constants at 0.5%) and unrelaxed, for the model and the reference in LAMMPS.
A model whose C44 is 5% stiff at 0.5% and at 3% strain, and whose shear stresses on the 0 K crystals it was
trained on are too large by the same amount, has not fitted those crystals; one that fits them but not the
small strains lacks data there.
"""

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

STRAINS = (0.0025, 0.005, 0.01, 0.02, 0.03)
OFF_DIAGONAL = ([0, 0, 1], [1, 2, 2])


def at_rest(atoms) -> bool:
    """A perfect (strained) lattice of one element: every atom's force of the same size."""
    forces = np.linalg.norm(atoms.get_forces(), axis=1)
    return len(set(atoms.get_chemical_symbols())) == 1 and forces.std() < 1e-6


def stress_ratios(train_xyz: str, artifact: str) -> str:
    import ase.io

    from vivace.calculators import VivaceCalculator
    from vivace.properties import EV_PER_A3_IN_GPA

    calc = VivaceCalculator(artifact)
    rows, seen = [], set()
    for atoms in ase.io.read(train_xyz, ":"):
        reference = atoms.get_stress(voigt=False).copy() * EV_PER_A3_IN_GPA
        if atoms.get_potential_energy() in seen:  # a copy (properties.py --rest-copies)
            continue
        seen.add(atoms.get_potential_energy())
        rest = at_rest(atoms)
        atoms.calc = calc
        rows.append((rest, reference, atoms.get_stress(voigt=False) * EV_PER_A3_IN_GPA))
    lines = [f"{'structure at rest':>18} {'shear ref GPa':>14} {'model/ref':>10} {'pressure ref GPa':>17} {'model/ref':>10}"]
    shear_ratios, pressure_ratios = [], []
    for rest, ref, model in rows:
        if not rest:
            continue
        k = np.argmax(np.abs(ref[OFF_DIAGONAL]))
        shear, shear_model = ref[OFF_DIAGONAL][k], model[OFF_DIAGONAL][k]
        p, p_model = -np.trace(ref) / 3, -np.trace(model) / 3
        shear_ratio = shear_model / shear if abs(shear) > 0.05 else float("nan")
        pressure_ratio = p_model / p if abs(p) > 0.05 else float("nan")
        shear_ratios.append(shear_ratio)
        pressure_ratios.append(pressure_ratio)
        lines.append(f"{len(shear_ratios):>18} {shear:>+14.3f} {shear_ratio:>10.4f} {p:>+17.3f} {pressure_ratio:>10.4f}")
    lines.append(f"{'median':>18} {'':>14} {np.nanmedian(shear_ratios):>10.4f} {'':>17} {np.nanmedian(pressure_ratios):>10.4f}")
    ref = np.array([r[1] for r in rows])
    model = np.array([r[2] for r in rows])
    slope_shear = np.polyfit(ref[:, OFF_DIAGONAL[0], OFF_DIAGONAL[1]].ravel(), model[:, OFF_DIAGONAL[0], OFF_DIAGONAL[1]].ravel(), 1)[0]
    slope_p = np.polyfit(-np.trace(ref, axis1=1, axis2=2), -np.trace(model, axis1=1, axis2=2), 1)[0]
    lines.append(f"all {len(rows)} frames (each once), least-squares slope model against reference: shear {slope_shear:.4f}, "
                 f"pressure {slope_p:.4f}")
    return "\n".join(lines)


def secants(s, pair_lines: str, workdir: str, relaxed: bool) -> dict:
    """C11, C12, C44 (GPa) as central-difference secants at each of STRAINS."""
    from vivace import properties as P

    crystal = P.Crystal(s.lattice, s.a, s.elements, s.masses, pair_lines)
    a = P.lattice_constant(crystal, workdir).a
    L = 2 * a
    boxes = [dict(x=L * (1 + sign * e)) for e in STRAINS for sign in (1, -1)]
    boxes += [dict(x=L, xy=sign * L * e) for e in STRAINS for sign in (1, -1)]
    script = P._strained(boxes)
    if not relaxed:
        script = script.replace(P.MINIMIZE, "")
    found = P._run(P._bulk(crystal, a, 2, triclinic=True) + script, workdir, "relaxed" if relaxed else "unrelaxed")
    stress = np.array([-found[f"s{k}"][2:] * P.BAR_IN_GPA for k in range(len(boxes))])  # xx yy zz xy xz yz
    n = len(STRAINS)
    normal = (stress[0:2 * n:2] - stress[1:2 * n:2]) / (2 * np.array(STRAINS))[:, None]
    shear = (stress[2 * n::2] - stress[2 * n + 1::2]) / (2 * np.array(STRAINS))[:, None]
    return {"C11": normal[:, 0], "C12": (normal[:, 1] + normal[:, 2]) / 2, "C44": shear[:, 3]}


def main(argv=None) -> int:
    from properties import SYSTEMS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    parser.add_argument("--workdir", required=True, help="a folder of benchmarks/properties.py with train.xyz")
    parser.add_argument("--model", default=None, help="the artifact (default: WORKDIR/model.pt2)")
    args = parser.parse_args(argv)
    s = SYSTEMS[args.system]
    artifact = args.model or os.path.join(args.workdir, "model.pt2")
    print(f"# {s.name}: {artifact}")
    print(stress_ratios(os.path.join(args.workdir, "train.xyz"), artifact))
    codes = {"reference": s.pair_lines(),
             "model": f"pair_style allegro\npair_coeff * * {artifact} {' '.join(s.elements)}"}  # fmt: skip
    print(f"\nsecants at engineering strains {', '.join(f'{100 * e:g}%' for e in STRAINS)}, GPa")
    for relaxed in (True, False):
        found = {code: secants(s, lines, os.path.join(args.workdir, "stress_fit", code), relaxed)
                 for code, lines in codes.items()}  # fmt: skip
        for name in ("C11", "C12", "C44"):
            ref, model = found["reference"][name], found["model"][name]
            print(f"{name} {'relaxed' if relaxed else 'unrelaxed':>9}  reference " + " ".join(f"{v:7.2f}" for v in ref)
                  + "  model/reference " + " ".join(f"{m / r:6.4f}" for m, r in zip(model, ref)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
