"""Synthetic textures, defect painters and dev sets: determinism, masks, MVTec layout, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from myriad.datasets import load_mask, read_mvtec
from myriad.errors import ConfigError, DatasetError
from myriad.synthetic.defects import DEFECTS, EVAL_DEFECTS, FAMILIES, TRAIN_DEFECTS, paint_defect, visibility
from myriad.synthetic.devset import MANIFEST, DevsetSpec, iter_defect_samples, make_devset
from myriad.synthetic.textures import TEXTURES, get_texture, sample_texture

SIZE = 64
SMALL = DevsetSpec(categories=("wood", "gravel"), train=3, test_good=2, test_defect=1, size=SIZE, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(TEXTURES))
def test_texture_is_rgb_uint8_and_seeded(name):
    a = sample_texture(name, 7, SIZE)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, sample_texture(name, 7, SIZE))
    assert not np.array_equal(a, sample_texture(name, 8, SIZE))
    assert a.std() > 3  # a texture, not a flat colour


def test_unknown_texture_lists_available():
    with pytest.raises(ConfigError, match="brick"):
        get_texture("carpet")


def test_eval_and_train_kinds_are_disjoint_and_cover_every_family():
    assert not set(EVAL_DEFECTS) & set(TRAIN_DEFECTS)
    assert set(EVAL_DEFECTS) | set(TRAIN_DEFECTS) == set(DEFECTS)
    for kinds in (EVAL_DEFECTS, TRAIN_DEFECTS):
        assert {DEFECTS[k].family for k in kinds} == set(FAMILIES)


@pytest.mark.parametrize("kind", sorted(DEFECTS))
def test_defect_mask_is_nonempty_aligned_and_deterministic(kind):
    from scipy.ndimage import binary_dilation

    image = sample_texture("wood", 1, 96)
    donor = sample_texture("gravel", 2, 96)
    out, mask = paint_defect(kind, image, 5, donor=donor)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == bool and mask.any()
    again, mask_again = paint_defect(kind, image, 5, donor=donor)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(mask, mask_again)
    assert visibility(image, out, mask) > 5.0  # the change happens inside the mask
    if DEFECTS[kind].whole_image:
        assert mask.all()
    else:
        assert mask.mean() < 0.5
        changed = np.abs(out.astype(int) - image.astype(int)).max(axis=2) > 12
        near = binary_dilation(mask, iterations=3)
        assert (changed & ~near).sum() <= 0.01 * changed.sum() + 2  # nothing changes far from the mask


def test_make_devset_is_deterministic_and_readable(tmp_path):
    first = make_devset(tmp_path / "a", SMALL)
    make_devset(tmp_path / "b", SMALL)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    make_devset(tmp_path / "c", DevsetSpec(**{**SMALL.__dict__, "seed": 4}))
    assert _files(tmp_path / "a") != _files(tmp_path / "c")

    categories = {c.name: c for c in read_mvtec(tmp_path / "a")}
    assert set(categories) == {"wood", "gravel"}
    wood, gravel = categories["wood"], categories["gravel"]
    assert len(wood.train) == 3 and wood.has_masks and gravel.has_masks
    # wood is oriented: every evaluation kind; gravel is isotropic: no rotation kind
    assert wood.defects == sorted(EVAL_DEFECTS)
    assert "local_rotate" not in gravel.defects and len(gravel.defects) == len(EVAL_DEFECTS) - 1
    for sample in wood.test + gravel.test:
        mask = load_mask(sample)
        assert mask.shape == (SIZE, SIZE)
        assert mask.any() == sample.is_anomalous
        if sample.is_anomalous:
            assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest == first
    assert manifest["categories"]["wood"]["test_defect"] == {k: 1 for k in EVAL_DEFECTS}
    assert len(manifest["files"]) == sum(len(c.train) + len(c.test) for c in categories.values())
    assert (tmp_path / "a" / "README.md").read_text().count("make-devset") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_make_devset_refuses_to_clobber(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a dev set"):
        make_devset(other, SMALL)
    assert (other / "mine.txt").read_text() == "keep me"
    make_devset(tmp_path / "d", SMALL)
    with pytest.raises(DatasetError, match="--overwrite"):
        make_devset(tmp_path / "d", SMALL)
    spec = DevsetSpec(**{**SMALL.__dict__, "categories": ("weave",)})
    make_devset(tmp_path / "d", spec, overwrite=True)
    assert [c.name for c in read_mvtec(tmp_path / "d")] == ["weave"]
    with pytest.raises(ConfigError, match="unknown defect kind"):
        make_devset(tmp_path / "e", DevsetSpec(**{**SMALL.__dict__, "defects": ("dent",)}))


def test_training_stream_uses_training_kinds_only():
    samples = list(iter_defect_samples(("brick", "grass"), size=SIZE, seed=1, limit=6, normal_fraction=0.2))
    again = list(iter_defect_samples(("brick", "grass"), size=SIZE, seed=1, limit=6, normal_fraction=0.2))
    assert len(samples) == 6
    for a, b in zip(samples, again):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.defect == b.defect
        assert a.defect == "good" or a.defect in TRAIN_DEFECTS
        assert a.mask.any() == (a.defect != "good")
        if a.texture == "grass":
            assert a.defect not in ("global_orientation",)


def test_make_devset_cli(tmp_path):
    from click.testing import CliRunner

    from myriad.commands.make_devset import make_devset_command

    runner = CliRunner()
    out = tmp_path / "samples"
    result = runner.invoke(make_devset_command, [str(out), "--preset", "samples", "--size", "64", "-q"])
    assert result.exit_code == 0, result.output
    (category,) = read_mvtec(out)
    assert category.name == "brick" and len(category.train) == 4
    assert sum(s.is_anomalous for s in category.test) == 4 and len(category.test) == 8
    result = runner.invoke(make_devset_command, [str(tmp_path / "x"), "-c", "dots,marble", "--train", "2", "--test-good", "1",
                                                 "--test-defect", "1", "--defects", "scratch", "--size", "48", "--seed", "9", "-q"])
    assert result.exit_code == 0, result.output
    assert [c.name for c in read_mvtec(tmp_path / "x")] == ["dots", "marble"]
    assert Image.open(tmp_path / "x" / "dots" / "test" / "scratch" / "000.png").size == (48, 48)
    listing = runner.invoke(make_devset_command, ["--list"])
    assert "global_scale" in listing.output and "brick" in listing.output
    assert runner.invoke(make_devset_command, []).exit_code == 2  # OUT missing
