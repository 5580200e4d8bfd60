"""vivace::nequip_conv (NequIP's convolution summed into the centers, fused in C++) against the PyTorch form of
the model's own Convolution: values and gradients in float32 and float64, rows of weights shared through a
slot or one per edge, centers in any order, centers and nodes without edges, empty inputs, gradcheck, bad
inputs; and NequIP artifacts of both kernels, through the core, against the eager model."""

import numpy as np
import pytest
import torch

from vivace.nn import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="vivace is not built (no libvivace_ops.so)")

TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def convolution(l_max: int, channels: int, hidden_input: bool):
    """A NequIP block's Convolution: scalar input (the first block) or the hidden irreps (the others)."""
    from e3nn import o3

    from vivace.models.nequip import Convolution, hidden_irreps

    irreps_in = hidden_irreps(channels, l_max, True) if hidden_input else o3.Irreps(f"{channels}x0e")
    irreps_sh = o3.Irreps.spherical_harmonics(l_max)
    return Convolution(irreps_in, irreps_sh, hidden_irreps(channels, l_max, True), [4]).double()


def problem(conv, seed, dtype, num_edges=41, num_centers=7, num_nodes=11, rows=None, sorted_centers=False):
    """Inputs of the operator: the last center and the last node take part in no edge; `rows`: weights
    shared through a random slot (else one row per edge)."""
    g = torch.Generator().manual_seed(seed)
    dim_x, dim_sh, paths = sum(conv.irreps_in_dims), conv.contraction.dims[2], len(conv.mid_dims)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    center = torch.randint(0, num_centers - 1, (num_edges,), generator=g)
    if sorted_centers:
        center = center.sort().values
    neighbor = torch.randint(0, num_nodes - 1, (num_edges,), generator=g)
    slot = torch.zeros(0, dtype=torch.long) if rows is None else torch.randint(0, rows, (num_edges,), generator=g)
    x, sh = rand(num_nodes, dim_x, conv.channels), rand(num_edges, dim_sh)
    w = rand(num_edges if rows is None else rows, paths, conv.channels)
    norm = (torch.rand(num_centers, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x, sh, w, slot, center, neighbor, norm


def fused(conv, x, sh, w, slot, center, neighbor, norm):
    return torch.ops.vivace.nequip_conv(x, sh, w, slot, center, neighbor, norm, conv.cg.view(-1).to(x.dtype),
                                        conv.contraction.entries, conv.components)


def reference(conv, x, sh, w, slot, center, neighbor, norm):
    """The model's PyTorch form: weights gathered at the edges, messages summed, times each center's norm."""
    w = w.index_select(0, slot) if slot.numel() else w
    conv = conv.to(x.dtype)
    return conv.messages(x, sh, w, torch.stack([center, neighbor]), norm.shape[0]) * norm.view(-1, 1, 1)


def against_reference(conv, inputs):
    """The operator's output and gradients (x, sh, w) for a random output gradient, checked against the
    reference's; returns the operator's."""
    x, sh, w, slot, center, neighbor, norm = inputs
    results = []
    for op in (fused, reference):
        leaves = [t.clone().requires_grad_(True) for t in (x, sh, w)]
        out = op(conv, leaves[0], leaves[1], leaves[2], slot, center, neighbor, norm)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(x.dtype)
        results.append([out, *torch.autograd.grad(out, leaves, grad)])
    for ours, theirs in zip(*results):
        assert ours.dtype == x.dtype
        torch.testing.assert_close(ours, theirs, **TOLERANCE[x.dtype])
    return results[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_values_and_gradients_equal_the_reference(dtype, seed):
    rng = np.random.default_rng(seed)
    conv = convolution(l_max=int(rng.integers(1, 4)), channels=int(rng.integers(1, 40)), hidden_input=bool(seed % 2))
    rows = None if seed < 2 else int(rng.integers(5, 30))
    out, gx, gsh, gw = against_reference(conv, problem(conv, seed, dtype, rows=rows, sorted_centers=seed == 3))
    assert out.abs().max() > 0.1  # not a trivially zero problem
    assert torch.all(out[-1] == 0) and torch.all(gx[-1] == 0)  # a center and a node without edges


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels", [3, 8, 16, 24, 32, 64, 128])
def test_every_channel_width(dtype, channels):
    """The kernels are compiled for 8, 16, 32, 64 and 128 channels, and read the count at run time otherwise."""
    conv = convolution(l_max=2, channels=channels, hidden_input=True)
    against_reference(conv, problem(conv, 5, dtype, rows=17))


def test_the_same_on_two_threads_as_on_one():
    """Enough centers, rows and nodes to be split among threads (each pass splits its own index)."""
    conv = convolution(l_max=2, channels=16, hidden_input=True)
    inputs = problem(conv, 6, torch.float64, num_edges=3000, num_centers=150, num_nodes=220, rows=1700)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = against_reference(conv, inputs)
        torch.set_num_threads(2)
        two = against_reference(conv, inputs)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("rows", [None, 6])
def test_gradcheck_float64(rows):
    conv = convolution(l_max=2, channels=3, hidden_input=True)
    x, sh, w, slot, center, neighbor, norm = problem(conv, 7, torch.float64, num_edges=9, rows=rows)
    leaves = [t.clone().requires_grad_(True) for t in (x, sh, w)]
    assert torch.autograd.gradcheck(lambda a, b, c: fused(conv, a, b, c, slot, center, neighbor, norm), leaves)


def test_empty_inputs():
    conv = convolution(l_max=2, channels=4, hidden_input=True)
    x, sh, w, slot, center, neighbor, norm = problem(conv, 8, torch.float64)
    leaves = [t[:0].clone().requires_grad_(True) if t is not x else t.clone().requires_grad_(True) for t in (x, sh, w)]
    out = fused(conv, *leaves, slot, center[:0], neighbor[:0], norm)
    assert out.shape == (norm.shape[0], len(conv.components), 4) and torch.all(out == 0)
    gx, gsh, gw = torch.autograd.grad(out.sum(), leaves)
    assert torch.all(gx == 0) and gsh.shape == (0, sh.shape[1]) and gw.shape == (0,) + w.shape[1:]


def test_second_derivatives_are_refused():
    conv = convolution(l_max=1, channels=4, hidden_input=False)
    x, sh, w, slot, center, neighbor, norm = problem(conv, 9, torch.float64)
    x.requires_grad_(True)
    out = fused(conv, x, sh, w, slot, center, neighbor, norm)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(out.square().sum(), [x], create_graph=True)


def test_bad_inputs_are_refused_by_name():
    conv = convolution(l_max=2, channels=4, hidden_input=True)
    x, sh, w, slot, center, neighbor, norm = problem(conv, 10, torch.float64, rows=8)
    with pytest.raises(RuntimeError, match="center index 7 out of range for 7 centers"):
        fused(conv, x, sh, w, slot, torch.full_like(center, 7), neighbor, norm)
    with pytest.raises(RuntimeError, match="neighbor index -1 out of range for 11 nodes"):
        fused(conv, x, sh, w, slot, center, torch.full_like(neighbor, -1), norm)
    with pytest.raises(RuntimeError, match="slot index 8 out of range for 8 rows of w"):
        fused(conv, x, sh, w, torch.full_like(slot, 8), center, neighbor, norm)
    with pytest.raises(RuntimeError, match="without slot, w needs one row per edge"):
        fused(conv, x, sh, w, slot[:0], center, neighbor, norm)
    with pytest.raises(RuntimeError, match="share one dtype"):
        fused(conv, x.float(), sh, w, slot, center, neighbor, norm)


def test_traced_graph_calls_the_operator_and_its_backward():
    """make_fx with symbolic shapes (as the exporter traces) records both operators, and the traced graph
    gives the eager gradients on a problem of another size."""
    from torch.fx.experimental.proxy_tensor import make_fx

    conv = convolution(l_max=2, channels=4, hidden_input=True)

    def forces_like(x, sh, w, slot, center, neighbor, norm):
        leaves = [t.detach().requires_grad_(True) for t in (x, sh, w)]
        out = fused(conv, *leaves, slot, center, neighbor, norm)
        return torch.autograd.grad(out.square().sum(), leaves)

    traced = make_fx(forces_like, tracing_mode="symbolic", _allow_non_fake_inputs=True)(
        *problem(conv, 11, torch.float64, rows=9))
    called = {str(n.target) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"vivace.nequip_conv.default", "vivace.nequip_conv_backward.default"} <= called
    other = problem(conv, 12, torch.float64, num_edges=57, num_centers=13, num_nodes=20, rows=31)
    for a, b in zip(traced(*other), forces_like(*other)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_nequip_artifacts_of_both_kernels_equal_the_eager_model(tmp_path, artifact):
    """NequIP exported with the fused convolution (the default on a CPU; AOTInductor and TorchScript) and with
    PyTorch's, through the core's whole program, against the eager model (PyTorch's), float64, on a graph with
    ghosts (test_exchange runs both kernels' layer programs)."""
    from vivace import _core
    from vivace.calculators import load_backend
    from vivace.export import export, random_graph

    checkpoint = artifact("nequip", "float64", "ckpt")
    vectors, edge_index, types = random_graph(2, 4.0, 17, 3)
    eager = load_backend(checkpoint).evaluate(vectors, edge_index, types, 12)
    for kernel, ext in ((None, ".pt2"), ("torch", ".pth"), ("fused", ".pth")):
        path = artifact("nequip", "float64", "pt2", exchange=False) if kernel is None else export(
            checkpoint, str(tmp_path / f"{kernel}{ext}"), kernel=kernel, exchange=False)
        model = _core.Model(path, -1)
        assert model.metadata["tensor_product_kernel"] == (kernel or "fused")
        for ours, reference in zip(model.evaluate(vectors, edge_index, types, 12), eager):
            np.testing.assert_allclose(ours[: len(reference)], reference, rtol=1e-10, atol=1e-12)
