"""NequIP layer by layer with node features exchanged between ranks (models/exchange.py, the core's
evaluate_exchanging, pair_style nequip without a ghost shell).

A periodic cell whose images are nodes of their own, each filled from the atom it images, is what a LAMMPS
rank sees with its ghosts: the programs on that graph must give the eager model's energies and edge forces,
eagerly, through both artifact formats, and in LAMMPS across ranks (tests/test_pair_styles.py covers 1 to 4
ranks; here: the errors, an artifact without the programs, and the shell mode beside the exchange).
"""

import numpy as np
import pytest
import torch

from conftest import TYPE_NAMES, alloy
from test_errors import lammps_error
from test_pair_styles import assert_close
from vivace.calculators import atom_forces_of_edges
from vivace.checkpoint import load_checkpoint, model_from_checkpoint
from vivace.data import neighbor_graph
from vivace.models import EdgeForceModel
from vivace.models.exchange import evaluate_exchanging, exchange_programs, images_as_nodes
from vivace.lammps_run import single_point

R_MAX = 4.0


def image_graph(cell_kind, with_positions=False):
    atoms = alloy(cell_kind)
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()])
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, R_MAX)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    images, owner = images_as_nodes(edge_index, shifts, len(atoms))
    if with_positions:
        return vectors, edge_index, types, images, owner, atoms.positions
    return vectors, edge_index, types, images, owner


def eager_reference(checkpoint, vectors, edge_index, types):
    model, _ = model_from_checkpoint(load_checkpoint(checkpoint))
    energy, forces = EdgeForceModel(model)(
        torch.tensor(vectors), torch.tensor(edge_index), torch.tensor(types), torch.tensor(len(types))
    )
    return model, energy.detach().numpy(), forces.detach().numpy()


def assert_same_on_atoms(forces, ref_forces, vectors, edge_index, num_atoms, what):
    """Edge forces compared through what they do: the force on every atom and the virial. The radial MLP runs
    once per pair of reverse edges, and which pairs share depends on the graph (an image as its atom's node or
    as a node of its own), so a pair's radial force may sit on either of its two edges."""
    for name, f in (("atom forces", atom_forces_of_edges), ("virial", lambda g, *_: vectors.T @ g)):
        assert_close(f(forces, edge_index, num_atoms), f(ref_forces, edge_index, num_atoms), f"{what}: {name}", 1e-12)


def test_images_as_nodes():
    vectors, edge_index, types, images, owner, positions = image_graph("triclinic", with_positions=True)
    n = len(types)
    assert np.array_equal(images[0], edge_index[0])
    inside = images[1] < n
    assert np.array_equal(images[1, inside], edge_index[1, inside])
    assert np.array_equal(owner[images[1, ~inside] - n], edge_index[1, ~inside])
    assert len(owner) > n  # a 48-atom cell with a 4 A cutoff reaches more images than atoms
    # one node per image: all edges into an image node see the same lattice shift, and no two nodes share one
    shift = positions[images[0]] + vectors - positions[np.concatenate([np.arange(n), owner])[images[1]]]
    seen = {}
    for node, s in zip(images[1, ~inside], np.round(shift[~inside], 6)):
        assert seen.setdefault(node, tuple(s)) == tuple(s)
    assert len({(int(owner[node - n]),) + s for node, s in seen.items()}) == len(owner)


@pytest.mark.parametrize("cell_kind", ["orthogonal", "triclinic"])
def test_programs_reproduce_the_model(artifact, cell_kind):
    vectors, edge_index, types, images, owner = image_graph(cell_kind)
    model, ref_energy, ref_forces = eager_reference(artifact("nequip", "float64", "ckpt"), vectors, edge_index, types)
    all_types = np.concatenate([types, types[owner]])
    energy, forces = evaluate_exchanging(exchange_programs(model), torch.tensor(vectors), torch.tensor(images),
                                         torch.tensor(all_types), len(types), torch.tensor(owner))  # fmt: skip
    assert np.abs(ref_forces).max() > 1e-3
    assert_close(energy[: len(types)].detach().numpy(), ref_energy, "energies", 1e-12)
    assert np.all(energy[len(types):].detach().numpy() == 0.0)
    assert_same_on_atoms(forces.detach().numpy(), ref_forces, vectors, edge_index, len(types), "programs")


