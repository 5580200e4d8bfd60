"""Physics of the eager models (Allegro and NequIP, float32 and float64) against independent computations.

Tolerances (relative to the largest magnitude of the quantity compared):
- symmetry, batching and periodic-image checks: 1e-10 in float64, 1e-4 in float32;
- finite differences (central, step h): 1e-7 in float64 (h = 1e-5; truncation h^2, round-off 1e-16/h),
  2e-3 in float32 (h = 1e-3; the float32 round-off of E divided by h dominates).
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from conftest import HYPER, NEQUIP_HYPER, R_MAX, SHIFTS, TYPE_NAMES, alloy
from vivace.calculators import VivaceCalculator
from vivace.data import collate, structures_from_frames
from vivace.models import EdgeForceModel, build_model
from vivace.losses import predict

MODELS = {"allegro": HYPER, "nequip": NEQUIP_HYPER}
# Other corners of each model's options, checked for symmetry, gradients and locality in float64.
VARIANTS = {
    "allegro-lmax1-noparity-1layer": ("allegro", dict(MODELS["allegro"], l_max=1, parity=False, num_layers=1)),
    "allegro-lmax3-3layers-residual-readout-all-ungated": (
        "allegro",
        dict(MODELS["allegro"], l_max=3, num_layers=3, latent_update="residual", readout_latents="all",
             tensor_gating=False),
    ),
    "allegro-4layers-pertype-cutoffs-zbl-concat-embedding-envelope-every-layer": (
        "allegro",
        dict(
            MODELS["allegro"],
            l_max=1,
            num_layers=4,
            two_body_embedding="concat",
            layer_envelope=True,
            avg_num_neighbors=[14.0, 25.0],
            edge_type_cutoffs={"Al-Cu": 3.3, "Cu": {"Cu": 3.6}},
            zbl=True,
        ),
    ),
    "nequip-lmax1-noparity-3layers": ("nequip", dict(MODELS["nequip"], l_max=1, parity=False, num_layers=3)),
    "nequip-lmax3-resnet-pertype-cutoffs-zbl": (
        "nequip",
        dict(
            MODELS["nequip"],
            l_max=3,
            resnet=True,
            avg_num_neighbors=[14.0, 25.0],
            edge_type_cutoffs={"Al-Al": 3.5},
            zbl=True,
        ),
    ),
}
SYMMETRY_TOL = {"float64": 1e-10, "float32": 1e-4}
FD = {"float64": (1e-5, 1e-7), "float32": (1e-3, 2e-3)}


def make(kind: str, hyper: dict, dtype: str, seed: int = 1):
    torch.manual_seed(seed)
    return build_model(kind, hyper, TYPE_NAMES, dtype).eval()


def calculator(model, hyper):
    return VivaceCalculator((model, {"type_names": TYPE_NAMES, "hyperparameters": hyper}))


def results(model, hyper, atoms):
    atoms = atoms.copy()
    atoms.calc = calculator(model, hyper)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "energies": atoms.get_potential_energies()}
    if atoms.cell.rank == 3 and atoms.pbc.all():
        out["stress"] = atoms.get_stress(voigt=False)
    return out


def close(a, b, tol):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(np.abs(b).max(), 1e-12)
    assert np.abs(a - b).max() <= tol * scale, f"deviation {np.abs(a - b).max() / scale:.2e} > {tol:.0e}"


def graph_inputs(atoms, r_max=R_MAX):
    s = structures_from_frames([atoms], TYPE_NAMES, r_max)[0]
    vectors = atoms.positions[s.edge_index[1]] - atoms.positions[s.edge_index[0]] + s.shifts
    return torch.from_numpy(vectors), torch.from_numpy(s.edge_index), torch.from_numpy(s.atom_types)


both_models = pytest.mark.parametrize("kind", list(MODELS))
both_dtypes = pytest.mark.parametrize("dtype", ["float64", "float32"])
variants = pytest.mark.parametrize("variant", list(VARIANTS))


def check_rotations(model, hyper, atoms, tol, seed, translation=(0.0, 0.0, 0.0)):
    """Energy invariant; forces rotate as vectors and stress as a rank-2 tensor, for proper and improper R."""
    ref = results(model, hyper, atoms)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    for rotation in (q.numpy(), -q.numpy()):
        moved = atoms.copy()
        moved.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
        moved.positions = atoms.positions @ rotation.T + np.array(translation)
        out = results(model, hyper, moved)
        close(out["energy"], ref["energy"], tol)
        close(out["forces"], ref["forces"] @ rotation.T, tol)
        close(out["stress"], rotation @ ref["stress"] @ rotation.T, tol)
    return ref


def central_difference(model, hyper, atoms, displace, h):
    """(E(+h) - E(-h)) / 2h, where displace(copy, step) moves a copy of `atoms` by the step."""
    energies = []
    for step in (h, -h):
        moved = atoms.copy()
        displace(moved, step)
        energies.append(results(model, hyper, moved)["energy"])
    return (energies[0] - energies[1]) / (2 * h)


def check_finite_difference_forces(model, hyper, atoms, forces, points, h, tol):
    for atom, axis in points:

        def displace(moved, step):
            moved.positions[atom, axis] += step

        fd = -central_difference(model, hyper, atoms, displace, h)
        assert abs(fd - forces[atom, axis]) <= tol * np.abs(forces).max()


@both_models
@both_dtypes
def test_rotation_reflection_translation(kind, dtype):
    model = make(kind, MODELS[kind], dtype)
    check_rotations(model, MODELS[kind], alloy("triclinic", seed=5), SYMMETRY_TOL[dtype], 0, (0.3, -1.7, 2.2))


@both_models
@both_dtypes
def test_permutation(kind, dtype):
    model, hyper, tol = make(kind, MODELS[kind], dtype), MODELS[kind], SYMMETRY_TOL[dtype]
    atoms = alloy("orthogonal", seed=7)
    order = np.random.default_rng(0).permutation(len(atoms))
    ref, out = results(model, hyper, atoms), results(model, hyper, atoms[order])
    close(out["energy"], ref["energy"], tol)
    close(out["energies"], ref["energies"][order], tol)
    close(out["forces"], ref["forces"][order], tol)


@both_models
@both_dtypes
def test_forces_are_minus_finite_difference_gradient(kind, dtype):
    model, hyper = make(kind, MODELS[kind], dtype), MODELS[kind]
    h, tol = FD[dtype]
    atoms = alloy("triclinic", seed=3)
    forces = results(model, hyper, atoms)["forces"]
    check_finite_difference_forces(model, hyper, atoms, forces, [(0, 0), (5, 1), (17, 2)], h, tol)


@both_models
@both_dtypes
def test_stress_is_finite_strain_derivative(kind, dtype):
    model, hyper = make(kind, MODELS[kind], dtype), MODELS[kind]
    h, tol = FD[dtype]
    atoms = alloy("triclinic", seed=4)
    stress = results(model, hyper, atoms)["stress"]
    for a, b in [(0, 0), (1, 2), (0, 1), (2, 2)]:

        def strain(moved, step):
            eps = np.eye(3)
            eps[a, b] += step
            moved.set_cell(atoms.cell.array @ eps, scale_atoms=True)

        fd = central_difference(model, hyper, atoms, strain, h) / atoms.get_volume()
        assert abs(fd - stress[a, b]) <= tol * np.abs(stress).max()


SMOOTH_CASES = {
    "allegro": ("allegro", HYPER),
    "nequip": ("nequip", NEQUIP_HYPER),
    "allegro-envelope-every-layer": ("allegro", dict(HYPER, two_body_embedding="concat", layer_envelope=True)),
}


@pytest.mark.parametrize("case", list(SMOOTH_CASES))
@both_dtypes
def test_smooth_at_cutoff(case, dtype):
    """A pair's energy and force go to zero continuously as its distance reaches r_max, and are exactly
    zero beyond. The envelope is C^2 (it vanishes as (1 - x)^3), so in float64 the pair energy must fall at
    least as delta^3 and the force as delta^2 with the distance delta to the cutoff (Allegro's default, with the
    envelope applied once, through the radial basis, falls exactly so; with it in every layer, faster)."""
    kind, hyper = SMOOTH_CASES[case]
    model = make(kind, hyper, dtype)
    wrapper = EdgeForceModel(model)

    def pair(r):
        v = torch.tensor([[r, 0.0, 0.0], [-r, 0.0, 0.0]], dtype=torch.float64)
        e, g = wrapper(v, torch.tensor([[0, 1], [1, 0]]), torch.tensor([0, 1]), torch.tensor(2))
        return abs((e.detach() - torch.tensor(SHIFTS, dtype=torch.float64)).sum().item()), g.abs().max().item()

    inside, beyond = pair(R_MAX - 0.5), pair(R_MAX + 1e-6)
    assert inside[0] > 1e-6 and inside[1] > 1e-6
    assert beyond == (0.0, 0.0)
    if dtype == "float64":
        far, near = pair(R_MAX * (1 - 1e-2)), pair(R_MAX * (1 - 1e-3))
        assert near[0] <= 2e-3 * far[0] and near[1] <= 2e-2 * far[1]
    else:
        near = pair(R_MAX - 1e-3)
        assert near[0] <= 1e-4 * inside[0] and near[1] <= 1e-4 * inside[1]


@both_models
@both_dtypes
def test_isolated_atom_energy_is_its_shift(kind, dtype):
    model = make(kind, MODELS[kind], dtype)
    e, g = EdgeForceModel(model)(
        torch.zeros(0, 3, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 1]), torch.tensor(2)
    )
    assert torch.equal(e.detach(), torch.tensor(SHIFTS, dtype=torch.float64)) and g.shape == (0, 3)
    atoms = Atoms("AlCu", positions=[[0, 0, 0], [2 * R_MAX, 0, 0]])
    close(results(model, MODELS[kind], atoms)["energies"], SHIFTS, 1e-15)


@both_models
@both_dtypes
def test_batch_equals_each_structure_alone(kind, dtype):
    model, tol = make(kind, MODELS[kind], dtype), SYMMETRY_TOL[dtype]
    frames = [alloy("orthogonal", seed=8), alloy("triclinic", seed=9), Atoms("AlCuAl", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.5, 0.3]])]
    structures = structures_from_frames(frames, TYPE_NAMES, R_MAX)
    together = predict(EdgeForceModel(model), collate(structures))
    offset = 0
    for k, s in enumerate(structures):
        alone = predict(EdgeForceModel(model), collate([s]))
        close(together.energy[k].item(), alone.energy.item(), tol)
        close(together.forces[offset : offset + s.num_atoms].detach(), alone.forces.detach(), tol)
        close(together.stress[k].detach(), alone.stress[0].detach(), tol)
        offset += s.num_atoms


@both_models
@both_dtypes
def test_periodic_images(kind, dtype):
    """Wrapped and unwrapped positions agree, and an n-fold supercell has n times the energy."""
    model, hyper, tol = make(kind, MODELS[kind], dtype), MODELS[kind], SYMMETRY_TOL[dtype]
    atoms = alloy("triclinic", seed=10)
    ref = results(model, hyper, atoms)
    unwrapped = atoms.copy()
    images = np.random.default_rng(1).integers(-2, 3, size=(len(atoms), 3))
    unwrapped.positions += images @ atoms.cell.array
    out = results(model, hyper, unwrapped)
    close(out["energy"], ref["energy"], tol)
    close(out["forces"], ref["forces"], tol)
    close(out["stress"], ref["stress"], tol)
    supercell = results(model, hyper, atoms.repeat((2, 1, 3)))
    close(supercell["energy"], 6 * ref["energy"], tol)
    close(supercell["forces"], np.tile(ref["forces"], (6, 1)), tol)
    close(supercell["stress"], ref["stress"], tol)


@variants
def test_variant_symmetry_and_gradients(variant):
    """Each option combination: rotation/reflection equivariance and forces equal to finite differences."""
    kind, hyper = VARIANTS[variant]
    model = make(kind, hyper, "float64")
    atoms = alloy("triclinic", seed=11)
    ref = check_rotations(model, hyper, atoms, 1e-10, 2)
    check_finite_difference_forces(model, hyper, atoms, ref["forces"], [(1, 0), (9, 2)], *FD["float64"])


def hops_from(edge_index: np.ndarray, start: int, num_nodes: int) -> np.ndarray:
    """Graph distance (number of edges) from `start` to every node; -1 where unreachable."""
    hops = np.full(num_nodes, -1)
    hops[start], frontier, depth = 0, {start}, 0
    while frontier:
        depth += 1
        nxt = set(edge_index[1][np.isin(edge_index[0], list(frontier))].tolist())
        frontier = {k for k in nxt if hops[k] < 0}
        hops[list(frontier)] = depth
    return hops


@pytest.mark.parametrize("variant", ["allegro", "nequip"] + list(VARIANTS))
def test_receptive_field(variant):
    """dE_0/dx_k is exactly zero when k is more than `message_passing_depth` edges from atom 0 (Allegro:
    only atom 0 and its own neighbors matter, strictly local), and non-zero for some atom at that depth."""
    kind, hyper = VARIANTS.get(variant, (variant, MODELS.get(variant)))
    model = make(kind, hyper, "float64")
    rng = np.random.default_rng(6)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((1, 1, 8))  # a 30 A rod with open ends
    atoms.pbc = False
    atoms.symbols[rng.choice(len(atoms), len(atoms) // 3, replace=False)] = "Al"
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    s = structures_from_frames([atoms], TYPE_NAMES, R_MAX)[0]
    r_cut = model.geometry.r_cut
    vec = atoms.positions[s.edge_index[1]] - atoms.positions[s.edge_index[0]]
    if r_cut is not None:  # edges beyond their pair cutoff do not connect anything
        keep = np.linalg.norm(vec, axis=1) < r_cut.numpy()[s.atom_types[s.edge_index[0]], s.atom_types[s.edge_index[1]]]
        graph = s.edge_index[:, keep]
    else:
        graph = s.edge_index
    positions = torch.from_numpy(atoms.positions).requires_grad_(True)
    ei = torch.from_numpy(s.edge_index)
    atomic = model(positions[ei[1]] - positions[ei[0]], ei, torch.from_numpy(s.atom_types))
    (grad,) = torch.autograd.grad(atomic[0], positions)
    hops = hops_from(graph, 0, len(atoms))
    depth = model.message_passing_depth
    outside = (hops < 0) | (hops > depth)
    assert outside.any(), "test structure too small to reach beyond the receptive field"
    assert torch.all(grad[torch.from_numpy(outside)] == 0)
    assert grad[torch.from_numpy(hops == depth)].abs().max() > 0


def test_gate_is_the_same_in_both_executions():
    """The exported gate (a block per irrep, no index_select) equals the eager one (an index_select), values
    and gradients, also when scripted; odd scalars go through tanh, so flipping their sign flips the output's."""
    from e3nn import o3

    from vivace.nn.execution import set_execution
    from vivace.nn.gate import Gate

    gate = Gate(o3.Irreps("3x0e + 2x0o"), o3.Irreps("2x1o + 3x1e + 2x2e"))
    x = torch.randn(7, gate.irreps_in.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weights = torch.randn(7, gate.irreps_out.dim, dtype=torch.float64)
    results = []
    for execution in ("eager", "export", "export"):
        module = set_execution(gate, execution) if len(results) < 2 else torch.jit.script(set_execution(gate, execution))
        y = module(x)
        (grad,) = torch.autograd.grad((y * weights).sum(), x)
        results.append((y.detach(), grad))
    for y, grad in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.allclose(grad, results[0][1], rtol=0, atol=1e-15)
    traced = {e: str(torch.jit.trace(set_execution(gate, e), x.detach()).graph) for e in ("eager", "export")}
    assert "index_select" in traced["eager"] and "index_select" not in traced["export"]
    scalars_only = torch.jit.script(set_execution(Gate(o3.Irreps("4x0e"), o3.Irreps("")), "export"))  # a last layer
    assert scalars_only(x.detach()[:, :4]).shape == (7, 4)
    flipped = x.detach().clone()
    flipped[:, 3:5] *= -1
    assert torch.equal(gate(flipped)[:, 3:5], -results[0][0][:, 3:5])


def test_reverse_pair_rows():
    """An edge shares its reverse's row only where the pair and its reverse each occur once."""
    from vivace.models.common import reverse_pair_rows

    # (0, 1) once each way; (2, 3) twice each way (two periodic images); 0 -> 5 whose reverse is absent
    # (5 is no center); a self-pair 4 -> 4 through two images; 3 -> 1 and 1 -> 3 once each
    edges = [(0, 1), (2, 3), (0, 5), (1, 0), (3, 2), (4, 4), (2, 3), (3, 1), (4, 4), (3, 2), (1, 3)]
    edge_index = torch.tensor(edges).T
    rows, slot = reverse_pair_rows(edge_index, 6)
    assert rows.tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    reads = [int(rows[s]) for s in slot]
    assert reads == [0, 1, 2, 0, 4, 5, 6, 10, 8, 9, 10]
    empty_rows, empty_slot = reverse_pair_rows(torch.zeros(2, 0, dtype=torch.long), 3)
    assert empty_rows.numel() == 0 and empty_slot.numel() == 0


@pytest.mark.parametrize("execution", ["eager", "export"])
def test_nequip_shares_radial_weights_exactly(execution, monkeypatch):
    """NequIP's radial MLP runs once per pair i <-> j: energies, forces and stress equal those of the same
    model running it on every edge, in a cell small enough that periodic images repeat pairs."""
    import vivace.models.nequip as nequip
    from vivace.nn.execution import set_execution

    model = set_execution(make("nequip", MODELS["nequip"], "float64"), execution)
    small, large = alloy("triclinic", seed=4), alloy("triclinic", seed=4).repeat((2, 2, 1))
    for atoms in (small, large):
        shared = results(model, MODELS["nequip"], atoms)
        every = lambda edge_index, num_nodes: (torch.arange(edge_index.shape[1]),) * 2  # noqa: E731
        with monkeypatch.context() as m:
            m.setattr(nequip, "reverse_pair_rows", every)
            alone = results(model, MODELS["nequip"], atoms)
        for key in ("energy", "forces", "stress"):
            close(shared[key], alone[key], 1e-12)
    vectors, edge_index, _ = graph_inputs(large)
    rows, _ = nequip.reverse_pair_rows(edge_index, len(large))
    assert rows.numel() < 0.75 * edge_index.shape[1]


def zbl_pair_energy(r, z1, z2):
    """The ZBL universal screened Coulomb energy of one pair (eV, r in A), written out from its formula."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = 0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x) \
        + 0.02817 * np.exp(-0.20162 * x)
    return 14.399645478425668 * z1 * z2 / r * phi


@both_models
@pytest.mark.filterwarnings("ignore::vivace.calculators.ExtrapolationWarning")
def test_core_repulsion(kind):
    """With the training data's shortest distances d (per pair of types) the model carries a ZBL core: exactly
    nothing while every pair is at least 0.9 d apart (a rattled crystal: energies and forces bit for bit those
    of the model without it), the full ZBL pair energy below 0.7 d, a smooth switch between (forces = -dE/dr
    by central differences across it), and a wall: hundreds of eV at 0.4 A."""
    atoms = alloy("orthogonal")
    d = atoms.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()])
    closest = np.array([[d[np.ix_(types == a, types == b)].min() for b in range(2)] for a in range(2)])
    shortest = 1.05 * closest  # every pair of the crystal at 0.95 d or more
    plain = dict(MODELS[kind], core_repulsion=False)
    cored = dict(MODELS[kind], shortest_distances=shortest.tolist())
    with_core, without = make(kind, cored, "float64"), make(kind, plain, "float64")
    ours, theirs = results(with_core, cored, atoms), results(without, plain, atoms)
    for key in ("energy", "forces", "energies", "stress"):
        np.testing.assert_array_equal(ours[key], theirs[key])

    def dimer(r):
        return Atoms(["Al", "Cu"], positions=[[5.0, 5.0, 5.0], [5.0 + r, 5.0, 5.0]], cell=[12.0] * 3, pbc=False)

    d_alcu = shortest[0, 1]
    for r in (0.4, 0.6 * d_alcu, 0.69 * d_alcu):
        extra = results(with_core, cored, dimer(r))["energy"] - results(without, plain, dimer(r))["energy"]
        assert extra == pytest.approx(zbl_pair_energy(r, 13, 29), rel=1e-12)
    assert results(with_core, cored, dimer(0.4))["energy"] - results(without, plain, dimer(0.4))["energy"] > 300
    for r in (0.75 * d_alcu, 0.8 * d_alcu, 0.88 * d_alcu):
        extra = results(with_core, cored, dimer(r))["energy"] - results(without, plain, dimer(r))["energy"]
        assert 0 < extra < zbl_pair_energy(r, 13, 29)
        h = 1e-5
        slope = (results(with_core, cored, dimer(r + h))["energy"] - results(with_core, cored, dimer(r - h))["energy"]) / (2 * h)
        force = results(with_core, cored, dimer(r))["forces"]
        assert force[1, 0] == pytest.approx(-slope, rel=1e-7, abs=1e-9)
    assert results(with_core, cored, dimer(0.9 * d_alcu + 1e-9))["energy"] == results(without, plain, dimer(0.9 * d_alcu + 1e-9))["energy"]


def test_checkpoints_that_stored_zbl_constants_load():
    """ZBL's constants are built from the hyperparameters, not stored: weights saved when they were (a zbl
    model's state_dict with head.zbl.z, phi_c, phi_d) load into today's model, with and without the core."""
    from vivace.models import load_weights

    for hyper in (dict(MODELS["allegro"], zbl=True), dict(MODELS["allegro"], shortest_distances=[[2.4, 2.2], [2.2, 2.5]])):
        saved = make("allegro", hyper, "float64", seed=1)
        weights = dict(saved.state_dict())
        assert not any(k.startswith("head.zbl") for k in weights)
        weights.update({"head.zbl.z": torch.tensor([13.0, 29.0], dtype=torch.float64),
                        "head.zbl.phi_c": torch.zeros(4, dtype=torch.float64),
                        "head.zbl.phi_d": torch.zeros(4, dtype=torch.float64)})  # fmt: skip
        loaded = make("allegro", hyper, "float64", seed=2)
        load_weights(loaded, weights)
        for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
        assert not hasattr(loaded.head.zbl, "phi_c")
        assert loaded.head.zbl.half_coulomb[0, 1] == pytest.approx(0.5 * 14.399645 * 13 * 29, rel=1e-6)


def test_tensor_gating_off_passes_products_on():
    """tensor_gating false: no layer weighs its tensor product's output by the new latents (nequip-allegro
    0.8.3's form); true (default): every layer but the last does."""
    hyper = dict(MODELS["allegro"], num_layers=3)
    gated = build_model("allegro", hyper, TYPE_NAMES, "float64")
    plain = build_model("allegro", dict(hyper, tensor_gating=False), TYPE_NAMES, "float64")
    assert [layer.tensor_weights is None for layer in gated.layers] == [False, False, True]
    assert all(layer.tensor_weights is None for layer in plain.layers)
