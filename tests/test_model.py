"""Physics of the eager Allegro model against independent computations (finite differences, rotations)."""

import numpy as np
import pytest
import torch

from conftest import HYPER, TYPE_NAMES, alloy
from vivace.data import collate, structures_from_frames
from vivace.models import EdgeForceModel, build_model
from vivace.training import predict


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return build_model("allegro", HYPER, TYPE_NAMES, "float64").eval()


def energy_of(model, atoms):
    batch = collate(structures_from_frames([atoms], TYPE_NAMES, HYPER["r_max"]))
    energy, forces = predict(model, batch)
    return energy.item(), forces.detach().numpy()


def test_forces_are_minus_finite_difference_gradient(model):
    atoms = alloy("triclinic", seed=3)
    _, forces = energy_of(model, atoms)
    h = 1e-5
    for atom, axis in [(0, 0), (5, 1), (17, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        fd = -(energy_of(model, plus)[0] - energy_of(model, minus)[0]) / (2 * h)
        assert abs(fd - forces[atom, axis]) < 1e-7 * max(1.0, abs(fd))


def test_stress_is_finite_strain_derivative(model):
    from vivace.calculators import VivaceCalculator

    atoms = alloy("triclinic", seed=4)
    spec = {"type_names": TYPE_NAMES, "hyperparameters": HYPER}
    atoms.calc = VivaceCalculator((model, spec))
    stress = atoms.get_stress(voigt=False)
    h = 1e-6
    for a, b in [(0, 0), (1, 2), (0, 1)]:
        energies = []
        for sign in (1, -1):
            strained = atoms.copy()
            eps = np.eye(3)
            eps[a, b] += sign * h
            strained.set_cell(atoms.cell.array @ eps, scale_atoms=True)
            strained.calc = VivaceCalculator((model, spec))
            energies.append(strained.get_potential_energy())
        fd = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
        assert abs(fd - stress[a, b]) < 1e-7 * max(1e-3, abs(fd))


def test_rotation_and_reflection(model):
    torch.manual_seed(0)
    atoms = alloy("orthogonal", seed=5)
    structure = structures_from_frames([atoms], TYPE_NAMES, HYPER["r_max"])[0]
    vectors = torch.from_numpy(atoms.positions[structure.edge_index[1]] - atoms.positions[structure.edge_index[0]] + structure.shifts)
    edge_index, types = torch.from_numpy(structure.edge_index), torch.from_numpy(structure.atom_types)
    wrapper = EdgeForceModel(model)
    n = torch.tensor(len(atoms))
    energy, g = wrapper(vectors, edge_index, types, n)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    for rotation in (q, -q):  # proper and improper
        energy_r, g_r = wrapper(vectors @ rotation.T, edge_index, types, n)
        assert torch.allclose(energy_r, energy, atol=1e-12, rtol=0)
        assert torch.allclose(g_r, g @ rotation.T, atol=1e-12, rtol=0)


def test_strict_locality(model):
    """E_i does not change when an atom beyond r_max of i moves."""
    atoms = alloy("orthogonal", seed=6)
    structure = structures_from_frames([atoms], TYPE_NAMES, HYPER["r_max"])[0]
    positions = torch.from_numpy(atoms.positions).requires_grad_(True)
    ei = torch.from_numpy(structure.edge_index)
    vectors = positions[ei[1]] - positions[ei[0]] + torch.from_numpy(structure.shifts)
    atomic = model(vectors, ei, torch.from_numpy(structure.atom_types))
    (grad,) = torch.autograd.grad(atomic[0], positions)
    neighbors = set(structure.edge_index[1][structure.edge_index[0] == 0].tolist()) | {0}
    far = [k for k in range(len(atoms)) if k not in neighbors]
    assert far, "test structure needs atoms beyond the cutoff of atom 0"
    assert torch.all(grad[far] == 0)
    assert grad[sorted(neighbors)].abs().max() > 0


def test_smooth_at_cutoff(model):
    """A pair's energy and force go to zero continuously as its distance reaches r_max."""
    r_max = HYPER["r_max"]
    types = torch.tensor([0, 1])
    ei = torch.tensor([[0, 1], [1, 0]])
    wrapper = EdgeForceModel(model)
    values = []
    for r in (r_max - 0.5, r_max - 1e-3, r_max + 1e-6):
        v = torch.tensor([[r, 0.0, 0.0], [-r, 0.0, 0.0]], dtype=torch.float64)
        e, g = wrapper(v, ei, types, torch.tensor(2))
        values.append(((e - model.scale_shift.shift[types]).sum().item(), g.abs().max().item()))
    inside, near, beyond = values
    assert abs(inside[0]) > 1e-6 and inside[1] > 1e-6
    assert abs(near[0]) < 1e-10 * abs(inside[0]) and near[1] < 1e-10 * inside[1]
    assert beyond == (0.0, 0.0)


def test_isolated_atom_energy_is_its_shift(model):
    e, _ = EdgeForceModel(model)(
        torch.zeros(0, 3, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 1]), torch.tensor(2)
    )
    assert torch.allclose(e, torch.tensor(HYPER["energy_shift"], dtype=torch.float64))