# pt2 compiles the layer programs (120-165 s on 2 cores): run on demand, with -m slow. "pth-torch": PyTorch's
# convolution instead of the fused operator (the default on a CPU; PyTorch's runs on a GPU)
@pytest.mark.parametrize("fmt", ["pth", "pth-torch", pytest.param("pt2", marks=pytest.mark.slow)])
def test_core_exchanging_matches_the_model(artifact, fmt, tmp_path):
    from vivace import _core
    from vivace.export import export

    vectors, edge_index, types, images, owner = image_graph("triclinic")
    checkpoint = artifact("nequip", "float64", "ckpt")
    _, ref_energy, ref_forces = eager_reference(checkpoint, vectors, edge_index, types)
    path = export(checkpoint, str(tmp_path / "torch.pth"), kernel="torch") if fmt == "pth-torch" else artifact(
        "nequip", "float64", fmt)
    core = _core.Model(path)
    assert core.metadata["tensor_product_kernel"] == ("torch" if fmt == "pth-torch" else "fused")
    assert core.exchanges_features and core.metadata["exchange_layers"] == "2"
    assert core.metadata["feature_widths"] == "36 4"  # 4 x (0e 1o 2e), all that scalars x Y_l<=2 reach; then 4 x 0e
    assert core.metadata["radial_widths"] == "12 12"  # 3 paths x 4 channels: 0e x Y_0,1,2; then (0e 0e, 1o 1o, 2e 2e)
    order = np.random.default_rng(0).permutation(len(vectors))  # edges in no particular order
    for edges_per_group in (0, 60):  # the whole graph at once; groups of a few centers, unsorted edges
        core.edges_per_group = edges_per_group
        v, index = (vectors, images) if edges_per_group == 0 else (vectors[order], images[:, order].copy())
        energy, forces = core.evaluate_exchanging(v, index, np.concatenate([types, types[owner]]), len(types), owner)
        assert_close(energy[: len(types)], ref_energy, "energies", 1e-12)
        if edges_per_group > 0:
            forces[order] = forces.copy()  # back in the reference's edge order
        assert_same_on_atoms(forces, ref_forces, vectors, edge_index, len(types), f"{edges_per_group} edges per group")

    with pytest.raises(RuntimeError, match="every edge to start at a local node"):
        core.evaluate_exchanging(vectors, images[::-1].copy(), np.concatenate([types, types[owner]]), len(types), owner)


def test_artifact_without_programs(artifact, tmp_path):
    """`vivace export --no-exchange` (or an export by an older vivace): one rank needs no programs; several
    refuse to start, naming the two ways out."""
    from vivace.cli import main as vivace

    old = str(tmp_path / "old.pth")
    assert vivace(["export", artifact("nequip", "float64", "ckpt"), "-o", old, "--no-exchange"]) == 0
    scripted = torch.jit.load(old)
    assert not any(name.startswith("exchange_") for name, _ in scripted.named_children())
    atoms = alloy("orthogonal")
    lines = f"pair_style nequip\npair_coeff * * {old} Al Cu"
    single_point(atoms, lines, TYPE_NAMES, str(tmp_path / "one"), nprocs=1)
    from vivace.lammps_run import LammpsError

    with pytest.raises(LammpsError, match="holds no programs for exchanging features between ranks"):
        single_point(atoms, lines, TYPE_NAMES, str(tmp_path / "two"), nprocs=2)
    shell = single_point(atoms, lines.replace("nequip\n", "nequip shell\n"), TYPE_NAMES, str(tmp_path / "shell"), nprocs=2)
    exchange = single_point(atoms, f"pair_style nequip\npair_coeff * * {artifact('nequip')} Al Cu", TYPE_NAMES,
                            str(tmp_path / "exchange"), nprocs=2)  # fmt: skip
    assert_close(shell.forces, exchange.forces, "shell vs exchange forces", 1e-10)


