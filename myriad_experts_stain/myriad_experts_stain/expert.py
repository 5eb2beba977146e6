"""The soft-stain expert: orchestration of the tone features, the memory bank and the position baseline.

Fit: every normal image, at its native resolution (or ``image_size``), gives a grid of
low-frequency brightness and colour features (:mod:`myriad_experts_stain.features`),
standardised per feature over the normals; a seeded draw of ``bank_size`` grid cells is the
memory bank (exact nearest neighbours, FAISS). Each normal's cells are then scored against
the bank without its own image's cells (:func:`myriad.api.nearest_outside_group`): those
held-out maps are what the host calibrates on (:meth:`StainExpert.heldout_predictions`) and,
from 20 normal images on, they z-score every grid position (``position_baseline``), so a
border or a part of an object that varies more among normals needs more to stand out.
Predict: each cell's distance to its nearest normal cell (z-scored), a Gaussian of
``score_sigma`` cells over the grid; the image score is its maximum and the anomaly map is
that grid at the image's size (the map's peak is the score the calibration judges).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from myriad.api import ConfigError, Expert, MyriadError, Prediction, WeightsError

from myriad_experts_stain.plugin import StainConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Fewest normal images (distinct groups) from which each grid position gets its own baseline.
BASELINE_MIN_IMAGES = 20
#: Features whose spread over the normals is below this (log units, about 1 %) are scaled by it instead.
SCALE_FLOOR = 0.01
#: Keys of ``state_metadata`` that must match the config for a saved model to be usable.
_FEATURE_KEYS = ("scales", "context", "stride", "image_size", "max_side")


@contextmanager
def _faiss_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` faiss CPU threads inside the block (unchanged when None)."""
    if n is None:
        yield
        return
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class StainExpert(Expert):
    """Local anomaly map: distance of each cell's low-frequency tone to the nearest normal cell's."""

    Config = StainConfig

    def __init__(self, config: StainConfig) -> None:
        super().__init__(config, config.mode)
        self.config: StainConfig = config
        self.work_shape: tuple[int, int] | None = None
        self.feature_mean: "np.ndarray | None" = None
        self.feature_scale: "np.ndarray | None" = None
        self.bank: "np.ndarray | None" = None
        self.baseline_mean: "np.ndarray | None" = None
        self.baseline_std: "np.ndarray | None" = None
        self._index: Any = None
        self._heldout: "np.ndarray | None" = None  # held-out score grids of the fitted images (N x h x w)
        self._heldout_groups: list[int] | None = None

    # -- features ---------------------------------------------------------------------------
    def _shape_for(self, image: "np.ndarray") -> tuple[int, int]:
        """The working resolution an image of this size is analysed at (fit: the first image's)."""
        cfg = self.config
        if cfg.image_size is not None:
            return cfg.image_size, cfg.image_size
        height, width = image.shape[:2]
        factor = min(1.0, cfg.max_side / max(height, width))
        return max(1, round(height * factor)), max(1, round(width * factor))

    def _features(self, images: list["np.ndarray"]) -> "np.ndarray":
        """``N x h x w x D`` features of the images at the working resolution (not standardised)."""
        import numpy as np
        from PIL import Image

        from myriad_experts_stain.features import tone_features

        assert self.work_shape is not None
        cfg = self.config
        height, width = self.work_shape
        out = []
        for image in images:
            if image.shape[:2] != (height, width):
                image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
            out.append(tone_features(image, cfg.scales, cfg.context, cfg.stride))
        return np.stack(out)

    def _search(self) -> Any:
        """The bank's exact nearest-neighbour search (``search(queries, k) -> (squared distances, rows)``)."""
        if self._index is None:
            import faiss

            assert self.bank is not None
            index = faiss.IndexFlatL2(self.bank.shape[1])
            index.add(self.bank)
            self._index = index
        return self._index.search

    # -- fit -------------------------------------------------------------------------------
    def _fit(self, images: list["np.ndarray"]) -> None:
        import numpy as np

        cfg = self.config
        self.work_shape = self._shape_for(images[0])
        if min(self.work_shape) < 2 * cfg.stride:
            raise ConfigError(
                f"the stain expert works at {self.work_shape[0]} x {self.work_shape[1]} px, too small for stride "
                f"{cfg.stride}: give larger images or a smaller stride"
            )
        self.baseline_mean = self.baseline_std = None
        self._index = None
        with self.progress_stage("stain features", len(images), unit="img") as stage:
            parts = []
            for start in range(0, len(images), 16):
                parts.append(self._features(images[start : start + 16]))
                stage.advance(len(parts[-1]))
        raw = np.concatenate(parts)
        n, h, w, dim = raw.shape
        flat = raw.reshape(-1, dim)
        self.feature_mean = flat.mean(axis=0).astype(np.float32)
        self.feature_scale = np.maximum(flat.std(axis=0), SCALE_FLOOR).astype(np.float32)
        rows = np.ascontiguousarray((flat - self.feature_mean) / self.feature_scale, dtype=np.float32)
        groups = np.repeat(np.asarray(self.fit_groups if self.fit_groups is not None else range(n)), h * w)
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(rows), cfg.bank_size, replace=False)) if len(rows) > cfg.bank_size else np.arange(len(rows))
        self.bank = np.ascontiguousarray(rows[keep])
        self._heldout, self._heldout_groups = None, None
        with _faiss_threads(cfg.num_threads):
            heldout = self._heldout_distances(rows, groups, groups[keep], (n, h, w))
        if heldout is None:
            return
        distinct = len(set(groups.tolist()))
        if cfg.position_baseline and distinct >= BASELINE_MIN_IMAGES:
            self.baseline_mean, self.baseline_std, heldout = _position_baseline(heldout)
        self._heldout = self._smoothed(heldout)
        self._heldout_groups = [int(g) for g in groups[:: h * w]]

    def _heldout_distances(
        self, rows: "np.ndarray", row_group: "np.ndarray", owner_group: "np.ndarray", shape: tuple[int, int, int]
    ) -> "np.ndarray | None":
        """Each fitted cell's distance to the nearest bank cell of another image (None: one image owns the bank)."""
        import numpy as np

        from myriad.api import nearest_outside_group

        search = self._search()
        out = np.empty(len(rows), dtype=np.float32)
        chunk = 65536
        with self.progress_stage("stain held-out", len(rows), unit="cell") as stage:
            for start in range(0, len(rows), chunk):
                found = nearest_outside_group(
                    search, rows[start : start + chunk], row_group[start : start + chunk], owner_group, k=1, first_width=8
                )
                if found is None:
                    return None
                out[start : start + chunk] = np.sqrt(np.maximum(found[:, 0], 0.0))
                stage.advance(min(chunk, len(rows) - start))
        return out.reshape(shape)

    # -- predict -----------------------------------------------------------------------------
    def _smoothed(self, grids: "np.ndarray") -> "np.ndarray":
        """``N x h x w`` score grids, each after a Gaussian of ``score_sigma`` cells (float32)."""
        import numpy as np
        from scipy.ndimage import gaussian_filter

        grids = grids.astype(np.float32)
        if self.config.score_sigma <= 0:
            return grids
        sigma = self.config.score_sigma
        return gaussian_filter(grids, (0.0, sigma, sigma), mode="nearest", truncate=3.0)

    def _grids(self, images: list["np.ndarray"]) -> "np.ndarray":
        """``N x h x w`` smoothed score grids of images (z-scores with the position baseline, else distances)."""
        import numpy as np

        assert self.feature_mean is not None and self.feature_scale is not None
        features = (self._features(images) - self.feature_mean) / self.feature_scale
        n, h, w, dim = features.shape
        with _faiss_threads(self.config.num_threads):
            squared, _ = self._search()(np.ascontiguousarray(features.reshape(-1, dim), dtype=np.float32), 1)
        grids = np.sqrt(np.maximum(squared[:, 0], 0.0)).reshape(n, h, w)
        if self.baseline_mean is not None and self.baseline_std is not None:
            grids = (grids - self.baseline_mean) / self.baseline_std
        return self._smoothed(grids)

    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        return [_prediction(grid, image) for grid, image in zip(self._grids(images), images)]

    def heldout_predictions(
        self, images: list["np.ndarray"], groups: "Sequence[int] | None" = None
    ) -> list[Prediction] | None:
        """The fitted images, each scored against the bank without its own group's cells (computed in the fit).

        None when the fit could not hold any image out (one image or one group) or when ``groups``
        differ from the fit's.
        """
        held = self._heldout
        if held is None or len(held) != len(images):
            return None
        wanted = [int(g) for g in groups] if groups is not None else list(range(len(images)))
        if wanted != self._heldout_groups:
            return None
        return [_prediction(grid, image) for grid, image in zip(held, images)]

    # -- state -------------------------------------------------------------------------------
    def _feature_facts(self) -> dict[str, Any]:
        cfg = self.config
        return {"scales": list(cfg.scales), "context": cfg.context, "stride": cfg.stride,
                "image_size": cfg.image_size, "max_side": cfg.max_side}

    def state_tensors(self) -> dict[str, Any]:
        import torch

        if self.bank is None:
            return {}
        tensors = {"bank": self.bank, "feature_mean": self.feature_mean, "feature_scale": self.feature_scale}
        if self.baseline_mean is not None:
            tensors.update(baseline_mean=self.baseline_mean, baseline_std=self.baseline_std)
        return {name: torch.from_numpy(value.copy()) for name, value in tensors.items()}

    def state_metadata(self) -> dict[str, Any]:
        if self.work_shape is None:
            return {}
        return {**self._feature_facts(), "work_shape": list(self.work_shape)}

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        import numpy as np

        from myriad_experts_stain.features import feature_count

        mine = self._feature_facts()
        theirs = {key: metadata.get(key) for key in _FEATURE_KEYS}
        if mine != theirs:
            differ = ", ".join(f"{k}: saved {theirs[k]!r} vs configured {mine[k]!r}" for k in _FEATURE_KEYS if mine[k] != theirs[k])
            raise WeightsError(f"the saved stain model was fitted with other settings ({differ}); refit, or use the saved config")
        required, optional = {"bank", "feature_mean", "feature_scale"}, {"baseline_mean", "baseline_std"}
        names = set(tensors)
        if not required <= names or not (names - required in (set(), optional)):
            raise WeightsError(f"saved stain-expert state needs {sorted(required)} (+ {sorted(optional)}), found {sorted(names)}")
        arrays = {name: tensors[name].float().numpy() for name in names}
        dim = feature_count(self.config.scales)
        if arrays["bank"].ndim != 2 or arrays["bank"].shape[1] != dim or arrays["feature_mean"].shape != (dim,) \
                or arrays["feature_scale"].shape != (dim,):
            raise WeightsError(f"saved stain model is inconsistent: bank {arrays['bank'].shape}, {dim} features expected")
        shape = metadata.get("work_shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise WeightsError(f"saved stain model has no valid work_shape (got {shape!r})")
        self.work_shape = (shape[0], shape[1])
        self.bank = np.ascontiguousarray(arrays["bank"])
        self.feature_mean, self.feature_scale = arrays["feature_mean"], arrays["feature_scale"]
        self.baseline_mean = arrays.get("baseline_mean")
        self.baseline_std = arrays.get("baseline_std")
        self._index = None
        self._heldout, self._heldout_groups = None, None
        self.fitted = True


def _position_baseline(heldout: "np.ndarray") -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """Per-position mean and std of ``N x h x w`` held-out distances, and each grid z-scored leave-one-out.

    The std is floored at a tenth of its median over positions, so a position where the normals
    agree closely does not turn a small difference into a large z-score.
    """
    import numpy as np

    n = len(heldout)
    values = heldout.astype(np.float64)
    total, squares = values.sum(axis=0), (values**2).sum(axis=0)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    floor = max(0.1 * float(np.median(std)), 1e-6)
    loo_mean = (total - values) / (n - 1)
    loo_std = np.sqrt(np.maximum((squares - values**2) / (n - 1) - loo_mean**2, 0.0))
    heldout_z = (values - loo_mean) / np.maximum(loo_std, floor)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32), heldout_z.astype(np.float32)


def _prediction(grid: "np.ndarray", image: "np.ndarray") -> Prediction:
    """The image score (the grid's maximum) and the grid at the image's size as its map."""
    from myriad.api import resize_map

    return Prediction(anomaly_map=resize_map(grid, image.shape[0], image.shape[1]), score=float(grid.max()))


__all__ = ["BASELINE_MIN_IMAGES", "StainExpert"]
