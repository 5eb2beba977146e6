"""The realistic dev set: real photos at native resolution, subtle real-sized defects, buckets and their metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from myriad.datasets import load_mask, read_mvtec
from myriad.errors import ConfigError, DatasetError
from myriad.synthetic.realistic_buckets import bucket_metrics, render_bucket_tables, size_bucket, visibility_bucket
from myriad.synthetic.realistic_defects import (
    REALISTIC_EVAL_KINDS,
    REALISTIC_KINDS,
    REALISTIC_TRAIN_KINDS,
)
from myriad.synthetic.realistic_devset import (
    AREA_RANGE,
    MANIFEST,
    RealisticSpec,
    _stream,
    make_realistic_devset,
    render_sample,
)
from myriad.synthetic.realistic_photos import EVAL_PHOTOS, PHOTOS, TRAIN_PHOTOS, half_extent, photo, zones_for

SIZE = 128
TINY = RealisticSpec(categories=("brick", "gravel"), train=2, test_good=2, test_defect=1, size=SIZE, seed=5)
LOCAL = [k for k in REALISTIC_EVAL_KINDS if not REALISTIC_KINDS[k].is_global]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realistic") / "set"
    make_realistic_devset(out, TINY)
    return out


def test_same_seed_gives_identical_files_and_another_seed_does_not(tiny, tmp_path):
    again = tmp_path / "again"
    make_realistic_devset(again, TINY)
    assert _files(tiny) == _files(again)
    other = tmp_path / "other"
    make_realistic_devset(other, RealisticSpec(**{**TINY.__dict__, "seed": 6}))
    assert (tiny / "brick/train/good/000.png").read_bytes() != (other / "brick/train/good/000.png").read_bytes()


def test_layout_is_read_by_read_mvtec_with_masks(tiny):
    categories = {c.name: c for c in read_mvtec(tiny)}
    assert set(categories) == {"brick", "gravel"}
    brick = categories["brick"]
    assert len(brick.train) == 2 and brick.has_masks
    assert set(brick.defects) == set(REALISTIC_EVAL_KINDS)  # brick is oriented: every kind
    assert "texture_orientation" not in categories["gravel"].defects  # isotropic photo: no rotation defect
    for sample in brick.test:
        image = np.asarray(Image.open(sample.path))
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        mask = load_mask(sample, image.shape[:2])
        assert mask.any() == sample.is_anomalous


def test_manifest_records_buckets_split_and_overlap(tiny):
    manifest = json.loads((tiny / MANIFEST).read_text())
    assert manifest["crop_size"] == SIZE
    assert set(manifest["split"]["eval_kinds"]).isdisjoint(manifest["split"]["train_kinds"])
    defective = [f for f in manifest["files"] if f["defect"] != "good"]
    for record in defective:
        assert record["family"] in ("local", "texture-wide") and record["kind"] == record["defect"]
        assert record["size_bucket"] == size_bucket(record["area_fraction"], record["global"])
        assert record["visibility_bucket"] == visibility_bucket(record["visibility"], record["global"])
    overlap = manifest["categories"]["brick"]["test_train_overlap"]
    assert 0.0 <= overlap["mean_single"] <= overlap["max_single"] <= 1.0


@pytest.mark.parametrize("kind", LOCAL)
def test_local_masks_hold_exactly_the_changed_pixels_and_have_real_sizes(kind):
    for index in range(3):
        sample = render_sample("grass", kind, _stream(1, "grass", "test", kind, index), 256)
        mask = sample.mask
        assert AREA_RANGE[0] <= mask.mean() <= AREA_RANGE[1] == 0.05
        assert np.array_equal(sample.image[~mask], sample.clean[~mask])  # nothing changes outside the mask
        changed = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2) > 0
        assert changed[mask].mean() > 0.3, (kind, changed[mask].mean())  # and the mask is not a loose shape around it
        assert not sample.info["global"] and sample.info["family"] == "local"


@pytest.mark.parametrize("kind", [k for k in REALISTIC_EVAL_KINDS if REALISTIC_KINDS[k].is_global])
def test_texture_wide_kinds_change_the_whole_image_with_a_full_mask(kind):
    sample = render_sample("brick", kind, _stream(2, "brick", "test", kind, 0), SIZE)
    assert sample.mask.all() and sample.info["global"] and sample.info["size_bucket"] == "texture-wide"
    changed = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=2) > 0
    assert changed.mean() > 0.1  # spread over the image (a slight blur leaves flat brick faces unchanged)
    assert changed[: SIZE // 2].mean() > 0.05 and changed[SIZE // 2 :].mean() > 0.05


def test_most_local_defects_are_under_one_percent_and_at_least_half_are_hard():
    buckets, sizes = [], []
    for category in ("brick", "gravel", "tissue"):
        for kind in REALISTIC_EVAL_KINDS:
            if REALISTIC_KINDS[kind].needs_orientation and not PHOTOS[category].oriented:
                continue
            for index in range(3):
                info = render_sample(category, kind, _stream(0, category, "test", kind, index), 256).info
                buckets.append(info["visibility_bucket"])
                if not info["global"]:
                    sizes.append(info["area_fraction"])
    assert np.mean(np.asarray(sizes) < 0.01) > 0.75
    assert buckets.count("hard") >= len(buckets) / 2, {b: buckets.count(b) for b in set(buckets)}


def test_crops_never_upscale_and_test_zone_is_apart_from_training_zone():
    for name in EVAL_PHOTOS:
        height, width = photo(name).shape[:2]
        assert 2 * half_extent(256) <= min(height, width)
        zones = zones_for(name, 256)
        ty, tx = zones.test_start
        assert not zones.is_train(ty, tx) and zones.is_train(zones.low_y, zones.high_x)
    sample = render_sample("brick", "good", _stream(0, "x"), 256)
    assert sample.info["pose"]["scale"] == 1.0 and abs(sample.info["pose"]["angle"]) <= 2.0
    with pytest.raises(ConfigError, match="upscaling"):
        zones_for("brick", 400)


def test_shared_crops_draw_train_and_test_centres_from_one_range_and_zoned_keeps_the_test_box(tmp_path):
    from myriad.synthetic.realistic_photos import draw_pose

    zones = zones_for("gravel", SIZE)
    ty, tx = zones.test_start
    anywhere = [draw_pose(_stream(3, "any", i), zones, "any") for i in range(200)]
    assert all(zones.low_y <= p.cy <= zones.high_y and zones.low_x <= p.cx <= zones.high_x for p in anywhere)
    assert any(p.cy >= ty and p.cx >= tx for p in anywhere) and any(zones.is_train(p.cy, p.cx) for p in anywhere)
    assert RealisticSpec().crops == "shared"
    with pytest.raises(ConfigError, match="--crops"):
        RealisticSpec(crops="halves").validate()
    spec = RealisticSpec(categories=("gravel",), train=4, test_good=4, test_defect=0, size=SIZE, seed=1, crops="zoned")
    manifest = make_realistic_devset(tmp_path / "zoned", spec)
    for record in manifest["files"]:
        cy, cx = record["pose"]["cy"], record["pose"]["cx"]
        if record["split"] == "test":
            assert cy >= ty and cx >= tx
        else:
            assert zones.is_train(cy, cx)
    assert manifest["spec"]["crops"] == "zoned" and "--crops zoned" in manifest["command"]


def test_train_and_eval_kinds_and_photos_are_disjoint_and_preset_refuses_training_ones(tmp_path):
    assert set(REALISTIC_EVAL_KINDS).isdisjoint(REALISTIC_TRAIN_KINDS)
    assert set(REALISTIC_EVAL_KINDS) | set(REALISTIC_TRAIN_KINDS) == set(REALISTIC_KINDS)
    assert set(EVAL_PHOTOS).isdisjoint(TRAIN_PHOTOS) and TRAIN_PHOTOS
    with pytest.raises(ConfigError, match="training kind"):
        RealisticSpec(defects=("scuff",)).validate()
    with pytest.raises(ConfigError, match="training-only photo"):
        RealisticSpec(categories=("moon",)).validate()
    for kind in REALISTIC_TRAIN_KINDS:  # the training kinds work (on training photos)
        sample = render_sample("moon", kind, _stream(0, kind), SIZE, zone="train")
        assert sample.mask.any()


def test_existing_dev_set_is_refused_without_overwrite(tiny, tmp_path):
    with pytest.raises(DatasetError, match="--overwrite"):
        make_realistic_devset(tiny, TINY)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "mine.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not a dev set"):
        make_realistic_devset(tmp_path / "user", TINY)


def test_cli_realistic_preset_with_count_overrides(tmp_path):
    from myriad.commands.make_devset import _PRESETS, make_devset_command
    from myriad.synthetic.devset import PRESET_NAMES

    assert tuple(_PRESETS) == tuple(PRESET_NAMES)
    out = tmp_path / "cli"
    result = CliRunner().invoke(make_devset_command, [str(out), "--preset", "realistic", "-c", "grass", "--train", "2",
                                       "--test-good", "1", "--test-defect", "1", "--defects", "pinhole,texture_blur",
                                       "--size", "128", "-q"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["spec"]["preset"] == "realistic" and len(manifest["files"]) == 5
    assert manifest["spec"]["crops"] == "shared"
    refused = CliRunner().invoke(make_devset_command, [str(tmp_path / "d"), "--crops", "zoned"])
    assert refused.exit_code == 2 and "--preset realistic" in refused.output
    listing = CliRunner().invoke(make_devset_command, ["--preset", "realistic", "--list"])
    assert "thread_pull" in listing.output and "tissue" in listing.output


# --------------------------------------------------------------------------- bucket metrics


def _manifest() -> dict:
    def rec(category, defect, index, **extra):
        split_defect = {"image": f"{category}/test/{defect}/{index:03d}.png", "category": category, "split": "test", "defect": defect}
        return {**split_defect, **extra}

    small = {"kind": "scratch_thin", "family": "local", "size_bucket": "<0.1%", "visibility_bucket": "hard"}
    wide = {"kind": "texture_blur", "family": "texture-wide", "size_bucket": "texture-wide", "visibility_bucket": "easy"}
    return {"files": [
        {"image": "a/train/good/000.png", "category": "a", "split": "train", "defect": "good"},
        rec("a", "good", 0), rec("a", "good", 1), rec("b", "good", 0), rec("b", "good", 1),
        rec("a", "scratch_thin", 0, **small), rec("a", "scratch_thin", 1, **small),
        rec("b", "texture_blur", 0, **wide),
    ]}


def test_bucket_metrics_on_a_hand_made_example():
    rows = [
        {"image": "/data/x/a/test/good/000.png", "score": 0.1, "decision": False},
        {"image": "/data/x/a/test/good/001.png", "score": 0.5, "decision": True},  # a false alarm
        {"image": "b/test/good/000.png", "score": 10.0, "decision": False},
        {"image": "b/test/good/001.png", "score": 20.0, "decision": False},
        {"image": "a/test/scratch_thin/000.png", "score": 0.3, "decision": False, "label": 1},  # missed; between normals
        {"image": "a/test/scratch_thin/001.png", "score": 0.9, "decision": True},
        {"image": "b/test/texture_blur/000.png", "score": 30.0, "decision": True},
    ]
    result = bucket_metrics(rows, _manifest())
    assert result["normal"] == 4 and result["defective"] == 3
    small = result["groups"]["size_bucket"]["<0.1%"]
    # category a: scratch scores 0.3, 0.9 vs normals 0.1, 0.5 -> 3 of 4 pairs ranked right
    assert small["image_auroc"] == pytest.approx(0.75) and small["normal"] == 2
    assert small["accuracy"] == pytest.approx(2 / 4)  # normal 0 right, normal 1 wrong, scratch 0 wrong, scratch 1 right
    wide = result["groups"]["family"]["texture-wide"]
    assert wide["image_auroc"] == 1.0 and wide["accuracy"] == 1.0  # b's scale differs from a's: compared within b only
    assert list(result["groups"]["family"]) == ["local", "texture-wide"]
    table = render_bucket_tables(result, title="demo")
    assert "| <0.1% | 2 | 2 | 0.750 | 0.500 |" in table and "| texture_blur | 1 | 2 | 1.000 | 1.000 |" in table


def test_bucket_metrics_without_decisions_and_bad_input():
    rows = [{"image": f["image"], "score": float(i)} for i, f in enumerate(_manifest()["files"]) if f["split"] == "test"]
    result = bucket_metrics(rows, _manifest())
    assert all(b["accuracy"] is None for group in result["groups"].values() for b in group.values())
    with pytest.raises(ValueError, match="not a test image"):
        bucket_metrics([{"image": "c/test/good/000.png", "score": 1.0}], _manifest())
    with pytest.raises(ValueError, match="disagrees"):
        bucket_metrics([{"image": "a/test/good/000.png", "score": 1.0, "label": 1}], _manifest())
    with pytest.raises(ValueError, match="twice"):
        bucket_metrics(rows[:1] * 2, _manifest())