def test_radial_rows_where_pairs_repeat_through_images(artifact):
    """One rank whose ghosts are its own atoms (LAMMPS maps an image of a local atom to that atom): in a cell
    smaller than twice the cutoff a pair i -> j occurs several times (through several images), so only pairs
    that occur once in each direction may share a row of the radial table; the rest keep their own."""
    from vivace import _core
    from vivace.models.common import reverse_pair_rows

    atoms = alloy("triclinic")[:9]
    atoms.set_cell(np.diag([5.1, 5.6, 4.8]) + np.triu(np.full((3, 3), 0.4), 1), scale_atoms=True)
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()])
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, R_MAX)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    rows, slot = reverse_pair_rows(torch.tensor(edge_index), len(types))
    pairs = {}
    for i, j in edge_index.T:
        pairs[(i, j)] = pairs.get((i, j), 0) + 1
    assert max(pairs.values()) > 1 and len(rows) < len(vectors)  # both kinds of pair are here
    model, ref_energy, ref_forces = eager_reference(artifact("nequip", "float64", "ckpt"), vectors, edge_index, types)
    no_owner = np.zeros(0, dtype=np.int64)
    energy, forces = evaluate_exchanging(exchange_programs(model), torch.tensor(vectors), torch.tensor(edge_index),
                                         torch.tensor(types), len(types), torch.tensor(no_owner))  # fmt: skip
    assert_close(energy.detach().numpy(), ref_energy, "energies (Python)", 1e-12)
    assert_same_on_atoms(forces.detach().numpy(), ref_forces, vectors, edge_index, len(types), "programs")
    core = _core.Model(artifact("nequip", "float64", "pth"))
    energy, forces = core.evaluate_exchanging(vectors, edge_index, types, len(types), no_owner)
    assert_close(energy, ref_energy, "energies (core)", 1e-12)
    assert_same_on_atoms(forces, ref_forces, vectors, edge_index, len(types), "core")


def test_programs_of_an_older_export_are_refused(artifact, tmp_path):
    """Layer programs exported before the radial table (metadata without radial_widths) took other inputs:
    the core refuses them by name instead of misreading them, and one rank still runs the whole program."""
    from vivace import _core
    from vivace.export import TORCHSCRIPT_METADATA_FILE

    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    module = torch.jit.load(artifact("nequip", "float64", "pth"), _extra_files=extra)
    lines = extra[TORCHSCRIPT_METADATA_FILE].decode().splitlines()
    assert any(line.startswith("radial_widths=") for line in lines)
    old = str(tmp_path / "old.pth")
    kept = "".join(line + "\n" for line in lines if not line.startswith("radial_widths="))
    torch.jit.save(module, old, _extra_files={TORCHSCRIPT_METADATA_FILE: kept})
    core = _core.Model(old)
    vectors, edge_index, types, images, owner = image_graph("orthogonal")
    with pytest.raises(RuntimeError, match="those of an older vivace .* export it again"):
        core.evaluate_exchanging(vectors, images, np.concatenate([types, types[owner]]), len(types), owner)
    _, ref_energy, _ = eager_reference(artifact("nequip", "float64", "ckpt"), vectors, edge_index, types)
    energy, _ = core.evaluate(vectors, edge_index, types, len(types))
    assert_close(energy, ref_energy, "energies", 1e-12)


def test_shell_keyword_is_nequip_only(tmp_path, artifact):
    message = lammps_error(tmp_path, f"pair_coeff * * {artifact('allegro')} Al Cu", pair_style="pair_style allegro shell")
    assert "'shell' applies to nequip only" in message


def test_a_large_graph_runs_through_the_layer_programs(artifact):
    """Above 2^17 edges the core evaluates a graph of its own nodes layer by layer in groups (bounded
    memory), with the whole program's results."""
    from vivace import _core

    atoms = alloy("orthogonal").repeat((6, 6, 5))
    types = np.array([TYPE_NAMES.index(s) for s in atoms.get_chemical_symbols()])
    edge_index, shifts = neighbor_graph(atoms.positions, atoms.cell.array, atoms.pbc, R_MAX)
    vectors = atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts
    assert vectors.shape[0] > 2**17
    _, ref_energy, ref_forces = eager_reference(artifact("nequip", "float64", "ckpt"), vectors, edge_index, types)
    core = _core.Model(artifact("nequip", "float64", "pth"))
    assert core.edges_per_group == 4096  # the default group of the layer programs on a CPU
    energy, forces = core.evaluate(vectors, edge_index, types, len(types))
    assert_close(energy, ref_energy, "energies", 1e-12)
    assert_same_on_atoms(forces, ref_forces, vectors, edge_index, len(types), "layer programs")
