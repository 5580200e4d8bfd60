"""vivace::channelwise_tp (the fused C++ operator) against its PyTorch reference: values and gradients in
float32 and float64 on random shapes and entries, centers in any order, nodes without edges, empty inputs,
gradcheck, bad inputs, and tracing."""

import numpy as np
import pytest
import torch

from vivace.nn import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason="vivace is not built (no libvivace_ops.so)")

TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def problem(seed, dtype, num_edges=37, num_nodes=9, dims=(9, 4, 9), channels=5, entries=40, sorted_centers=False):
    g = torch.Generator().manual_seed(seed)
    dim_out, dim_x, dim_y = dims
    x = torch.randn(num_edges, dim_x, channels, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(num_nodes, dim_y, channels, generator=g, dtype=torch.float64).to(dtype)
    center = torch.randint(0, max(num_nodes - 2, 1), (num_edges,), generator=g)  # the last nodes have no edges
    if sorted_centers:
        center = center.sort().values
    coef = torch.randn(entries, channels, generator=g, dtype=torch.float64).to(dtype)
    table = torch.stack([torch.randint(0, d, (entries,), generator=g) for d in dims])
    return x, y, center, coef, table, dim_out


def fused_against_reference(x, y, center, coef, table, dim_out):
    """The fused operator's output and gradients (x, y, coef) for a random output gradient, checked against
    the reference's; returns the fused ones."""
    grad = torch.randn(x.shape[0], dim_out, x.shape[2], dtype=x.dtype)
    results = []
    for op in (kernels.channelwise_tp, kernels.channelwise_tp_reference):
        inputs = [t.clone().requires_grad_(True) for t in (x, y, coef)]
        out = op(inputs[0], inputs[1], center, inputs[2], table, dim_out)
        results.append([out, *torch.autograd.grad(out, inputs, grad)])
    for fused, reference in zip(*results):
        assert fused.dtype == x.dtype
        torch.testing.assert_close(fused, reference, **TOLERANCE[x.dtype])
    return results[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_and_gradients_equal_the_reference(dtype, seed):
    rng = np.random.default_rng(seed)
    shape = dict(num_edges=int(rng.integers(1, 80)), num_nodes=int(rng.integers(3, 20)), channels=int(rng.integers(1, 40)),
                 dims=tuple(int(d) for d in rng.integers(1, 17, 3)), entries=int(rng.integers(1, 120)),
                 sorted_centers=bool(seed % 2))  # fmt: skip
    fused = fused_against_reference(*problem(seed, dtype, **shape))
    assert fused[0].abs().max() > 0.1  # not a trivially zero problem
    assert torch.all(fused[2][-2:] == 0)  # nodes without edges get no gradient


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels", [3, 4, 8, 12, 16, 20, 24, 32, 40, 64, 72, 128, 136])
def test_every_channel_blocking(dtype, channels):
    """The kernel takes channels in blocks of four 64-byte vectors, of two, of one, a 32-byte vector, then one
    by one: counts that hit each way (and their mixtures) for floats (16 per 64 bytes) and doubles (8)."""
    fused_against_reference(*problem(8, dtype, num_edges=23, num_nodes=6, channels=channels, entries=50))


def test_the_same_on_two_threads_as_on_one():
    """A problem large enough to be split among threads (centers in blocks of 4 or more), centers unsorted, 24
    channels (a vector of floats or doubles and a remainder): the fused operator's values and gradients equal
    the reference's on 2 threads and on 1."""
    x, y, center, coef, table, dim_out = problem(4, torch.float64, num_edges=3000, num_nodes=200, channels=24,
                                                 dims=(9, 9, 9), entries=60)  # fmt: skip
    grad = torch.randn(x.shape[0], dim_out, x.shape[2], dtype=torch.float64)
    threads = torch.get_num_threads()
    results = {}
    try:
        for op, count in ((kernels.channelwise_tp, 2), (kernels.channelwise_tp, 1), (kernels.channelwise_tp_reference, 1)):
            torch.set_num_threads(count)
            inputs = [t.clone().requires_grad_(True) for t in (x, y, coef)]
            out = op(inputs[0], inputs[1], center, inputs[2], table, dim_out)
            results[op, count] = [out, *torch.autograd.grad(out, inputs, grad)]
    finally:
        torch.set_num_threads(threads)
    for two, one, reference in zip(*results.values()):
        torch.testing.assert_close(two, reference, **TOLERANCE[torch.float64])
        torch.testing.assert_close(two, one, **TOLERANCE[torch.float64])


def test_gradcheck_float64():
    x, y, center, coef, table, dim_out = problem(5, torch.float64, num_edges=7, num_nodes=4, channels=3, entries=12)
    inputs = [t.clone().requires_grad_(True) for t in (x, y, coef)]
    assert torch.autograd.gradcheck(lambda a, b, w: kernels.channelwise_tp(a, b, center, w, table, dim_out), inputs)


def test_empty_inputs():
    x, y, center, coef, table, dim_out = problem(3, torch.float64)
    for shape in ((0, x.shape[1], x.shape[2]),):
        x0 = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        y0 = y.clone().requires_grad_(True)
        out = kernels.channelwise_tp(x0, y0, center[:0], coef, table, dim_out)
        assert out.shape == (0, dim_out, x.shape[2])
        (gx, gy) = torch.autograd.grad(out.sum(), [x0, y0], allow_unused=True)
        assert gx.shape == x0.shape and torch.all(gy == 0)
    no_channels = kernels.channelwise_tp(x[:, :, :0], y[:, :, :0], center, coef[:, :0], table, dim_out)
    assert no_channels.shape == (x.shape[0], dim_out, 0)


def test_second_derivatives_are_refused():
    x, y, center, coef, table, dim_out = problem(8, torch.float64)
    x.requires_grad_(True)
    out = kernels.channelwise_tp(x, y, center, coef, table, dim_out)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(out.square().sum(), [x], create_graph=True)


def test_bad_inputs_are_refused_by_name():
    x, y, center, coef, table, dim_out = problem(4, torch.float64)
    with pytest.raises(RuntimeError, match="center index 9 out of range for 9 nodes"):
        kernels.channelwise_tp(x, y, torch.full_like(center, 9), coef, table, dim_out)
    with pytest.raises(RuntimeError, match="share one dtype"):
        kernels.channelwise_tp(x.float(), y, center, coef, table, dim_out)
    with pytest.raises(RuntimeError, match="channel counts differ"):
        kernels.channelwise_tp(x, y[:, :, :2], center, coef, table, dim_out)
    outside = table.clone()
    outside[1, 3] = x.shape[1]
    with pytest.raises(RuntimeError, match=r"entry 3 \(.*\) is outside"):
        kernels.channelwise_tp(x, y, center, coef, outside, dim_out)


def test_traced_graph_calls_the_operator_and_its_backward():
    """make_fx with symbolic shapes (as the exporter traces) records the forward and backward operators, and
    the traced graph gives the eager gradients on a graph of another size."""
    from torch.fx.experimental.proxy_tensor import make_fx

    x, y, center, coef, table, dim_out = problem(6, torch.float64)

    def forces_like(x, y, center):
        x = x.detach().requires_grad_(True)
        y = y.detach().requires_grad_(True)
        out = kernels.channelwise_tp(x, y, center, coef, table, dim_out)
        return torch.autograd.grad(out.square().sum(), [x, y])

    traced = make_fx(forces_like, tracing_mode="symbolic", _allow_non_fake_inputs=True)(x, y, center)
    called = {str(n.target) for n in traced.graph.nodes if n.op == "call_function"}
    assert {"vivace.channelwise_tp.default", "vivace.channelwise_tp_backward.default"} <= called
    x2, y2, center2, *_ = problem(7, torch.float64, num_edges=51, num_nodes=13)
    for a, b in zip(traced(x2, y2, center2), forces_like(x2, y2, center2)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_the_operators_run_on_torchs_threads():
    """at::parallel_for is an inline OpenMP loop in torch's headers: a library built without OpenMP runs it on
    one thread whatever torch.set_num_threads says (ours did, until cmake/Kernels.cmake linked OpenMP)."""
    import subprocess

    linked = subprocess.run(["ldd", kernels.library_path()], capture_output=True, text=True, check=True).stdout
    assert "libgomp" in linked or "libomp" in linked, linked


def test_artifacts_of_both_kernels_equal_the_eager_model(tmp_path, artifact):
    """The exported model with the fused operator (AOTInductor, calling it through its proxy executor, and
    TorchScript) and with PyTorch's tensor product, all through the C++ core,
    against the eager model (PyTorch's), float64, on a graph with ghosts; the metadata names the kernel."""
    from vivace import _core
    from vivace.calculators import load_backend
    from vivace.export import export, random_graph

    checkpoint = artifact("allegro", "float64", "ckpt")
    vectors, edge_index, types = random_graph(2, 4.0, 17, 3)
    eager = load_backend(checkpoint).evaluate(vectors, edge_index, types, 12)
    for kernel, ext in ((None, ".pt2"), ("fused", ".pth"), ("torch", ".pth")):
        # the default .pt2 is the session's export of the same checkpoint (an AOTInductor compile saved)
        path = artifact("allegro", "float64", "pt2") if kernel is None else export(
            checkpoint, str(tmp_path / f"{kernel}{ext}"), kernel=kernel)
        model = _core.Model(path, -1)
        assert model.metadata["tensor_product_kernel"] == (kernel or "fused")  # the default on a CPU
        for ours, reference in zip(model.evaluate(vectors, edge_index, types, 12), eager):
            np.testing.assert_allclose(ours[: len(reference)], reference, rtol=1e-10, atol=1e-12)


def test_unknown_kernels_are_refused(tmp_path):
    from conftest import make_checkpoint
    from vivace import _core
    from vivace.export import export

    nequip = make_checkpoint(str(tmp_path / "nequip.ckpt"), kind="nequip")
    default = export(nequip, str(tmp_path / "default.pth"), exchange=False)
    assert _core.Model(default, -1).metadata["tensor_product_kernel"] == "fused"  # vivace::nequip_conv
    with pytest.raises(ValueError, match="unknown convolution kernel 'fast'"):
        export(nequip, str(tmp_path / "nequip.pth"), kernel="fast")
    with pytest.raises(ValueError, match="unknown tensor-product kernel 'fast'"):
        export(make_checkpoint(str(tmp_path / "allegro.ckpt")), str(tmp_path / "allegro.pth"), kernel="fast")
