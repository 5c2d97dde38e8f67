"""RowSource: row batches of dense, sparse and backed matrices, validation and memory behaviour."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from bcnmf_sc.engine import RowSource


def _counts(n=50, g=12, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.poisson(1.0, (n, g))
    m[rng.random((n, g)) < 0.5] = 0
    return m


IN_MEMORY = {
    "dense_int64": lambda m: m.astype(np.int64),
    "dense_uint8": lambda m: m.astype(np.uint8),
    "dense_float64": lambda m: m.astype(np.float64),
    "dense_float16": lambda m: m.astype(np.float16),
    "csr_int32": lambda m: sp.csr_matrix(m.astype(np.int32)),
    "csc_float64": lambda m: sp.csc_matrix(m.astype(np.float64)),
    "csr_array": lambda m: sp.csr_array(m.astype(np.float32)),
    "coo": lambda m: sp.coo_matrix(m),
}


@pytest.mark.parametrize("fmt", list(IN_MEMORY))
def test_read_returns_float32_rows_and_columns(fmt):
    m = _counts()
    rows, cols = np.array([1, 4, 5, 30, 49]), np.array([0, 3, 11])
    src = RowSource(IN_MEMORY[fmt](m), rows=rows, cols=cols)
    assert src.shape == (5, 3)
    block = src.read(np.array([0, 2, 4]))
    assert block.dtype == np.float32 and isinstance(block, np.ndarray)
    np.testing.assert_array_equal(block, m[np.ix_(rows[[0, 2, 4]], cols)])
    sub = src.with_cols(np.array([2, 0]))  # composes with the existing column selection
    np.testing.assert_array_equal(sub.read(np.arange(5)), m[np.ix_(rows, cols[[2, 0]])])


@pytest.mark.parametrize("dtype", [bool, object, np.complex64, np.complex128, "U3"])
def test_unsupported_dtypes_are_refused(dtype):
    m = _counts().astype(dtype)
    with pytest.raises(TypeError, match=rf"my data has dtype {np.dtype(dtype)}.*not supported"):
        RowSource(m, name="my data")


def test_sparse_bool_is_refused():
    with pytest.raises(TypeError, match="bool"):
        RowSource(sp.csr_matrix(_counts() > 0))


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", ["dense_float64", "csr_array", "csc_float64"])
def test_summarize_rejects_negative_nan_inf_naming_the_data(bad, fmt):
    m = _counts().astype(np.float64)
    m[37, 5] = bad
    src = RowSource(IN_MEMORY[fmt](m), name="background cells")
    message = "negative values" if bad == -1.0 else "NaN or infinite"
    with pytest.raises(ValueError, match=f"background cells contains {message}"):
        src.summarize(batch_size=16)


def test_summarize_statistics():
    m = _counts().astype(np.float64)
    m[3, 2] = 2.5  # non-integer
    s = RowSource(sp.csr_matrix(m)).summarize(batch_size=7)
    np.testing.assert_allclose(s.col_sums, m.sum(0))
    np.testing.assert_allclose(s.row_sums, m.sum(1))
    pos = m[m > 0]
    assert s.nnz == pos.size
    assert s.sum_xlogx == pytest.approx(np.sum(pos * np.log(pos)))
    assert s.sum_sq == pytest.approx(np.sum(pos**2))
    assert not s.is_integer
    assert RowSource(_counts()).summarize().is_integer


def test_batches_partition_the_rows():
    src = RowSource(_counts(n=23))
    in_order = src.batches(5)
    assert len(in_order) == 5
    np.testing.assert_array_equal(np.concatenate(in_order), np.arange(23))
    shuffled = src.batches(5, rng=np.random.default_rng(0))
    assert sorted(np.concatenate(shuffled).tolist()) == list(range(23))
    again = src.batches(5, rng=np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(shuffled, again))
    assert len(src.batches(1000)) == 23  # never an empty batch
    assert len(src.batches(0)) == 1


def test_shards_cover_every_row_once():
    src = RowSource(_counts(n=17), rows=np.arange(2, 17))
    shards = [src.shard(r, 3) for r in range(3)]
    rows = np.sort(np.concatenate([s.rows for s in shards]))
    np.testing.assert_array_equal(rows, np.arange(2, 17))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        RowSource(np.arange(5))
    with pytest.raises(ValueError, match="2-D"):
        RowSource(np.zeros((2, 3, 4)))


# ------------------------------------------------------------------------------------------------ backed
@pytest.fixture
def backed_files(tmp_path):
    m = _counts(n=40, g=10).astype(np.float32)
    paths = {}
    for name, matrix in {"csr": sp.csr_matrix(m), "csc": sp.csc_matrix(m), "dense": m}.items():
        path = tmp_path / f"{name}.h5ad"
        ad.AnnData(matrix).write_h5ad(path)
        paths[name] = path
    return m, paths


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_backed_h5ad_reads_like_memory(backed_files, fmt):
    m, paths = backed_files
    adata = ad.read_h5ad(paths[fmt], backed="r")
    try:
        rows = np.array([0, 3, 4, 5, 20, 39])
        src = RowSource(adata.X, rows=rows, cols=np.array([1, 9]))
        assert src.backed
        np.testing.assert_array_equal(src.read(np.arange(6)), m[np.ix_(rows, [1, 9])])
        np.testing.assert_allclose(src.summarize(batch_size=4).col_sums, m[np.ix_(rows, [1, 9])].sum(0))
        with pytest.raises(ValueError, match="sorted ascending"):
            RowSource(adata.X, rows=np.array([5, 3]))
    finally:
        adata.file.close()


def test_backed_csc_is_refused_with_a_reason(backed_files):
    _, paths = backed_files
    adata = ad.read_h5ad(paths["csc"], backed="r")
    try:
        with pytest.raises(ValueError, match="backed CSC.*CSR"):
            RowSource(adata.X)
    finally:
        adata.file.close()


# ------------------------------------------------------------------------------------------------ memory
def _peak_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("fmt", ["dense_int64", "dense_float64", "csr_int64"])
def test_no_whole_matrix_conversion(fmt):
    """Integer and float64 input are converted per batch: wrapping, summarising in blocks and reading a batch
    never allocate anything close to a float copy of the whole matrix (numpy allocations are traced)."""
    rng = np.random.default_rng(0)
    m = rng.poisson(2.0, (20000, 40)).astype(np.int64 if "int" in fmt else np.float64)
    matrix = sp.csr_matrix(m) if fmt.startswith("csr") else m
    size = m.size * 4  # a float32 copy of the whole matrix
    holder = {}
    assert _peak_bytes(lambda: holder.setdefault("src", RowSource(matrix))) < 0.01 * size
    src = holder["src"]
    assert _peak_bytes(lambda: src.read(np.arange(100, 200))) < 0.05 * size
    # per-row bookkeeping (row sums, batch indices) costs ~30 bytes a cell against 160 for a float32 copy
    assert _peak_bytes(lambda: src.summarize(batch_size=100)) < 0.4 * size


def test_mixed_index_dtypes_are_aligned_without_copying_the_non_zeros():
    """h5ad files often pair int32 indices with an int64 indptr; scipy would then cast the whole index
    array on every row selection. The source shares data and indices and copies only indptr."""
    x = sp.random(300, 40, density=0.2, format="csr", dtype=np.float32, random_state=0)
    x.indptr = x.indptr.astype(np.int64)
    source = RowSource(x)
    assert source.matrix.indptr.dtype == source.matrix.indices.dtype == np.int32
    assert np.shares_memory(source.matrix.data, x.data) and np.shares_memory(source.matrix.indices, x.indices)
    assert x.indptr.dtype == np.int64  # the caller's matrix is untouched
    rows = np.array([3, 7, 8, 150, 299])
    picked = RowSource(x, rows=rows).read_csr(np.arange(len(rows)))
    np.testing.assert_array_equal(picked.toarray(), x[rows].toarray())
