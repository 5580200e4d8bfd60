"""Reference data from a classical potential in LAMMPS: frames of strained and sheared boxes, labelled with
energy, forces and stress, checked against separate single points and a finite strain difference."""

import numpy as np
import pytest
from ase.stress import full_3x3_to_voigt_6_stress

from vivace.lammps_run import deformation_commands, nvt_frames, sampled_states, single_point, wheel_potential

EAM = f"pair_style eam\npair_coeff 1 1 {wheel_potential('Cu_u3.eam')}"
SYSTEM = f"lattice fcc 3.615\nregion box block 0 3 0 3 0 3\ncreate_box 1 box\ncreate_atoms 1 box\nmass 1 63.546\n{EAM}"


def test_sampled_states_cover_volumes_shears_and_uneven_stretches():
    states = sampled_states(12, (100, 1300), max_strain=0.02, max_shear=0.03, seed=0)
    volumes = [np.prod(1 + np.array(normal)) - 1 for _, normal, _ in states]
    assert min(volumes) < -0.04 and max(volumes) > 0.04
    assert sum(any(shear) for _, _, shear in states) == 6
    uneven = [np.ptp(normal) for _, normal, shear in states if not any(shear)]
    assert len(uneven) == 6 and min(uneven) > 0.005 and max(uneven) <= 0.06  # C11 - C12 is sampled
    assert all(100 <= t <= 1300 for t, _, _ in states)


def test_sheared_frames_have_the_potentials_energy_forces_and_stress(tmp_path):
    frames = nvt_frames(str(tmp_path / "md"), SYSTEM, ["Cu"], 600, 3, 2, 20, equilibrate=50,
                        deform=deformation_commands((0.015, -0.01, 0.02), (0.02, -0.03, 0.01)), at_rest=True)
    assert len(frames) == 3
    # at rest: the strained perfect lattice, where every atom's forces cancel and the stress is the static one
    rest, atoms = frames[0], frames[-1]
    np.testing.assert_allclose(rest.cell.array, atoms.cell.array, rtol=1e-12)
    assert np.abs(rest.get_forces()).max() < 1e-10 < np.abs(atoms.get_forces()).max()
    still = single_point(rest, EAM, ["Cu"], str(tmp_path / "rest"))
    assert still.energy == pytest.approx(rest.get_potential_energy(), rel=1e-12)
    assert still.energy < atoms.get_potential_energy()
    assert abs(atoms.cell.angles() - 90).max() > 0.5  # really triclinic
    lengths = 3 * 3.615 * np.array([1.015, 0.99, 1.02])
    np.testing.assert_allclose(np.diag(atoms.cell.array), lengths, rtol=1e-12)
    # tilts xy, xz, yz as fractions of the box lengths (ASE's cell rows: b = (xy, ly, 0), c = (xz, yz, lz))
    cell = atoms.cell.array
    np.testing.assert_allclose([cell[1, 0], cell[2, 0], cell[2, 1]], [0.02 * lengths[1], -0.03 * lengths[2], 0.01 * lengths[2]],
                               rtol=1e-12)  # fmt: skip
    point = single_point(atoms, EAM, ["Cu"], str(tmp_path / "sp"))
    assert point.energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(point.forces, atoms.get_forces(), atol=1e-9)

    # sigma = (1/V) dE/d(strain), the ASE sign, by central differences of LAMMPS energies
    h, volume = 1e-5, atoms.get_volume()
    stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            energies = []
            for sign in (1, -1):
                strain = np.zeros((3, 3))
                strain[a, b] = strain[b, a] = sign * h / 2 if a != b else sign * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
                energies.append(single_point(strained, EAM, ["Cu"], str(tmp_path / "fd")).energy)
            stress[a, b] = stress[b, a] = (energies[0] - energies[1]) / (2 * h) / volume
    np.testing.assert_allclose(atoms.get_stress(), full_3x3_to_voigt_6_stress(stress), atol=2e-7)
    assert np.abs(atoms.get_stress()).max() > 1e-3
