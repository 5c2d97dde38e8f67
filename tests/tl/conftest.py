"""Fixtures of the ``tl`` tests."""

from __future__ import annotations

import pytest
from anndata import AnnData
from .tl_helpers import FAST, small_adata

import bcnmf_sc as bc


@pytest.fixture
def adata() -> AnnData:
    return small_adata()


@pytest.fixture(scope="module")
def fitted() -> AnnData:
    """One fit of the small data, shared by read-only tests (copy it before changing it)."""
    data = small_adata()
    bc.tl.bcnmf(data, background_key="condition", background="background", **FAST)
    return data
