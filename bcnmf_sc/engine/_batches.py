"""Minibatches of cells on the device: sparse (CSR and its transpose) or dense, planned once per fit.

The updates need, per batch of cells, either the dense block (dense or nearly dense data) or the
non-zeros in two orders: row-major (CSR, for the usages: ``(X ⊘ X̂) W``) and column-major (the CSR of
the transpose, for the loadings' statistics ``(X ⊘ X̂)ᵀ U``). Building the column-major copy costs about
as much as a whole multiplicative update, so for data held in memory the prepared batches are kept
(float32 values and, where the axis allows, int16 indices, in a few large blocks) and reused every
epoch. Batches are contiguous runs of rows, so those of an in-memory CSR matrix are views of it: only
the column-major copy costs memory (0.75 of the non-zeros' CSR bytes with int16 indices; 1.5 when rows
must be gathered, e.g. the target cells of an AnnData whose groups are interleaved).
Backed (h5ad) data are streamed, one batch at a time.

Everything here is plain torch on whatever device the caller chose; nothing is specific to CUDA
beyond pinning host memory for faster copies.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._source import RowSource

#: above this fraction of non-zeros a dense batch is cheaper than the sparse kernels
SPARSE_MAX_DENSITY = 0.25
#: cached index arrays over an axis at most this long are stored as int16 (widened to int32 per visit)
COMPACT_INDEX_MAX = int(np.iinfo(np.int16).max)

_beta_warning_seen = False


def _sparse_csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # structure comes from scipy (validated there); skip torch's O(nnz) invariant checks
    global _beta_warning_seen
    if _beta_warning_seen:
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    with warnings.catch_warnings():  # torch warns once per process that sparse CSR is "beta"
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        out = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
    _beta_warning_seen = True
    return out


@dataclass
class SparseBatch:
    """The non-zeros of a batch of cells (rows) on the device, in row-major and, when needed, column-major order."""

    n_rows: int
    n_cols: int
    crow: torch.Tensor  # n_rows + 1
    col: torch.Tensor  # nnz
    values: torch.Tensor  # nnz, compute dtype, row-major order
    t_crow: torch.Tensor | None = None  # n_cols + 1 (the transpose's CSR)
    t_row: torch.Tensor | None = None  # nnz
    t_values: torch.Tensor | None = None  # nnz, column-major order
    sum_x: float = 0.0
    sum_sq: float = 0.0
    workspace: dict | None = None  # value buffers shared by the batches of one plan (see scratch)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def scratch(self, transposed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """A sparse CSR tensor with this batch's structure (or its transpose's) over a reusable value buffer.

        ``torch.sparse.sampled_addmm(t, a, b, beta=0, out=t)`` then writes ``(a @ b)`` at the non-zeros into
        the buffer in place, without the copy of the structure that a fresh result costs. The buffer always
        holds finite numbers (``beta · value`` is still evaluated with ``beta = 0``).
        """
        key = "_scratch_t" if transposed else "_scratch"
        cached = self.__dict__.get(key)
        if cached is None:
            nnz = self.values.numel()
            if self.workspace is None:
                buffer = torch.zeros_like(self.values)
            else:  # one buffer per plan, as long as its largest batch: no allocation per visit
                shared = self.workspace.get(key)
                if shared is None or shared.numel() < nnz:
                    shared = torch.zeros(nnz, dtype=self.values.dtype, device=self.values.device)
                    self.workspace[key] = shared
                buffer = shared[:nnz]
            tensor = self.csr_t(buffer) if transposed else self.csr(buffer)
            cached = (tensor, buffer)
            self.__dict__[key] = cached
        return cached

    def csr(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Cells × genes sparse CSR tensor with this structure (``values`` in row-major order)."""
        return _sparse_csr(self.crow, self.col, self.values if values is None else values, self.shape)

    def csr_t(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Genes × cells sparse CSR tensor (the transpose; ``values`` in column-major order)."""
        if self.t_crow is None:
            raise RuntimeError("this batch was prepared without its transpose")
        return _sparse_csr(self.t_crow, self.t_row, self.t_values if values is None else values,
                           (self.n_cols, self.n_rows))

    def to_dense(self) -> torch.Tensor:
        return self.csr().to_dense()

    def take_rows(self, rows: torch.Tensor) -> SparseBatch:
        """The batch of the rows at ``rows`` (sorted int64 positions), row-major only, O(nnz)."""
        counts = torch.diff(self.crow)[rows]
        crow = torch.zeros(len(rows) + 1, dtype=self.crow.dtype, device=self.crow.device)
        torch.cumsum(counts, dim=0, out=crow[1:])
        # position of every kept non-zero in this batch: its row's start plus its rank within the row
        starts = torch.repeat_interleave(self.crow[:-1][rows] - crow[:-1], counts)
        keep = starts + torch.arange(int(crow[-1]), device=starts.device, dtype=starts.dtype)
        values = self.values[keep]
        return SparseBatch(len(rows), self.n_cols, crow, self.col[keep], values,
                           sum_x=float(values.sum(dtype=torch.float64)),
                           sum_sq=float(torch.dot(values.double(), values.double())))

    def sum(self, dim: int, keepdim: bool = False) -> torch.Tensor:
        """Row (``dim=1``) or column (``dim=0``) sums, like :meth:`torch.Tensor.sum` on the dense batch."""
        if dim in (1, -1):
            counts = torch.diff(self.crow)
            rows = torch.repeat_interleave(torch.arange(self.n_rows, device=self.values.device), counts)
            out = torch.zeros(self.n_rows, device=self.values.device, dtype=self.values.dtype).index_add_(0, rows, self.values)
        elif dim == 0:
            out = torch.zeros(self.n_cols, device=self.values.device, dtype=self.values.dtype)
            out.index_add_(0, self.col.long(), self.values)
        else:
            raise ValueError(f"dim must be 0 or 1, got {dim}")
        return out.unsqueeze(dim) if keepdim else out


@dataclass
class _HostBatch:
    """A prepared sparse batch on the host (torch CPU tensors, pinned for CUDA)."""

    n_rows: int
    n_cols: int
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    t_crow: torch.Tensor | None
    t_row: torch.Tensor | None
    t_values: torch.Tensor | None
    sum_x: float
    sum_sq: float

    @property
    def nbytes(self) -> int:
        tensors = (self.crow, self.col, self.values, self.t_crow, self.t_row, self.t_values)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def to(self, device: torch.device, dtype: torch.dtype, *, workspace: dict | None = None) -> SparseBatch:
        """The batch on ``device``; int16 indices widened to int32 (into ``workspace`` buffers, if given)."""
        def move(t: torch.Tensor | None, to_dtype=None) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device, to_dtype or t.dtype, non_blocking=True)

        def indices(t: torch.Tensor | None, key: str) -> torch.Tensor | None:
            t = move(t)
            if t is None or t.dtype != torch.int16:
                return t
            if workspace is None:
                return t.to(torch.int32)
            # a fresh tensor per visit costs page faults (10 % of a 1M-cell epoch); a reused buffer does not
            buffer = workspace.get(key)
            if buffer is None or buffer.numel() < t.numel():
                buffer = torch.empty(t.numel(), dtype=torch.int32, device=t.device)
                workspace[key] = buffer
            return buffer[: t.numel()].copy_(t)

        return SparseBatch(
            self.n_rows, self.n_cols, move(self.crow), indices(self.col, "_col"), move(self.values, dtype),
            move(self.t_crow), indices(self.t_row, "_t_row"), move(self.t_values, dtype), self.sum_x, self.sum_sq,
        )


class _Pool:
    """Large host blocks that hold the long-lived arrays of prepared batches back to back.

    Allocating every batch's arrays separately, interleaved with each step's temporaries, fragments the
    C heap: freed temporaries leave holes between cached arrays that the allocator cannot give back, and
    resident memory ends up near twice the cache. A few large blocks (memory-mapped by the allocator)
    avoid that.
    """

    def __init__(self, hint: int, pin: bool):
        self.hint, self.pin = max(int(hint), 1024), pin
        self.blocks: dict[torch.dtype, list] = {}  # dtype -> [block, used]

    def take(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        n = int(array.size)
        entry = self.blocks.get(dtype)
        if entry is None or entry[1] + n > entry[0].numel():
            size = max(n, self.hint if entry is None else self.hint // 4)
            entry = [torch.empty(size, dtype=dtype, pin_memory=self.pin), 0]
            self.blocks[dtype] = entry  # a full block stays alive through the batches that use it
        out = entry[0][entry[1]: entry[1] + n]
        out.copy_(torch.from_numpy(array))
        entry[1] += n
        return out


def _host_batch(block: sp.csr_matrix, *, transpose: bool, pin: bool, value_dtype: np.dtype,
                pool: _Pool | None = None, shared: tuple[np.ndarray, ...] = ()) -> _HostBatch:
    """CSR (and optionally CSC) arrays of one batch, compact: int32 (or int16) indices, float32 (or float64) values.

    With ``pool``, the non-zero-sized arrays are placed in it, except those that are views of ``shared``
    arrays (the caller's matrix, which outlives the fit anyway). Pooled index arrays are stored as int16
    where the indexed axis allows (up to 32,767 genes for the row-major copy, cells of the batch for the
    column-major one): the cache is the fit's largest allocation, and this takes a quarter off it.
    """
    # ``block`` may share memory with the caller's matrix: copy before anything that works in place
    if block.nnz and not np.all(block.data):
        block = block.copy()
        block.eliminate_zeros()  # explicit zeros: x log(x / x̂) would read 0 · log 0
    if not block.has_canonical_format:
        block = block.copy()
        block.sum_duplicates()
    index_dtype = np.int32 if block.nnz < np.iinfo(np.int32).max else np.int64
    data = np.asarray(block.data, dtype=value_dtype)
    torch_dtypes = {np.dtype(np.int16): torch.int16, np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
                    np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}

    def tensor(array: np.ndarray, dtype, *, large: bool = True, axis_length: int | None = None) -> torch.Tensor:
        if pool is not None and large and not any(np.may_share_memory(array, other) for other in shared):
            if axis_length is not None and axis_length <= COMPACT_INDEX_MAX:
                dtype = np.int16
            return pool.take(array, torch_dtypes[np.dtype(dtype)])
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        return t.pin_memory() if pin else t

    t_crow = t_row = t_values = None
    if transpose:
        # scipy's constructor copies its arguments: hand the arrays to an empty matrix instead
        square = sp.csr_matrix(block.shape, dtype=data.dtype)
        square.data, square.indices, square.indptr = data, block.indices, block.indptr
        csc = square.tocsc()  # counting sort, O(nnz)
        t_crow = tensor(csc.indptr, index_dtype, large=False)
        t_row = tensor(csc.indices, index_dtype, axis_length=block.shape[0])
        t_values = tensor(csc.data, value_dtype)
    sum_x = float(data.sum(dtype=np.float64))
    sum_sq = float(np.einsum("i,i->", data, data, dtype=np.float64))
    return _HostBatch(
        block.shape[0], block.shape[1], tensor(block.indptr, index_dtype, large=False),
        tensor(block.indices, index_dtype, axis_length=block.shape[1]),
        tensor(data, value_dtype), t_crow, t_row, t_values, sum_x, sum_sq,
    )


def partition(n_rows: int, n_batches: int, *, rng: np.random.Generator | None = None, contiguous: bool = True) -> list[np.ndarray]:
    """Positions ``0 … n_rows − 1`` in exactly ``n_batches`` near-equal batches (some empty if ``n_batches > n_rows``).

    Contiguous runs unless ``contiguous=False``, then a seeded random split (each batch sorted).
    """
    order = np.arange(n_rows) if contiguous or rng is None else rng.permutation(n_rows)
    chunks = np.array_split(order, n_batches)
    return chunks if contiguous or rng is None else [np.sort(c) for c in chunks]


class BatchPlan:
    """The fixed batches of one :class:`RowSource` for a fit, delivered on the device epoch after epoch.

    Parameters
    ----------
    source
        Cells to visit.
    n_batches
        Exactly this many batches (empty ones are skipped when iterating; data-parallel ranks must take
        the same number of steps).
    sparse
        Deliver :class:`SparseBatch` objects (else dense tensors).
    transpose
        Also prepare the column-major order of sparse batches (needed for the loadings' statistics).
    cache
        Keep prepared sparse batches between epochs (in-memory data); backed data are always streamed.
    random_membership
        Assign cells to batches at random (seeded by ``rng``) instead of contiguous runs; ignored for
        backed data, whose batches stay contiguous on disk.
    expected_nnz
        Non-zeros of the source, if known: on an accelerator the prepared batches are then kept in
        device memory when they take less than half of what is free (no copy per epoch), else in pinned
        host memory.
    """

    def __init__(self, source: RowSource, n_batches: int, *, device: torch.device, dtype: torch.dtype, sparse: bool,
                 transpose: bool = True, cache: bool = True, rng: np.random.Generator | None = None,
                 random_membership: bool = False, expected_nnz: int | None = None):
        self.source = source
        self.device, self.dtype = device, dtype
        self.sparse, self.transpose = sparse, transpose
        self.cache = bool(cache) and not source.backed and sparse
        contiguous = source.backed or not random_membership
        self._contiguous = contiguous
        self.positions = partition(source.n_rows, max(1, int(n_batches)), rng=rng, contiguous=contiguous)
        self._cached: list[_HostBatch | SparseBatch | None] = [None] * len(self.positions)
        self._value_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.on_device = self.cache and device.type != "cpu" and _fits_on_device(expected_nnz, dtype, device)
        self._pin = device.type == "cuda" and not self.on_device
        self._pool: _Pool | None = None
        self._workspace: dict = {}
        self._expected_nnz = expected_nnz
        matrix = source.matrix
        # views of the caller's in-memory CSR need no copy (unless they must be pinned for the GPU)
        self._shared = (matrix.data, matrix.indices) if sp.issparse(matrix) and not self._pin else ()

    def __len__(self) -> int:
        return len(self.positions)

    def _host(self, i: int) -> _HostBatch:
        pool = None
        if self.cache and not self.on_device:
            if self._pool is None:
                # room for the transposes, plus copies of the rows unless batches are views of the source
                copies = 1 if self._shared and self.source.rows_are_contiguous() and self._contiguous else 2
                self._pool = _Pool(copies * (self._expected_nnz or 0), self._pin)
            pool = self._pool
        return _host_batch(self.source.read_csr(self.positions[i]), transpose=self.transpose, pin=self._pin,
                           value_dtype=self._value_dtype, pool=pool, shared=self._shared)

    def get(self, i: int) -> SparseBatch | torch.Tensor:
        """Batch ``i`` on the device, valid until the next ``get`` of this plan (which reuses its buffers)."""
        if self.sparse:
            batch = self._cached[i]
            if batch is None:
                batch = self._host(i)
                if self.on_device:
                    batch = batch.to(self.device, self.dtype)
                if self.cache:
                    self._cached[i] = batch
            if not isinstance(batch, SparseBatch):
                batch = batch.to(self.device, self.dtype, workspace=self._workspace)
                batch.workspace = self._workspace
            return batch
        block = torch.from_numpy(self.source.read(self.positions[i]))
        if self._pin:
            block = block.pin_memory()
        return block.to(self.device, self.dtype, non_blocking=True)

    def __iter__(self) -> Iterator[tuple[np.ndarray, SparseBatch | torch.Tensor]]:
        return self.epoch()

    def epoch(self, order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, SparseBatch | torch.Tensor]]:
        """``(positions, batch)`` for every non-empty batch, in ``order`` (default: as planned)."""
        for i in range(len(self.positions)) if order is None else order:
            if len(self.positions[i]):
                yield self.positions[i], self.get(i)


def _fits_on_device(expected_nnz: int | None, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether all prepared batches (two orders of the non-zeros and two scratch buffers) fit comfortably."""
    if expected_nnz is None or device.type != "cuda":
        return False
    value_bytes = torch.finfo(dtype).bits // 8
    needed = expected_nnz * (4 * value_bytes + 2 * 4)
    free, _ = torch.cuda.mem_get_info(device)
    return needed < 0.5 * free


def use_sparse(nnz: int, n_rows: int, n_cols: int) -> bool:
    """Sparse kernels unless the data are nearly dense (more than ``SPARSE_MAX_DENSITY`` non-zeros)."""
    return nnz <= SPARSE_MAX_DENSITY * max(n_rows * n_cols, 1)


def n_batches_for(n_cells: int, batch_size: int) -> int:
    return max(1, math.ceil(n_cells / batch_size))
