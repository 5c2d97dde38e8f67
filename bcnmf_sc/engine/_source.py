"""Row-batch access to dense, sparse and backed (h5ad) matrices.

The engine never holds more than one batch of cells dense: a :class:`RowSource` selects rows
(cells) and columns (genes) of an underlying matrix and densifies one batch at a time, converting the
dtype per batch, not up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

try:  # anndata's backed sparse datasets (CSRDataset / CSCDataset)
    from anndata.abc import CSCDataset, CSRDataset

    _BACKED_SPARSE: tuple[type, ...] = (CSRDataset, CSCDataset)
except ImportError:  # pragma: no cover - older anndata
    _BACKED_SPARSE = ()

try:
    import h5py

    _BACKED_DENSE: tuple[type, ...] = (h5py.Dataset,)
except ImportError:  # pragma: no cover
    _BACKED_DENSE = ()


def _matrix_dtype(matrix) -> np.dtype:
    return np.dtype(matrix.dtype)


def check_dtype(dtype: np.dtype, *, name: str) -> None:
    """Refuse dtypes that are not real numbers (bool, object, complex, strings)."""
    if dtype.kind not in "iuf":
        raise TypeError(
            f"{name} has dtype {dtype}, which is not supported: pass real numbers (integer or float counts "
            "or expression values), not bool, object, complex or strings."
        )


def _same_index_dtypes(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """``matrix``, or a CSR matrix sharing its data and indices whose ``indptr`` has the indices' dtype.

    h5ad files often hold int32 indices with an int64 indptr; scipy then casts the whole index array
    to int64 on every row selection (0.3 s per batch at 200 M non-zeros). Only ``indptr`` (one entry
    per row) is copied; the caller's matrix is not touched.
    """
    indptr, indices = matrix.indptr, matrix.indices
    if indptr.dtype == indices.dtype or indptr[-1] > np.iinfo(indices.dtype).max:
        return matrix
    out = sp.csr_matrix(matrix.shape, dtype=matrix.dtype)
    out.data, out.indices, out.indptr = matrix.data, indices, indptr.astype(indices.dtype)
    return out


@dataclass
class Summary:
    """Statistics of one pass over a :class:`RowSource`, used for α*, initialisation and collapse checks."""

    col_sums: np.ndarray  # per gene, float64
    row_sums: np.ndarray  # per cell, float64
    sum_xlogx: float
    sum_sq: float
    nnz: int
    is_integer: bool
    sum_rlogr: float = 0.0  # Σ over cells of r log r, r the cell's total (rank-one null loss)


class RowSource:
    """Cells (rows) and genes (columns) of a matrix, read in dense float batches.

    Parameters
    ----------
    matrix
        A numpy array, a scipy sparse matrix or array (CSR or CSC), an h5py dataset or an anndata backed
        sparse dataset (``AnnData(..., backed="r").X``).
    rows
        Indices of the rows to use (sorted ascending for backed data); all rows when ``None``.
    cols
        Indices of the columns to use; all columns when ``None``.
    name
        Used in error messages.
    """

    def __init__(self, matrix, *, rows: np.ndarray | None = None, cols: np.ndarray | None = None, name: str = "X"):
        self.name = name
        self.backed = isinstance(matrix, _BACKED_SPARSE + _BACKED_DENSE)
        if self.backed and isinstance(matrix, _BACKED_SPARSE) and getattr(matrix, "format", "csr") == "csc":
            raise ValueError(
                f"{name} is a backed CSC matrix: reading cells in chunks needs CSR on disk. "
                "Convert the file to CSR or load it into memory."
            )
        if not self.backed:
            if isinstance(matrix, np.matrix):
                matrix = np.asarray(matrix)
            elif sp.issparse(matrix) and matrix.format != "csr":
                matrix = sp.csr_matrix(matrix)  # one nnz-sized copy; row slicing of CSC is slow
            elif sp.issparse(matrix):
                matrix = _same_index_dtypes(matrix)
            else:
                matrix = np.asarray(matrix)
                if matrix.ndim != 2:
                    raise ValueError(f"{name} must be a 2-D matrix, got shape {matrix.shape}.")
        check_dtype(_matrix_dtype(matrix), name=name)
        self.matrix = matrix
        n_total_rows, n_total_cols = matrix.shape
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.cols = None if cols is None else np.asarray(cols, dtype=np.int64)
        if self.rows is not None and self.backed and np.any(np.diff(self.rows) <= 0):
            raise ValueError("rows of a backed matrix must be sorted ascending and unique.")
        self.n_rows = n_total_rows if self.rows is None else len(self.rows)
        self.n_cols = n_total_cols if self.cols is None else len(self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    @property
    def is_sparse(self) -> bool:
        """Whether the underlying matrix is stored sparse (in memory or backed)."""
        return sp.issparse(self.matrix) or isinstance(self.matrix, _BACKED_SPARSE)

    #: set by :meth:`shard`: ``(rank, world_size, n_rows of the unsharded source)``
    shard_of: tuple[int, int, int] | None = None

    def with_cols(self, cols: np.ndarray) -> RowSource:
        """A source over the same rows and a subset ``cols`` (indices into this source's columns)."""
        new_cols = np.asarray(cols, dtype=np.int64) if self.cols is None else self.cols[cols]
        out = RowSource(self.matrix, rows=self.rows, cols=new_cols, name=self.name)
        out.shard_of = self.shard_of
        return out

    def shard(self, rank: int, world_size: int) -> RowSource:
        """Every ``world_size``-th row starting at ``rank`` (data-parallel fitting).

        Rows are dealt round-robin, so shard ``rank`` holds the rows at positions ``rank, rank + world_size, …``
        of this source; :attr:`shard_of` records that, so a data-parallel fit can draw each cell's random
        initial usages from the unsharded cell index and match a single-process fit.
        """
        if not (0 <= rank < world_size):
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}.")
        if self.shard_of is not None:
            raise ValueError("this source is already a shard; shard the full source instead.")
        rows = np.arange(self.n_rows) if self.rows is None else self.rows
        out = RowSource(self.matrix, rows=rows[rank::world_size], cols=self.cols, name=self.name)
        out.shard_of = (int(rank), int(world_size), int(self.n_rows))
        return out

    def rows_are_contiguous(self) -> bool:
        """Whether the selected rows form one run of the underlying matrix (then row ranges are views)."""
        return self.cols is None and (self.rows is None or len(self.rows) < 2 or bool(np.all(np.diff(self.rows) == 1)))

    def global_positions(self) -> np.ndarray:
        """Positions of this source's rows in the unsharded source (``arange`` when not a shard)."""
        if self.shard_of is None:
            return np.arange(self.n_rows)
        rank, world_size, n_total = self.shard_of
        return np.arange(rank, n_total, world_size)

    def _csr_view(self, positions: np.ndarray) -> sp.csr_matrix | None:
        if self.backed or self.cols is not None or not sp.issparse(self.matrix) or self.matrix.format != "csr":
            return None
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        if len(rows) == 0 or not (rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1)):
            return None
        m = self.matrix
        a, b = int(rows[0]), int(rows[-1]) + 1
        s, e = int(m.indptr[a]), int(m.indptr[b])
        indptr = m.indptr[a:b + 1] - s
        if indptr.dtype != m.indices.dtype:
            indptr = indptr.astype(m.indices.dtype)
        # scipy's constructor copies; assign the views to an empty matrix instead
        out = sp.csr_matrix((b - a, m.shape[1]), dtype=m.dtype)
        out.data, out.indices, out.indptr = m.data[s:e], m.indices[s:e], indptr
        out.has_canonical_format = m.has_canonical_format  # a row range of a canonical matrix is canonical
        return out

    def _rows_block(self, positions: np.ndarray):
        """The requested rows (all columns of the underlying matrix), sparse or dense as stored."""
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        if len(rows) == 0:
            return self.matrix[0:0]
        contiguous = bool(rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1))
        if self.backed:
            # read one contiguous range from disk, then pick the requested rows
            start, stop = int(rows.min()), int(rows.max()) + 1
            block = self.matrix[start:stop]
            if not contiguous:
                block = block[rows - start]
        elif contiguous:
            block = self.matrix[int(rows[0]):int(rows[-1]) + 1]  # a slice: cheap for CSR and dense
        else:
            block = self.matrix[rows]
        return block

    def read_csr(self, positions: np.ndarray) -> sp.csr_matrix:
        """The rows at ``positions`` as a scipy CSR matrix in the stored dtype (never densified if stored sparse).

        A contiguous run of rows of an in-memory CSR matrix (all columns) shares the matrix's arrays: no copy.
        Callers must not modify the result in place.
        """
        view = self._csr_view(positions)
        if view is not None:
            return view
        block = self._rows_block(positions)
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            if self.cols is not None:
                block = block[:, self.cols]
        else:
            block = np.asarray(block)
            if self.cols is not None:
                block = block[:, self.cols]
            if block.dtype == np.float16:  # scipy.sparse has no float16; upcast this batch only
                block = block.astype(np.float32)
            block = sp.csr_matrix(block)
        return block

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Dense float32 block of the rows at ``positions`` (indices into this source's rows)."""
        block = self._rows_block(positions)
        if self.cols is not None:
            block = block[:, self.cols]
        if sp.issparse(block):
            block = block.toarray()
        return np.array(block, dtype=np.float32)  # a copy: never hand out a view of the caller's array

    def batches(self, n_batches: int, *, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """Row positions split into ``n_batches`` near-equal batches, shuffled with ``rng`` when given.

        Without ``rng`` batches are contiguous and in order. In memory, ``rng`` permutes the rows; for
        backed data the batches stay contiguous on disk and only their order is shuffled (one read each).
        """
        n_batches = int(min(max(1, n_batches), max(1, self.n_rows)))
        if rng is None or self.backed:
            chunks = np.array_split(np.arange(self.n_rows), n_batches)
            if rng is not None:
                chunks = [chunks[i] for i in rng.permutation(len(chunks))]
            return chunks
        return [np.sort(chunk) for chunk in np.array_split(rng.permutation(self.n_rows), n_batches)]

    def summarize(self, batch_size: int = 4096) -> Summary:
        """One pass: validate values and collect row/column sums, Σ x log x, Σ x², nnz, integrality.

        Work and memory follow the non-zeros: batches are read as CSR, never densified.
        """
        col_sums = np.zeros(self.n_cols, dtype=np.float64)
        row_sums = np.zeros(self.n_rows, dtype=np.float64)
        sum_xlogx = sum_sq = 0.0
        nnz = 0
        is_integer = True
        for positions in self.batches(-(-self.n_rows // batch_size)):
            block = self.read_csr(positions)
            data = block.data
            if data.size == 0:
                continue
            if data.dtype.kind == "f" and not np.isfinite(data.sum(dtype=np.float64)):
                raise ValueError(f"{self.name} contains NaN or infinite values; remove or impute them first.")
            smallest = data.min()
            if smallest < 0:
                raise ValueError(
                    f"{self.name} contains negative values; NMF needs non-negative data "
                    "(raw counts, or log-normalised values, not scaled/centred data)."
                )
            col_sums += np.bincount(block.indices, weights=data, minlength=self.n_cols)
            cumulative = np.empty(data.size + 1)
            cumulative[0] = 0.0
            np.cumsum(data, dtype=np.float64, out=cumulative[1:])
            row_sums[positions] = np.diff(cumulative[block.indptr])
            positive = data if smallest > 0 else data[data > 0]
            nnz += positive.size
            logs = np.log(positive, dtype=np.float64) if positive.dtype != np.float64 else np.log(positive)
            sum_xlogx += float(np.dot(logs, positive))
            sum_sq += float(np.einsum("i,i->", positive, positive, dtype=np.float64))
            if is_integer and positive.dtype.kind == "f":
                is_integer = bool(np.array_equal(positive, np.rint(positive)))
        positive_rows = row_sums[row_sums > 0]
        sum_rlogr = float(np.dot(positive_rows, np.log(positive_rows)))
        return Summary(col_sums, row_sums, sum_xlogx, sum_sq, nnz, is_integer, sum_rlogr)


def as_source(data, *, name: str) -> RowSource:
    """Wrap ``data`` in a :class:`RowSource` unless it already is one."""
    return data if isinstance(data, RowSource) else RowSource(data, name=name)
