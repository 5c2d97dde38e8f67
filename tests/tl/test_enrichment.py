"""Per-topic enrichment statistics and the ``enriched`` criterion."""

from __future__ import annotations

import numpy as np

from bcnmf_sc.tl._enrichment import active_share, auroc, enrichment_table


def _usages(seed: int = 0):
    """Topic 0: used by half of the target cells only; topic 1: used alike by both groups; topic 2: by the
    background more than by the target."""
    rng = np.random.default_rng(seed)
    n = 400
    target = rng.gamma(2.0, 1.0, size=(n, 3))
    background = rng.gamma(2.0, 1.0, size=(n, 3))
    target[:, 0] = np.where(np.arange(n) < n // 2, rng.gamma(5.0, 4.0, n), 1e-4 * rng.random(n))
    background[:, 0] = 1e-3 * rng.random(n)  # slightly above the inactive target cells: AUROC ≈ 0.5
    background[:, 2] *= 3
    return target, background


def test_a_subpopulation_program_is_enriched_though_its_auroc_is_low():
    target, background = _usages()
    area = auroc(target, background)
    assert area[0] < 0.75  # the old AUROC criterion would have missed it
    share = active_share(target, background)
    np.testing.assert_allclose(share[0], 0.5, atol=0.01)
    assert 0.0 < share[1] < 0.15  # about 1 − 0.95 by chance
    table = enrichment_table(target, background, ["sub", "same", "bg"], np.array(["target"] * 3), n_permutations=199)
    assert table["enriched"].tolist() == [True, False, False]
    assert list(table["active_share"]) == list(share)


def test_a_background_at_zero_does_not_make_every_positive_usage_active():
    target = np.full((100, 1), 1e-20)
    target[:10] = 5.0
    background = np.full((100, 1), 1e-20)
    np.testing.assert_allclose(active_share(target, background), [0.1])
