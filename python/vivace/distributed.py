"""torch.distributed for data-parallel training launched by torchrun (gloo on CPU, nccl on CUDA).

Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op on one process.
"""

import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init() -> None:
    """Joins torchrun's process group. With NCCL, each process first binds the GPU of its node-local rank, so
    that its collectives, its `.cuda()` tensors and its model all live there (not every process on cuda:0)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not active():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("VIVACE_DDP_BACKEND") != "gloo" else "gloo"
        if backend == "nccl":
            device = gpu()
            torch.cuda.set_device(device)
            dist.init_process_group(backend, device_id=device)
        else:
            dist.init_process_group(backend)


def finish() -> None:
    if active():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def gpu() -> torch.device:
    """This process's GPU: its node-local rank, modulo the GPUs it sees."""
    return torch.device("cuda", local_rank() % max(1, torch.cuda.device_count()))


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """The sum over processes (a copy; the input is left as it is)."""
    t = t.clone()
    if active():
        device = t.device
        if dist.get_backend() == "nccl":
            t = t.to(gpu())
        dist.all_reduce(t)
        t = t.to(device)
    return t


def any_true(flag: bool) -> bool:
    """True on every process when it is true on any: keeps stopping decisions in step."""
    if not active():
        return bool(flag)
    return bool(sum_tensor(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)).item() > 0)
