"""The visible dev set: frozen distributions, its rules (area, visibility, kinds split) and its layout."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from myriad.errors import ConfigError
from myriad.synthetic.realistic_devset import (
    _stream,
    catalogue,
    defect_counts,
    make_realistic_devset,
    render_sample,
    visible_spec,
)
from myriad.synthetic.realistic_photos import PHOTOS
from myriad.synthetic.visible_defects import (
    VISIBLE_AREA_RANGE,
    VISIBLE_EVAL_KINDS,
    VISIBLE_KINDS,
    VISIBLE_MIN_VISIBILITY,
    VISIBLE_NOT_ON,
    VISIBLE_PARAMETERS,
    VISIBLE_TRAIN_KINDS,
)

#: sha256 of the frozen distributions. Changing a range changes the benchmark: make a new preset instead.
FROZEN = "269634c13dcb0fcff6ac20e31981b3b7adad1736486870157ac35ef582688005"


def _frozen_digest() -> str:
    table = {
        "parameters": VISIBLE_PARAMETERS,
        "area": VISIBLE_AREA_RANGE,
        "visibility": VISIBLE_MIN_VISIBILITY,
        "not_on": VISIBLE_NOT_ON,
        "kinds": {k: [v.family, v.split, v.needs_orientation] for k, v in VISIBLE_KINDS.items()},
    }
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def test_distributions_are_frozen():
    assert _frozen_digest() == FROZEN


def test_kinds_split_into_disjoint_families():
    assert set(VISIBLE_EVAL_KINDS).isdisjoint(VISIBLE_TRAIN_KINDS)
    for split in (VISIBLE_EVAL_KINDS, VISIBLE_TRAIN_KINDS):
        assert {VISIBLE_KINDS[k].family for k in split} == {"local", "texture-wide"}


@pytest.mark.parametrize("kind", VISIBLE_EVAL_KINDS)
def test_every_evaluation_kind_is_small_and_at_least_medium(kind):
    kinds = catalogue("visible")
    spec = VISIBLE_KINDS[kind]
    category = "brick"  # oriented: every kind applies
    for index in range(2):  # the preset's crop size: visibility depends on it
        sample = render_sample(category, kind, _stream(3, category, kind, index), 256, "any", 0, kinds)
        info = sample.info
        least = VISIBLE_MIN_VISIBILITY[1 if spec.is_global else 0]
        assert info["visibility"] >= least
        assert info["visibility_bucket"] in ("medium", "easy")
        if not spec.is_global:
            assert VISIBLE_AREA_RANGE[0] <= info["area_fraction"] <= VISIBLE_AREA_RANGE[1]
            changed = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2) > 0
            assert not (changed & ~sample.mask).any()  # nothing outside the mask changes


def test_training_kinds_paint_on_training_photos():
    from dataclasses import replace

    kinds = replace(catalogue("visible"), min_visibility=None)  # the least visibility is the evaluation set's rule
    for kind in VISIBLE_TRAIN_KINDS:
        sample = render_sample("moon", kind, _stream(0, "moon", kind, 0), 128, "any", 0, kinds)
        assert sample.info["kind"] == kind and sample.mask is not None


def test_counts_per_family_spread_over_applicable_kinds():
    spec = visible_spec()
    assert spec.test_good >= 200 and spec.train >= 200
    for category in spec.categories:
        counts = defect_counts(spec, category)
        for family in ("local", "texture-wide"):
            assert sum(n for k, n in counts.items() if VISIBLE_KINDS[k].family == family) == spec.test_defect
        if not PHOTOS[category].oriented:
            assert "orientation_strong" not in counts
    assert "density_strong" not in defect_counts(spec, "fundus")
    assert any(not PHOTOS[c].region is None for c in spec.categories)  # an object photo with pose variation


def test_preset_refuses_training_kinds_and_photos(tmp_path):
    from dataclasses import replace

    with pytest.raises(ConfigError, match="training kind"):
        replace(visible_spec(), defects=("blotch",)).validate()
    with pytest.raises(ConfigError, match="training-only photo"):
        replace(visible_spec(), categories=("moon",)).validate()
    with pytest.raises(ConfigError, match="unknown visible defect kind"):
        replace(visible_spec(), defects=("pinhole",)).validate()


def test_small_visible_devset_layout(tmp_path):
    from dataclasses import replace

    from myriad.datasets import read_mvtec

    spec = replace(visible_spec(), categories=("grass",), train=2, test_good=2, test_defect=2)
    manifest = make_realistic_devset(tmp_path / "vis", spec)
    assert manifest["spec"]["preset"] == "visible"
    assert manifest["split"]["min_visibility"] == list(VISIBLE_MIN_VISIBILITY)
    assert manifest["counts"]["family"] == {"local": 2, "texture-wide": 2}
    assert "--preset visible" in manifest["command"]
    category = read_mvtec(tmp_path / "vis", ["grass"])[0]
    assert len(category.test) == 6
