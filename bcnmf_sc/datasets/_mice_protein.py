"""UCI Mice Protein Expression (Higuera et al. 2015), read from the shared data folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ._utils import SHARED_DATA_ENV, shared_data_dir

logger = logging.getLogger(__name__)

_RELATIVE = Path("mice_protein") / "Data_Cortex_Nuclear.csv"
_OBS_COLUMNS = ("MouseID", "Genotype", "Treatment", "Behavior", "class")


def mice_protein(*, path: str | os.PathLike | None = None) -> ad.AnnData:
    """Load the UCI Mice Protein Expression data (the paper's Down-syndrome benchmark).

    Higuera, Gardiner & Cios, PLoS ONE 2015: expression of 77 proteins in the cortex nuclear
    fraction of 72 mice (control or Ts65Dn, a Down-syndrome model), 15 replicate measurements
    each, with memantine or saline treatment, context-shock (``"C/S"``) or shock-context
    (``"S/C"``) behaviour. The values are not counts; use a Gaussian likelihood. The file is not
    bundled (see its provider's terms; cite Higuera et al. 2015).

    Cleaning (as the paper): the 1,396 missing values are replaced by their protein's mean over
    all 1,080 rows; the one negative value (RRP1_N, −0.062, a measurement artefact of a
    non-negative quantity) is clipped to 0 so that NMF can use the matrix.

    Parameters
    ----------
    path
        The CSV file, or a folder holding it (or holding ``mice_protein/``). Default:
        ``$BCNMF_SC_SHARED_DATA/mice_protein/Data_Cortex_Nuclear.csv`` when that variable is
        set, else ``../shared/data/mice_protein/Data_Cortex_Nuclear.csv`` next to the repository
        root.

    Returns
    -------
    AnnData with 1,080 rows (measurements) × 77 proteins:

    ``X``
        Dense float32 protein levels, missing values filled and clipped as above.
    ``obs``
        Categoricals ``MouseID`` (also the obs names, e.g. ``"309_1"``), ``mouse`` (the animal,
        e.g. ``"309"``), ``Genotype`` (``"Control"``/``"Ts65Dn"``), ``Treatment``
        (``"Memantine"``/``"Saline"``), ``Behavior`` (``"C/S"``/``"S/C"``), ``class`` (the 8
        combinations) and ``condition``: the paper's protocol, ``"target"`` = S/C & Saline
        (both genotypes, 270 rows), ``"background"`` = C/S & Saline & Control (135 rows),
        ``"other"`` for the rest.
    ``var_names``
        Protein columns as in the file (``"DYRK1A_N"`` …); ``var["protein"]`` without ``_N``.
    ``layers["missing"]``
        uint8 mask of the entries that were missing in the file.
    ``uns["mice_protein"]``
        Source, number of values filled and clipped.

    Raises
    ------
    FileNotFoundError
        If the CSV cannot be found.
    """
    csv = _resolve(path)
    df = pd.read_csv(csv, encoding="utf-8-sig")
    missing_cols = [c for c in _OBS_COLUMNS if c not in df.columns]
    if missing_cols:
        raise ValueError(f"{csv}: missing columns {missing_cols}")
    proteins = [c for c in df.columns if c not in _OBS_COLUMNS]
    values = df[proteins].to_numpy(dtype=np.float64)
    isna = np.isnan(values)
    col_mean = np.nanmean(values, axis=0)
    values = np.where(isna, col_mean[None, :], values)
    negative = values < 0
    values[negative] = 0.0
    n_filled, n_clipped = int(isna.sum()), int(negative.sum())
    if n_clipped:
        logger.info("mice_protein: clipped %d negative value(s) to 0", n_clipped)

    obs = pd.DataFrame(index=pd.Index(df["MouseID"].astype(str).to_numpy()))
    for col in _OBS_COLUMNS:
        obs[col] = pd.Categorical(df[col].astype(str).to_numpy())
    obs.insert(1, "mouse", pd.Categorical(obs["MouseID"].astype(str).str.rsplit("_", n=1).str[0]))
    saline = obs["Treatment"].to_numpy() == "Saline"
    sc = obs["Behavior"].to_numpy() == "S/C"
    control = obs["Genotype"].to_numpy() == "Control"
    condition = np.full(obs.shape[0], "other", dtype=object)
    condition[sc & saline] = "target"
    condition[~sc & saline & control] = "background"
    obs["condition"] = pd.Categorical(condition, categories=["target", "background", "other"])
    if not obs.index.is_unique:
        obs.index = pd.Index([f"{name}-{i}" for i, name in enumerate(obs.index)])

    var = pd.DataFrame(
        {"protein": [p[:-2] if p.endswith("_N") else p for p in proteins]},
        index=pd.Index(proteins),
    )
    adata = ad.AnnData(X=values.astype(np.float32), obs=obs, var=var)
    adata.layers["missing"] = isna.astype(np.uint8)
    adata.uns["mice_protein"] = {
        "source": "UCI Mice Protein Expression; Higuera, Gardiner & Cios, PLoS ONE 10:e0129126 (2015)",
        "file": str(csv),
        "n_missing_filled_with_column_mean": n_filled,
        "n_negative_clipped_to_zero": n_clipped,
    }
    return adata


def _resolve(path: str | os.PathLike | None) -> Path:
    if path is None:
        candidates = [shared_data_dir() / _RELATIVE]
    else:
        p = Path(path).expanduser()
        candidates = [p] if p.suffix.lower() == ".csv" else [p / _RELATIVE, p / _RELATIVE.name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "Mice Protein Expression CSV not found (looked for "
        + ", ".join(str(c) for c in candidates)
        + "). Pass path=... to the CSV (or its folder), or set "
        f"{SHARED_DATA_ENV} to the folder that holds mice_protein/Data_Cortex_Nuclear.csv. "
        "The file is the UCI 'Mice Protein Expression' data set (Higuera et al. 2015)."
    )
