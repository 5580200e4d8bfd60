"""Row gather and scatter-sum that are each other's gradient.

Autograd's own gradient of `index_select` is `index_add`, which inductor compiles on CPU into a loop of
atomic adds with the whole producer fused into it (not vectorised): that loop dominated the compiled
model's time. Here the gradient of a gather is a `scatter_reduce(sum)`, which inductor hands to ATen's
kernel after computing its input in a vectorised loop, and the gradient of a scatter is a gather, to any
order (training differentiates forces once more).
"""

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """out[n] = sum of src[k] over k with index[k] == n (along dim 0)."""
    if torch.jit.is_scripting():
        return _scatter(src, index, dim_size)
    return _scatter_function(src, index, dim_size)


def gather(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[k] = src[index[k]] (along dim 0)."""
    if torch.jit.is_scripting():
        return src.index_select(0, index)
    return _gather_function(src, index)


def _scatter(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    shape = [dim_size] + list(src.shape[1:])
    expanded = index.view([-1] + [1] * (src.dim() - 1)).expand_as(src)
    return torch.zeros(shape, dtype=src.dtype, device=src.device).scatter_reduce(0, expanded, src, "sum")


@torch.jit.unused
def _scatter_function(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    return _ScatterSum.apply(src, index, dim_size)


@torch.jit.unused
def _gather_function(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return _Gather.apply(src, index)


class _ScatterSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, dim_size):
        ctx.save_for_backward(index)
        return _scatter(src, index, dim_size)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _Gather.apply(grad, index), None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index):
        ctx.save_for_backward(index)
        ctx.dim_size = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _ScatterSum.apply(grad, index, ctx.dim_size), None
