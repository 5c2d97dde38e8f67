"""Bundled Kang et al. (2018) PBMC subset: 300 control + 300 IFN-β stimulated cells."""

from __future__ import annotations

import logging
import os

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._utils import DATA_DIR

logger = logging.getLogger(__name__)

_FILE = "kang_pbmc_small.h5ad"


def kang_pbmc() -> ad.AnnData:
    """Load a small control vs IFN-β-stimulated PBMC dataset (raw UMI counts).

    Kang et al., Nat Biotechnol 2018 (GEO GSE96583): peripheral blood mononuclear cells,
    unstimulated (``"ctrl"``) or stimulated with interferon-β (``"stim"``). This is the
    300 + 300 cell subset distributed with the rliger R package (GPL-3; the data are public on
    GEO), restricted to the 249 genes measured in both conditions. It ships inside the package
    (about 0.3 MB), so no download is needed. The interferon response (ISG15, IFI6, IFIT1/2/3,
    MX1, RSAD2, CXCL10, …) is the known stimulation-specific program: use ``"ctrl"`` as the
    background.

    Returns
    -------
    A new AnnData (600 cells × 249 genes) on every call:

    ``X``
        :class:`scipy.sparse.csr_matrix`, float32, raw integer UMI counts.
    ``layers["counts"]``
        The same counts (a separate copy).
    ``obs["condition"]``
        Categorical ``"ctrl"`` / ``"stim"``; obs names are the barcodes prefixed by the
        condition (``"ctrl_AAAC…"``), unique.
    ``var``
        Gene symbols as the index.
    ``uns["dataset"]``
        Source and licence notes.

    Examples
    --------
    >>> import bcnmf_sc as bc
    >>> adata = bc.datasets.kang_pbmc()
    >>> adata.obs["condition"].value_counts().to_dict()
    {'ctrl': 300, 'stim': 300}
    """
    path = DATA_DIR / _FILE
    if not path.is_file():  # pragma: no cover - broken installation
        raise FileNotFoundError(f"bundled file {path} is missing; reinstall bcnmf_sc")
    adata = ad.read_h5ad(path)
    logger.debug("kang_pbmc: loaded %s (%d x %d)", path, adata.n_obs, adata.n_vars)
    return adata


def _read_10x_like_h5(path: str | os.PathLike) -> ad.AnnData:
    """Read a 10x-style HDF5 file (genes × cells CSC under ``matrix/``) as cells × genes.

    ``scanpy.read_10x_h5`` rejects these files (no ``features/id``). The CSC matrix of
    genes × cells has the same arrays as the CSR matrix of cells × genes.
    """
    with h5py.File(path, "r") as f:
        m = f["matrix"]
        n_genes, n_cells = (int(v) for v in m["shape"][()])
        data = m["data"][()]
        indices = m["indices"][()].astype(np.int32)
        indptr = m["indptr"][()].astype(np.int64)
        barcodes = [b.decode() if isinstance(b, bytes) else str(b) for b in m["barcodes"][()]]
        genes = [b.decode() if isinstance(b, bytes) else str(b) for b in m["features/name"][()]]
    if not np.array_equal(data, np.round(data)):
        raise ValueError(f"{path}: counts are not integers")
    X = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(n_cells, n_genes))
    X.sum_duplicates()
    X.sort_indices()
    return ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes)), var=pd.DataFrame(index=pd.Index(genes)))


def _build_kang_pbmc(ctrl: str | os.PathLike, stim: str | os.PathLike) -> ad.AnnData:
    """Combine the two 10x-like files into the bundled AnnData (genes present in both)."""
    parts = {}
    for condition, path in (("ctrl", ctrl), ("stim", stim)):
        a = _read_10x_like_h5(path)
        if not a.var_names.is_unique:
            raise ValueError(f"{path}: duplicated gene names")
        names = [b if b.startswith(f"{condition}_") else f"{condition}_{b}" for b in a.obs_names]
        a.obs_names = names
        a.obs["condition"] = condition
        parts[condition] = a
    shared = [g for g in parts["ctrl"].var_names if g in set(parts["stim"].var_names)]
    X = sp.vstack([parts[c][:, shared].X for c in ("ctrl", "stim")], format="csr").astype(np.float32)
    X.sort_indices()
    obs = pd.concat([parts[c].obs for c in ("ctrl", "stim")])
    obs["condition"] = pd.Categorical(obs["condition"], categories=["ctrl", "stim"])
    if not obs.index.is_unique:
        raise ValueError("cell names are not unique after prefixing with the condition")
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(shared)))
    adata.layers["counts"] = X.copy()
    adata.uns["dataset"] = {
        "name": "kang_pbmc_small",
        "source": "Kang et al., Nat Biotechnol 36:89-94 (2018); GEO GSE96583; 300 ctrl + 300 stim "
        "cell subset shipped with the rliger R package",
        "licence": "rliger package data: GPL-3; underlying data public on GEO",
        "genes": "249 genes measured in both conditions (aligned by name)",
    }
    return adata
