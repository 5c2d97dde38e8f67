"""Data-parallel fitting with ``torch.distributed``: cells sharded by rank, W statistics all-reduced.

W's multiplicative update needs only sums over cells (a genes × topics data term, a small model term
and the loss), so ranks that each hold a shard of the cells and all-reduce those sums take exactly the
step one process would take on all cells. Usage updates are per cell and need no communication.

Launch one process per device with ``torchrun`` (or ``python -m torch.distributed.run``), initialise
the process group (``gloo`` on CPU, ``nccl`` on GPU) and call :meth:`BCNMF.fit` with the *same* data on
every rank: each rank then reads only its own cells (every ``world_size``-th one, so a backed file is
never loaded whole) and every rank ends with the same fitted attributes, usages of all cells included.
See :func:`fit_distributed` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from ._source import RowSource, Summary


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised (e.g. under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` in a single process."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    backend = dist.get_backend()
    if backend == "nccl":
        return tensor.device if tensor.device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu") if backend == "gloo" else tensor.device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (identity in a single process); returns the reduced tensor."""
    if not is_distributed():
        return tensor
    work = tensor.to(_comm_device(tensor)).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)


def all_reduce_sums(*values: float) -> list[float]:
    """Sum several Python numbers over all ranks with one collective (float64)."""
    if not is_distributed():
        return [float(v) for v in values]
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (so that all ranks take the same branch)."""
    return all_reduce_sums(1.0 if flag else 0.0)[0] > 0


def shard_source(source: RowSource) -> RowSource:
    """This rank's cells of ``source``.

    A source already made with :meth:`RowSource.shard` is used as it is (its world size must match);
    any other source is taken to be the full data, the same on every rank, and is sharded here.
    """
    rank, world_size = rank_and_world()
    if world_size == 1:
        if source.shard_of is not None and source.shard_of[1] != 1:
            raise ValueError("a sharded RowSource was passed but no torch.distributed process group is running.")
        return source
    if source.shard_of is not None:
        if source.shard_of[:2] != (rank, world_size):
            raise ValueError(
                f"{source.name} is shard {source.shard_of[0]} of {source.shard_of[1]}, but this process is rank "
                f"{rank} of {world_size}."
            )
        return source
    sizes = all_reduce_sums(source.n_rows, source.n_rows**2)
    if sizes[0] ** 2 != world_size * sizes[1]:  # all ranks must pass the same number of cells
        raise ValueError(
            f"{source.name}: ranks passed different numbers of cells; pass the same full data on every rank "
            "(each rank reads only its own shard) or shards made with RowSource.shard(rank, world_size)."
        )
    return source.shard(rank, world_size)


def n_global_rows(source: RowSource) -> int:
    """Number of cells of the unsharded source."""
    return source.n_rows if source.shard_of is None else source.shard_of[2]


def reduce_summary(summary: Summary) -> Summary:
    """Make a shard's :class:`Summary` describe all cells (per-cell ``row_sums`` stay local)."""
    if not is_distributed():
        return summary
    summary.col_sums = all_reduce_sum(torch.from_numpy(summary.col_sums)).numpy()
    sum_xlogx, sum_sq, nnz, sum_rlogr, not_integer = all_reduce_sums(
        summary.sum_xlogx, summary.sum_sq, summary.nnz, summary.sum_rlogr, 0.0 if summary.is_integer else 1.0
    )
    summary.sum_xlogx, summary.sum_sq, summary.nnz, summary.sum_rlogr = sum_xlogx, sum_sq, int(nnz), sum_rlogr
    summary.is_integer = not_integer == 0
    return summary


def random_rows(generator: torch.Generator, source: RowSource, n_cols: int) -> torch.Tensor:
    """Uniform draws for this source's cells, taken from one draw over all cells of the unsharded source.

    A data-parallel fit therefore starts every cell exactly where a single-process fit with the same
    seed starts it.
    """
    draw = torch.rand(n_global_rows(source), n_cols, generator=generator, dtype=torch.float64)
    if source.shard_of is None:
        return draw
    return draw[torch.from_numpy(source.global_positions())]


def gather_rows(local: np.ndarray, source: RowSource) -> np.ndarray:
    """Rows (cells × …) held by each rank for its shard, assembled in the order of the unsharded source."""
    if source.shard_of is None or not is_distributed():
        return local
    _, world_size, n_total = source.shard_of
    local_t = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float64))
    longest = -(-n_total // world_size)
    padded = torch.zeros((longest,) + tuple(local_t.shape[1:]), dtype=torch.float64)
    padded[: local_t.shape[0]] = local_t
    device = _comm_device(padded)
    parts = [torch.empty_like(padded, device=device) for _ in range(world_size)]
    dist.all_gather(parts, padded.to(device))
    out = np.zeros((n_total,) + tuple(local_t.shape[1:]))
    for r, part in enumerate(parts):
        positions = np.arange(r, n_total, world_size)
        out[positions] = part[: len(positions)].cpu().numpy()
    return out


def fit_distributed(estimator, X, Y, *, backend: str | None = None, init_loadings=None):
    """Fit ``estimator`` (a :class:`~bcnmf_sc.engine.BCNMF`) data-parallel in the current ``torchrun`` job.

    Call it on every rank with the same arguments (``X``, ``Y`` the full data: arrays, sparse matrices,
    backed h5ad matrices or :class:`RowSource` selections). When no process group is initialised yet it
    is initialised from the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, …) with
    ``backend`` (default: ``"nccl"`` when the estimator's device is CUDA, else ``"gloo"``), and destroyed
    again at the end. Each rank reads only its own cells; all ranks return identical fitted estimators.
    Outside ``torchrun`` (no ``WORLD_SIZE``) it is a plain ``estimator.fit(X, Y)``.
    """
    created = False
    if not is_distributed() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if backend is None:
            from ._device import resolve_device

            backend = "nccl" if resolve_device(estimator.device).type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        created = True
    try:
        if init_loadings is None:
            estimator.fit(X, Y)
        else:
            estimator.fit(X, Y, init_loadings=init_loadings)
    finally:
        if created:
            dist.destroy_process_group()
    return estimator
