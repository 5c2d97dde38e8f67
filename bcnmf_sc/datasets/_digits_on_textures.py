"""The bcNMF paper's demo images: digits 0/1 blended onto textures, plus texture-only images."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd

from ._utils import DATA_DIR

logger = logging.getLogger(__name__)

_FILE = "digits_on_textures.npz"
_SIDE = 28


def digits_on_textures() -> ad.AnnData:
    """Load the bcNMF paper's "digits on textures" demo images.

    200 *target* images (100 handwritten "0" and 100 "1", each blended onto a natural-texture
    patch) and 150 *background* images (texture patches only), 28 × 28 pixels flattened in
    row-major order, intensities in ``[0, 1]``. The textures dominate the variance, so plain NMF
    or PCA of the targets mostly finds texture; a contrastive method with the textures as
    background recovers the digits. Paper protocol: Gaussian likelihood, K = 2, α = 2 (paper
    scale), KMeans(2) on the target usages, ARI against ``obs["digit"]``.

    The images come from the bcNMF authors' public repository (code under the MIT licence;
    the digits are MNIST-style 28 × 28 handwritten digits). They ship inside the package (float32, compressed).

    Returns
    -------
    A new AnnData (350 images × 784 pixels) on every call:

    ``X``
        Dense float32 array of pixel intensities in ``[0, 1]``.
    ``obs["condition"]``
        Categorical ``"target"`` (first 200 rows) / ``"background"`` (last 150 rows).
    ``obs["digit"]``
        Categorical ``"0"`` / ``"1"`` for targets, ``"none"`` for backgrounds.
    ``var["row"]``, ``var["col"]``
        Pixel position in the 28 × 28 image (``var_names`` are ``"pixel_0"`` … ``"pixel_783"``).

    Examples
    --------
    >>> import bcnmf_sc as bc
    >>> adata = bc.datasets.digits_on_textures()
    >>> adata.shape
    (350, 784)
    """
    path = DATA_DIR / _FILE
    if not path.is_file():  # pragma: no cover - broken installation
        raise FileNotFoundError(f"bundled file {path} is missing; reinstall bcnmf_sc")
    with np.load(path) as z:
        target = z["target"]
        background = z["background"]
        digit = z["target_digit"]
        names = [*z["target_names"].tolist(), *z["background_names"].tolist()]
    n_t, n_b = target.shape[0], background.shape[0]
    X = np.ascontiguousarray(np.vstack([target, background]), dtype=np.float32)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(["target"] * n_t + ["background"] * n_b, categories=["target", "background"]),
            "digit": pd.Categorical([str(int(d)) for d in digit] + ["none"] * n_b, categories=["0", "1", "none"]),
        },
        index=pd.Index(names),
    )
    pixels = np.arange(X.shape[1])
    var = pd.DataFrame(
        {"row": pixels // _SIDE, "col": pixels % _SIDE},
        index=pd.Index([f"pixel_{i}" for i in pixels]),
    )
    logger.debug("digits_on_textures: %d target + %d background images", n_t, n_b)
    return ad.AnnData(X=X, obs=obs, var=var)
