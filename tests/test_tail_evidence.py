"""Tail evidence: how rare a score is among held-out normals (the fusion's common scale)."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.tail_evidence import TailModel, heldout_evidence


def test_survival_is_the_conformal_rank_inside_and_a_decaying_tail_beyond():
    scores = np.arange(1.0, 21.0)  # 20 held-out normals: 1 .. 20
    model = TailModel.fit(scores)
    assert model.survival(0.5) == pytest.approx(1.0)  # below every normal: (1 + 20) / 21
    assert model.survival(10.0) == pytest.approx((1 + 11) / 21)  # 11 held-out scores >= 10
    beyond = model.survival(np.array([20.5, 25.0, 40.0]))
    assert (np.diff(beyond) < 0).all() and beyond[0] <= 1 / 21 + 1e-12  # past the maximum: still ordered
    grid = np.linspace(0, 60, 500)
    assert (np.diff(model.survival(grid)) <= 1e-15).all()  # never increases
    assert (model.evidence(grid) >= 0).all()


def test_scale_free_two_members_on_different_scales_give_the_same_evidence():
    rng = np.random.default_rng(0)
    base = rng.exponential(1.0, 200)
    small, large = TailModel.fit(base), TailModel.fit(1000 * base + 5)
    for x in (0.5, 2.0, 6.0):
        assert small.evidence(x) == pytest.approx(large.evidence(1000 * x + 5), rel=1e-9)


def test_heldout_evidence_judges_each_normal_against_the_others():
    a, b = [1.0, 2.0, 3.0, 10.0], [5.0, 4.0, 3.0, 2.0]
    out = heldout_evidence([a, b])
    expected = [max(TailModel.fit(np.delete(a, i)).evidence(a[i]), TailModel.fit(np.delete(b, i)).evidence(b[i]))
                for i in range(4)]
    assert out == pytest.approx(expected)
    assert out.argmax() == 3  # 10 is far beyond the other normals of member a
    with pytest.raises(ValueError, match="at least 3"):
        heldout_evidence([[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="at least 2 finite"):
        TailModel.fit([1.0, float("nan")])
