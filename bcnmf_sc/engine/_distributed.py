"""Data-parallel helpers: W's statistics are sums over cells, so ranks only all-reduce them."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (e.g. under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (identity in a single process); returns the reduced tensor."""
    if not is_distributed():
        return tensor
    backend = dist.get_backend()
    work = tensor
    if backend == "nccl" and tensor.device.type != "cuda":
        work = tensor.to("cuda")
    elif backend == "gloo" and tensor.device.type != "cpu":
        work = tensor.cpu()
    work = work.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)
