"""The latent table's support-aware score: a 1-row-support match sorts below a well-supported one;
the bound equals Fisher's z interval by hand; flags and constant columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dualsae.report.ranking import constant_columns, match_flags, support_score


def test_one_row_match_sorts_below_a_well_supported_one():
    # latent 0: c = 1.000 on 1 co-firing row (the latent 1320); latent 1: c = 0.6 on 400 rows;
    # latent 2: c = 0.95 on 30 rows; latent 3: unmatched (NaN)
    corr, support = np.array([1.0, 0.6, 0.95, np.nan]), np.array([1, 400, 30, 0])
    score = support_score(corr, support)
    order = [int(j) for j in np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")]
    assert order == [2, 1, 0, 3]
    assert score[0] == -1.0 and math.isnan(score[3])


def test_score_is_the_lower_fisher_bound_with_support_as_sample_size():
    for c, s in ((0.6, 400), (0.3, 50), (-0.2, 12), (0.999, 8)):
        cc = min(c, 0.99)
        want = math.tanh(math.atanh(cc) - 1.96 / math.sqrt(s - 3))
        assert support_score(np.array([c]), np.array([s]))[0] == pytest.approx(want)
    # more support, same correlation: a higher bound; never above the correlation itself
    s = support_score(np.full(4, 0.5), np.array([5, 20, 100, 1000]))
    assert np.all(np.diff(s) > 0) and np.all(s < 0.5)


def test_flags_mark_low_support_and_below_null_and_hide_nothing():
    corr = np.array([0.9, 0.2, 0.5, np.nan])
    flags = match_flags(corr, np.array([2, 100, 100, 0]), np.array([np.nan, 0.3, 0.1, np.nan]), np.array([True, True, True, False]))
    assert flags == ["low support", "≤ null", "", ""]


def test_constant_columns():
    got = constant_columns({"cos": np.ones(5), "corr": np.array([0.1, 0.2, np.nan]), "one": np.array([np.nan, 2.0])})
    assert got == {"cos": 1.0}
