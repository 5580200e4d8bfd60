import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """out[n] = sum of src[k] over k with index[k] == n (along dim 0)."""
    shape = [dim_size] + list(src.shape[1:])
    return torch.zeros(shape, dtype=src.dtype, device=src.device).index_add_(0, index, src)
