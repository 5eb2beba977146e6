"""Testing kit for expert plugin authors (a pytest plugin, loaded automatically).

Subclass :class:`ExpertContractTests` in your plugin's tests and set
``expert_name`` (and ``config``, small and fast)::

    from myriad.testing import ExpertContractTests

    class TestMyExpert(ExpertContractTests):
        expert_name = "my-expert"
        config = {"image_size": 64}

Every contract test then runs against your installed expert: shapes and dtypes,
determinism under a seed, save/load round trip (maps and scores), calibrated range,
an image's score on its map's scale (after calibration, the score equals its map's
maximum within :attr:`ExpertContractTests.score_map_tolerance`), images of odd sizes
(non-square, sides not multiples of 8 or 16, and a tiny one), every extra config of
``more_configs``, clear errors on bad input, and a sanity test that it detects
anything at all (a synthetic defect must score above the normal images and be
brighter on its map than around it, so maps that are all zero or inverted fail).
Fixtures ``normal_images``/``test_images``/``sanity_batch`` give small synthetic RGB
textures (override them for experts that need bigger images). To test an expert
that is not installed as a distribution, register it in-process with the
``myriad_plugin`` fixture or :func:`registered_plugin`.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pytest

__all__ = [
    "ODD_SIZES",
    "SCORE_MAP_TOLERANCE",
    "ExpertContractTests",
    "brick_crops",
    "brightness_expert",
    "brightness_expert_plugin",
    "image_folders",
    "odd_size_images",
    "constant_expert",
    "constant_expert_plugin",
    "registered_plugin",
    "run_cli",
    "synthetic_defect_images",
    "synthetic_images",
]


#: (H, W) of the images every contract test batch adds: non-square, sides not multiples of 8 or 16, and a tiny one
ODD_SIZES: tuple[tuple[int, int], ...] = ((83, 61), (17, 23))

#: the default largest gap allowed between an image's calibrated score and its calibrated map's maximum: the
#: calibration maps both through one affine map onto [0, 1] (0.5 the threshold), so an expert whose score is its
#: map's maximum passes exactly; 0.05 leaves room for a score taken before the map was resized or smoothed
SCORE_MAP_TOLERANCE = 0.05


def odd_size_images(sizes: tuple[tuple[int, int], ...] = ODD_SIZES, seed: int = 4) -> list[Any]:
    """One normal synthetic RGB texture of each ``sizes`` size (H x W; default :data:`ODD_SIZES`), cut from a square
    one."""
    return [synthetic_images(1, max(h, w), seed=seed)[0][:h, :w].copy() for h, w in sizes]


def run_cli(args: list[str], capsys: Any) -> tuple[int | str | None, str, str]:
    """Run ``myriad ARGS`` in-process; returns (exit code, stdout, stderr) captured by pytest's ``capsys``."""
    from myriad.cli import main

    try:
        main(args)
        code: int | str | None = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def brick_crops(n_normal: int, n_defect: int, size: int = 128, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Random crops of ``skimage.data.brick()``; the last ``n_defect`` carry a defect (returns images, masks).

    Defects cycle through a foreign texture patch (gravel), a dark scratch and a bright stain.
    """
    import numpy as np
    import skimage.data
    from skimage.draw import disk, line

    rng = np.random.default_rng(seed)
    brick = skimage.data.brick().astype(np.float32)
    gravel = skimage.data.gravel().astype(np.float32)
    images, masks = [], []
    for index in range(n_normal + n_defect):
        y, x = rng.integers(0, brick.shape[0] - size, 2)
        crop = brick[y : y + size, x : x + size].copy()
        mask = np.zeros((size, size), dtype=bool)
        if index >= n_normal:
            s = size // 5
            cy, cx = rng.integers(s, size - 2 * s, 2)
            kind = (index - n_normal) % 3
            if kind == 0:
                gy, gx = rng.integers(0, gravel.shape[0] - s, 2)
                crop[cy : cy + s, cx : cx + s] = gravel[gy : gy + s, gx : gx + s]
                mask[cy : cy + s, cx : cx + s] = True
            elif kind == 1:
                for t in range(-2, 3):
                    rr, cc = line(cy + t, cx, cy + s + t, cx + 2 * s)
                    keep = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
                    crop[rr[keep], cc[keep]] = 10
                    mask[rr[keep], cc[keep]] = True
            else:
                rr, cc = disk((cy + s // 2, cx + s // 2), s // 2, shape=crop.shape)
                crop[rr, cc] += 90
                mask[rr, cc] = True
        images.append(np.repeat(np.clip(crop, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
        masks.append(mask)
    return images, masks


def synthetic_defect_images(n: int, size: int = 64, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """``synthetic_images(n, size, seed, defect=True)`` and each image's boolean H x W mask of its red square."""
    return _textures(n, size, seed, defect=True)


def synthetic_images(n: int, size: int = 64, seed: int = 0, defect: bool = False) -> list[Any]:
    """``n`` RGB uint8 textures (smooth stripes + noise); ``defect`` adds a red square (size/4 wide)."""
    return _textures(n, size, seed, defect)[0]


def image_folders(
    root: Path, normal: int, good: int, defect: int, size: int = 48, digits: int = 1
) -> tuple[Path, Path]:
    """``root/normal`` with ``normal`` PNG textures (``n0.png`` ...) and ``root/test`` with ``good`` normal then
    ``defect`` defective ones (``t0.png`` ...), names zero-padded to ``digits``; returns both folders."""
    from PIL import Image

    folders = root / "normal", root / "test"
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(synthetic_images(normal, size, seed=1)):
        Image.fromarray(image).save(folders[0] / f"n{i:0{digits}d}.png")
    tests = synthetic_images(good, size, seed=2) + synthetic_images(defect, size, seed=3, defect=True)
    for i, image in enumerate(tests):
        Image.fromarray(image).save(folders[1] / f"t{i:0{digits}d}.png")
    return folders


def _textures(n: int, size: int, seed: int, defect: bool) -> tuple[list[Any], list[Any]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for _ in range(n):
        phase = rng.uniform(0, 2 * np.pi)
        base = 128 + 60 * np.sin(2 * np.pi * xx / 8 + phase)
        img = np.stack([base, base * 0.9, base * 0.8], axis=-1) + rng.normal(0, 6, (size, size, 3))
        mask = np.zeros((size, size), dtype=bool)
        if defect:
            s = size // 4
            y, x = rng.integers(0, size - s, 2)
            img[y : y + s, x : x + s] = [250, 30, 30]
            mask[y : y + s, x : x + s] = True
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(mask)
    return images, masks


@functools.cache
def constant_expert() -> Any:
    """A zero-shot toy :class:`~myriad.experts.Expert` whose every map pixel and score is ``config.level``
    (0.25 by default); its pydantic config class is ``constant_expert().Config``. Built once, on first use."""
    import numpy as np
    from pydantic import BaseModel

    from myriad.experts import Expert, Mode, Prediction

    class ConstantConfig(BaseModel):
        level: float = 0.25

    class ConstantExpert(Expert):
        Config = ConstantConfig

        def __init__(self, config: ConstantConfig) -> None:
            super().__init__(config, Mode.ZERO_SHOT)

        def _predict(self, images: Any) -> list[Any]:
            level = self.config.level
            return [Prediction(np.full(i.shape[:2], level, np.float32), level) for i in images]

    return ConstantExpert


def constant_expert_plugin(name: str = "constant", description: str = "Constant maps (tests).", **options: Any) -> Any:
    """An in-process plugin registering :func:`constant_expert` as ``name`` (zero-shot); ``options`` go to
    ``register`` (e.g. ``transductive=True``). Register it with the ``myriad_plugin`` fixture."""
    import types

    from myriad.hookspecs import hookimpl

    expert = constant_expert()

    @hookimpl
    def register_experts(register: Any) -> None:
        register(name, factory=expert, config=expert.Config, modes=["zero_shot"], description=description, **options)

    return types.SimpleNamespace(register_experts=register_experts)


@functools.cache
def brightness_expert() -> Any:
    """A one-class toy :class:`~myriad.experts.Expert`: its map is each pixel's distance from the normal images'
    mean grey level, its score the map's maximum (a bright or dark spot scores high, blind to texture). Its
    config class (``brightness_expert().Config``) has only ``mode``. Built once, on first use."""
    import numpy as np
    from pydantic import BaseModel

    from myriad.experts import Expert, Mode, Prediction

    class BrightnessConfig(BaseModel):
        mode: str = "one_class"

    class BrightnessExpert(Expert):
        Config = BrightnessConfig

        def __init__(self, config: BrightnessConfig) -> None:
            super().__init__(config, Mode.ONE_CLASS)

        def _fit(self, images: Any) -> None:
            self.level = float(np.mean([i.mean() for i in images]))

        def state_tensors(self) -> dict[str, Any]:
            return {"level": np.array([self.level], np.float32)}

        def load_state_tensors(self, tensors: Any, metadata: Any) -> None:
            self.level = float(tensors["level"][0])

        def _predict(self, images: Any) -> list[Any]:
            maps = [np.abs(i.mean(axis=2) - self.level).astype(np.float32) for i in images]
            return [Prediction(m, float(m.max())) for m in maps]

    return BrightnessExpert


def brightness_expert_plugin(name: str = "brightness", description: str = "Brightness distance (tests).") -> Any:
    """An in-process plugin registering :func:`brightness_expert` as ``name`` (one-class). Register it with the
    ``myriad_plugin`` fixture."""
    import types

    from myriad.hookspecs import hookimpl

    expert = brightness_expert()

    @hookimpl
    def register_experts(register: Any) -> None:
        register(name, factory=expert, config=expert.Config, modes=["one_class"], description=description)

    return types.SimpleNamespace(register_experts=register_experts)


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register an in-process plugin object for the duration of a ``with`` block."""
    from myriad.plugins import register_plugin, unregister_plugin

    register_plugin(plugin, name=name)
    try:
        yield plugin
    finally:
        unregister_plugin(plugin)


@pytest.fixture
def myriad_plugin() -> Iterator[Any]:
    """Fixture returning a function ``register(plugin)`` whose registrations are undone after the test."""
    from myriad.plugins import register_plugin, unregister_plugin

    registered: list[Any] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        register_plugin(plugin, name=name)
        registered.append(plugin)
        return plugin

    yield register
    for plugin in registered:
        unregister_plugin(plugin)


class ExpertContractTests:
    """The contract every expert must pass. Subclass it; set ``expert_name`` and ``config``."""

    expert_name: ClassVar[str] = ""
    config: ClassVar[dict[str, Any]] = {}
    #: images per batch given to predict (transductive experts may need more)
    batch_size: ClassVar[int] = 3
    image_size: ClassVar[int] = 64
    num_normal: ClassVar[int] = 4
    #: set to a reason (e.g. "random test weights: mechanics only") to skip :meth:`test_detects_a_synthetic_defect`
    #: for a configuration that cannot detect anything by design; never to hide a real failure
    sanity_skip_reason: ClassVar[str | None] = None
    #: the largest allowed ``|calibrated score - calibrated map's maximum|`` per image (see
    #: :data:`SCORE_MAP_TOLERANCE`); widen it only with a comment saying why your score is not its map's maximum
    score_map_tolerance: ClassVar[float] = SCORE_MAP_TOLERANCE
    #: set to a reason to skip :meth:`test_score_is_on_its_maps_scale` (an expert whose image score is by design
    #: on a scale of its own, e.g. one normalised over a transductive batch); shown in the test report
    score_map_skip_reason: ClassVar[str | None] = None
    #: further configs (each a full config dict) checked like ``config`` on odd sizes and on the score/map rule
    more_configs: ClassVar[tuple[dict[str, Any], ...]] = ()
    #: (H, W) sizes of the odd-size batch; override only for an expert that refuses small images with a clear
    #: MyriadError (say so in a comment), keeping non-square sizes whose sides are not multiples of 8 or 16
    odd_sizes: ClassVar[tuple[tuple[int, int], ...]] = ODD_SIZES

    # -- fixtures authors may override ------------------------------------------
    @pytest.fixture
    def normal_images(self) -> list[Any]:
        """Normal images for fit/calibration."""
        return synthetic_images(self.num_normal, self.image_size, seed=1)

    @pytest.fixture
    def test_images(self) -> list[Any]:
        """A batch mixing normal and defective images, with different sizes."""
        normal = synthetic_images(self.batch_size - 1, self.image_size, seed=2)
        defect = synthetic_images(1, self.image_size + 16, seed=3, defect=True)
        return normal + defect

    @pytest.fixture
    def sanity_batch(self) -> tuple[list[Any], list[Any]]:
        """(images, masks) for the sanity test: normal images (empty masks) then one with a synthetic defect.

        Override with images your expert should rank, keeping at least one all-False and one non-empty mask.
        """
        import numpy as np

        normal = synthetic_images(max(self.batch_size - 1, 1), self.image_size, seed=2)
        defect, defect_masks = synthetic_defect_images(1, self.image_size, seed=3)
        empty = [np.zeros(image.shape[:2], dtype=bool) for image in normal]
        return normal + defect, empty + defect_masks

    @pytest.fixture
    def odd_images(self, test_images: list[Any]) -> list[Any]:
        """A batch of the ``odd_sizes`` filled up to ``batch_size`` from ``test_images``."""
        odd = odd_size_images(self.odd_sizes)
        return odd + test_images[: max(self.batch_size - len(odd), 0)]

    def make_expert(self, config: dict[str, Any] | None = None) -> Any:
        """A fresh expert with ``config`` (default: this class's config)."""
        from myriad.plugins import get_expert

        if not self.expert_name:
            pytest.skip("set expert_name on the ExpertContractTests subclass")
        return get_expert(self.expert_name, dict(self.config if config is None else config))

    def fitted_expert(self, normal_images: list[Any], config: dict[str, Any] | None = None) -> Any:
        """A fresh expert (``config``, default this class's), fitted when its mode needs it."""
        expert = self.make_expert(config)
        if expert.needs_fit:
            expert.fit(normal_images)
        return expert

    def all_configs(self) -> list[dict[str, Any]]:
        """``config`` followed by every ``more_configs`` entry."""
        return [dict(self.config), *(dict(c) for c in self.more_configs)]

    def check_predictions(self, images: list[Any], preds: list[Any], config: dict[str, Any] | None = None) -> None:
        """One float32 map per image at the image's own H x W, every value finite, and a finite float score."""
        import numpy as np

        where = f"{self.expert_name} with {self.config if config is None else config}"
        assert len(preds) == len(images), f"{where}: {len(preds)} predictions for {len(images)} images"
        for image, pred in zip(images, preds):
            assert isinstance(pred.anomaly_map, np.ndarray)
            assert pred.anomaly_map.dtype == np.float32
            assert pred.anomaly_map.shape == image.shape[:2], (
                f"{where}: map {pred.anomaly_map.shape} for an image of {image.shape[:2]} (H x W)"
            )
            assert np.isfinite(pred.anomaly_map).all()
            assert isinstance(pred.score, float) and np.isfinite(pred.score)

    def check_score_on_map_scale(self, config: dict[str, Any], normal_images: list[Any], images: list[Any]) -> None:
        """Through the host's calibration, each image's score equals its map's maximum within the tolerance."""
        from myriad.detector import Detector

        detector = Detector(self.expert_name, dict(config)).fit(normal_images, folds=2)
        gaps = []
        for image, det in zip(images, detector.detect(images)):
            gaps.append((image.shape[:2], det.score, float(det.anomaly_map.max())))
        worst = max(abs(score - top) for _, score, top in gaps)
        assert worst <= self.score_map_tolerance, (
            f"{self.expert_name} with {config}: an image's calibrated score is not its calibrated map's maximum "
            f"(largest gap {worst:.3g} > tolerance {self.score_map_tolerance}); (H x W, score, map max): "
            + ", ".join(f"({h}x{w}, {s:.3g}, {m:.3g})" for (h, w), s, m in gaps)
            + ". A score far above its map blanks the heat map; a score below it (e.g. the map's mean) "
            "lights the whole map of a normal image"
        )

    # -- the contract -------------------------------------------------------------
    def test_registration(self) -> None:
        """The expert is registered with modes, a description and a pydantic config."""
        from pydantic import BaseModel

        from myriad.plugins import get_expert_info

        info = get_expert_info(self.expert_name)
        assert info.modes, "an expert must declare at least one mode"
        assert info.description and "\n" not in info.description, "description must be one line"
        assert issubclass(info.config, BaseModel)
        info.config.model_validate(dict(self.config))
        expert = self.make_expert()
        assert expert.mode in info.modes
        assert expert.transductive == info.transductive

    def test_predict_shapes_and_dtypes(self, normal_images: list[Any], test_images: list[Any]) -> None:
        """One float32 H x W map per image, at the input resolution, and a finite float score."""
        self.check_predictions(test_images, self.fitted_expert(normal_images).predict(test_images))

    def test_deterministic(self, normal_images: list[Any], test_images: list[Any]) -> None:
        """Two experts built and fitted the same way give the same outputs."""
        import numpy as np

        a = self.fitted_expert(normal_images).predict(test_images)
        b = self.fitted_expert(normal_images).predict(test_images)
        for pa, pb in zip(a, b):
            np.testing.assert_allclose(pa.anomaly_map, pb.anomaly_map, rtol=1e-4, atol=1e-5)
            assert abs(pa.score - pb.score) <= 1e-4 * max(1.0, abs(pa.score))

    def test_save_load_round_trip(self, tmp_path: Any, normal_images: list[Any], test_images: list[Any]) -> None:
        """Saved state (safetensors + JSON, no pickle) reloads to identical predictions."""
        import numpy as np

        from myriad.plugins import get_expert_info

        expert = self.fitted_expert(normal_images)
        expert.save(tmp_path / "state")
        files = {p.suffix for p in (tmp_path / "state").iterdir()}
        assert files <= {".json", ".safetensors"}, f"only JSON and safetensors allowed, found {files}"
        cls = get_expert_info(self.expert_name).load_factory()
        reloaded = cls.load(tmp_path / "state")
        for index, (pa, pb) in enumerate(zip(expert.predict(test_images), reloaded.predict(test_images))):
            np.testing.assert_allclose(pa.anomaly_map, pb.anomaly_map, rtol=1e-5, atol=1e-6)
            assert abs(pa.score - pb.score) <= 1e-5 * max(1.0, abs(pa.score)) + 1e-6, (
                f"{self.expert_name}: image {index} scores {pa.score} before saving and {pb.score} after reloading"
            )

    def test_calibrated_range(self, normal_images: list[Any], test_images: list[Any]) -> None:
        """Through the host's calibration, maps and scores lie in [0, 1]."""
        from myriad.detector import Detector

        detector = Detector(self.expert_name, dict(self.config)).fit(normal_images, folds=2)
        for det in detector.detect(test_images):
            assert 0.0 <= det.score <= 1.0
            assert float(det.anomaly_map.min()) >= 0.0 and float(det.anomaly_map.max()) <= 1.0
            assert det.anomalous == (det.score > det.threshold) or det.score in (0.0, 1.0)

    def test_odd_image_sizes(self, normal_images: list[Any], odd_images: list[Any]) -> None:
        """Non-square images whose sides are not multiples of 8 or 16 (83 x 61) and a tiny one (17 x 23) get maps at
        their own size, with every config; an upsampling that assumes a multiple of the stride fails here."""
        assert any(h != w and h % 8 and w % 8 for h, w in self.odd_sizes), (
            "odd_sizes must keep a non-square size whose sides are not multiples of 8"
        )
        for config in self.all_configs():
            expert = self.fitted_expert(normal_images, config)
            self.check_predictions(odd_images, expert.predict(odd_images), config)

    def test_score_is_on_its_maps_scale(self, normal_images: list[Any], test_images: list[Any]) -> None:
        """The rule of docs/writing-plugins.md: an image's score is on its map's scale, so that after the host's
        calibration the score equals the map's maximum (within ``score_map_tolerance``), with every config.

        A score 1000 times its map (the calibrated map goes blank) or the map's mean (normal maps calibrate to 1
        everywhere) fails here, whatever its ranking.
        """
        if self.score_map_skip_reason:
            pytest.skip(self.score_map_skip_reason)
        for config in self.all_configs():
            self.check_score_on_map_scale(config, normal_images, test_images + odd_size_images(self.odd_sizes))

    def test_detects_a_synthetic_defect(self, normal_images: list[Any], sanity_batch: tuple[list[Any], list[Any]]) -> None:
        """Sanity: every defective image scores above every normal one, and on its map the defect is brighter than
        the rest of the image (an image-level map, constant over the image, must instead exceed the normals' maps).

        An expert whose maps are all zero, constant or inverted fails here, whatever its shapes and dtypes.
        """
        import numpy as np

        if self.sanity_skip_reason:
            pytest.skip(self.sanity_skip_reason)
        images, masks = sanity_batch
        defective = [bool(m.any()) for m in masks]
        assert any(defective) and not all(defective), "sanity_batch needs normal and defective images"
        preds = self.fitted_expert(normal_images).predict(images)
        scores = np.array([p.score for p in preds])
        normal_max = scores[[not d for d in defective]].max()
        defect_scores = scores[defective]
        assert defect_scores.min() > normal_max, (
            f"{self.expert_name}: defect scores {defect_scores.tolist()} are not all above the normal images' "
            f"highest score {normal_max} (maps all zero, constant or inverted?)"
        )
        normal_map_max = max(float(p.anomaly_map.max()) for p, d in zip(preds, defective) if not d)
        for pred, mask in zip(preds, masks):
            if not mask.any():
                continue
            amap = pred.anomaly_map
            if float(amap.max()) == float(amap.min()):  # an image-level map
                assert float(amap.max()) > normal_map_max, (
                    f"{self.expert_name}: the defective image's constant map {float(amap.max())} is not above the "
                    f"normal images' maps (max {normal_map_max})"
                )
                continue
            inside, outside = float(amap[mask].mean()), float(amap[~mask].mean())
            assert inside > outside, (
                f"{self.expert_name}: the map is not higher on the defect (mean {inside:.4g}) than around it "
                f"(mean {outside:.4g}): inverted or blind map"
            )

    def test_bad_input_errors(self, normal_images: list[Any]) -> None:
        """Empty batches and malformed arrays raise MyriadError naming the problem."""
        import numpy as np

        from myriad.errors import MyriadError

        expert = self.make_expert()
        if expert.needs_fit:
            with pytest.raises(MyriadError):
                expert.predict(normal_images[:1])  # not fitted
            with pytest.raises(MyriadError):
                expert.fit([])
            expert.fit(normal_images)
        with pytest.raises(MyriadError):
            expert.predict([])
        with pytest.raises(MyriadError, match="shape"):
            expert.predict([np.zeros((8, 8, 8, 3), dtype=np.uint8)])
