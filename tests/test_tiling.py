"""Native-resolution tiling: boxes cover the image, maps stitch back, the detector tiles large images."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel

from myriad.detector import Detector
from myriad.errors import ConfigError, ImageError
from myriad.experts import Expert, Mode, Prediction
from myriad.hookspecs import hookimpl
from myriad.tiling import TiledExpert, Tiling, plan_tiling, split_tiles, stitch, tile_boxes


class _BrightConfig(BaseModel):
    mode: str = "one_class"


class BrightSpotExpert(Expert):
    """One-class toy: map = |pixel brightness - mean normal brightness|; records the sizes it sees."""

    Config = _BrightConfig
    seen: list[tuple[int, int]] = []

    def __init__(self, config: _BrightConfig) -> None:
        super().__init__(config, Mode.ONE_CLASS)

    def _fit(self, images):
        type(self).seen += [i.shape[:2] for i in images]
        self.level = float(np.mean([i.mean() for i in images]))

    def state_tensors(self):
        return {"level": np.array([self.level], np.float32)}

    def load_state_tensors(self, tensors, metadata):
        self.level = float(tensors["level"][0])

    def _predict(self, images):
        type(self).seen += [i.shape[:2] for i in images]
        maps = [np.abs(i.mean(axis=2) - self.level).astype(np.float32) for i in images]
        return [Prediction(m, float(m.max())) for m in maps]


@hookimpl
def register_experts(register):
    register("bright", factory=BrightSpotExpert, config=_BrightConfig, modes=["one_class"], description="toy")


@pytest.fixture
def bright(myriad_plugin):
    import types

    BrightSpotExpert.seen = []
    myriad_plugin(types.SimpleNamespace(register_experts=register_experts), name="bright-toy")
    return BrightSpotExpert


def _flat(n, size, value=100, seed=0):
    rng = np.random.default_rng(seed)
    return [np.clip(value + rng.normal(0, 2, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def test_boxes_cover_every_pixel_last_ones_flush():
    boxes = tile_boxes(600, 520, 256, 192)
    cover = np.zeros((600, 520), int)
    for top, left in boxes:
        cover[top : top + 256, left : left + 256] += 1
    assert cover.min() >= 1
    assert max(t for t, _ in boxes) == 600 - 256 and max(l for _, l in boxes) == 520 - 256
    assert tile_boxes(256, 256, 256, 192) == [(0, 0)]


def test_bad_tilings_are_refused():
    with pytest.raises(ImageError, match="smaller than one 256 x 256 tile"):
        tile_boxes(200, 300, 256, 192)
    with pytest.raises(ConfigError, match="stride"):
        tile_boxes(512, 512, 256, 300)
    with pytest.raises(ImageError, match="smaller than one 512 x 512 tile"):
        plan_tiling((300, 400), 512)
    with pytest.raises(ConfigError, match="at least 32"):
        plan_tiling((300, 400), 8)


def test_auto_tiles_only_large_images():
    assert plan_tiling((256, 256)) is None and plan_tiling((384, 900)) is None
    tiling = plan_tiling((1024, 768))
    assert tiling == Tiling(tile=256, stride=192, height=1024, width=768)
    assert plan_tiling((1024, 768), None) is None and plan_tiling((1024, 768), "none") is None


def test_stitch_averages_overlaps_and_split_round_trips():
    tiling = Tiling(tile=4, stride=2, height=8, width=6)
    image = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    tiles = split_tiles(image, tiling)
    back = stitch([t[..., 0].astype(np.float32) for t in tiles], tiling)
    np.testing.assert_array_equal(back, image[..., 0].astype(np.float32))
    ones = stitch([np.full((4, 4), float(i)) for i in range(len(tiling.boxes))], tiling)
    assert ones.dtype == np.float32 and ones.shape == (8, 6)
    assert ones[0, 0] == 0.0 and ones[2, 2] == pytest.approx(np.mean([0, 1, 2, 3]))


def test_tiled_expert_finds_a_small_defect_at_native_resolution(bright):
    normals = _flat(3, 512)
    expert = TiledExpert(BrightSpotExpert(_BrightConfig()), plan_tiling((512, 512), 256))
    expert.fit(normals)
    assert set(bright.seen) == {(256, 256)}
    test = _flat(1, 512, seed=5)[0]
    test[470:476, 30:36] = 250  # 6 x 6 px speck near the bottom-left corner
    (pred,) = expert.predict([test])
    assert pred.anomaly_map.shape == (512, 512) and pred.anomaly_map.dtype == np.float32
    y, x = np.unravel_index(np.argmax(pred.anomaly_map), pred.anomaly_map.shape)
    assert 470 <= y < 476 and 30 <= x < 36
    assert pred.score == pytest.approx(float(pred.anomaly_map.max()), rel=0.05)


def test_detector_tiles_large_normals_and_keeps_tiling_on_save(bright, tmp_path):
    detector = Detector("bright", tile="auto").fit(_flat(4, 512))
    assert detector.tiling is not None and detector.tiling.tile == 256
    assert detector.resolved_config()["tiling"]["stride"] == 192
    test = _flat(1, 512, seed=9)
    before = detector.detect(test)[0]
    detector.save(tmp_path / "d")
    again = Detector.load(tmp_path / "d")
    assert again.tiling == detector.tiling
    np.testing.assert_allclose(again.detect(test)[0].raw_map, before.raw_map, atol=1e-4)
    with pytest.raises(ImageError, match="fitted on 512 x 512"):
        detector.detect(_flat(1, 400))


def test_mixed_normal_sizes_under_tiling_are_one_clear_error(bright):
    with pytest.raises(ImageError, match=r"normal image 2 is 600 x 600.*one size \(got 2 of 512 x 512, 2 of 600 x 600\)") as info:
        Detector("bright").fit(_flat(2, 512) + _flat(2, 600))
    assert info.value.index == 2  # callers that know the files name it
    # small images are given whole: mixed sizes are the expert's business
    Detector("bright").fit(_flat(2, 64) + _flat(2, 80))
