"""The texture-wide expert: orchestration of the backbone, window statistics and the Gaussian models.

Fit: every normal image gives, per window, the statistics of each group (see
:mod:`myriad_experts_global.statistics`); each group gets one Gaussian, and the
held-out distances of normal images (by image folds) standardise it. With no more
normals than folds every fold is one image, and those held-out distances are the
normals' leave-one-out scores (:meth:`GlobalStatsExpert.heldout_predictions`), so a few
references are calibrated against each other rather than by host folds that would fit a
copy on one image (whose null, from its own windows, is far too narrow). Predict: a
window's score is the mean over groups of ``(distance - null mean) / null std``; the
image score is the mean over the image's windows (a texture-wide change moves every
window a little), and the anomaly map is that image score everywhere: the expert
judges the image as a whole and says so, instead of pretending to localise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from myriad.api import ConfigError, Expert, Mode, MyriadError, Prediction, WeightsError

from myriad_experts_global.plugin import GlobalStatsConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.api import FeatureBackbone
    from myriad_experts_global.statistics import GaussianModel

#: Tensors saved per statistic group (``<group>.<part>``).
_PARTS = ("mean", "components", "variances")
#: Keys of ``state_metadata`` that must match the config for a saved model to be usable.
_FEATURE_KEYS = ("backbone", "layers", "image_size", "window", "window_stride", "groups")


@dataclass
class GroupModel:
    """One statistic group's Gaussian and the mean / std of held-out normal distances to it."""

    gaussian: "GaussianModel"
    null_mean: float
    null_std: float

    def standardised(self, samples: "np.ndarray") -> "np.ndarray":
        """``(distance - null_mean) / null_std`` of each row of ``N x D`` samples."""
        return (self.gaussian.distances(samples) - self.null_mean) / self.null_std


def _backbone(name: str, layers: tuple[int, ...], weights: str | None, device: str, runtime: str = "torch") -> "FeatureBackbone":
    """A frozen :class:`~myriad.backbone.FeatureBackbone` on ``runtime``, shared by experts of this process."""
    from myriad.api import FeatureBackbone, cached, file_stamp

    def build() -> FeatureBackbone:
        try:
            backbone = FeatureBackbone(name, out_indices=layers, weights=weights, device=device)
        except MyriadError:
            raise
        except (IndexError, ValueError, AssertionError, RuntimeError) as exc:
            raise ConfigError(f"backbone {name!r} cannot return stages layers={list(layers)}: {exc}") from exc
        backbone.use_runtime(runtime)
        return backbone

    return cached(("global-backbone", name, layers, file_stamp(weights), device, runtime), build)


class GlobalStatsExpert(Expert):
    """Image-level anomaly score: standardised Mahalanobis distances of pooled texture statistics."""

    Config = GlobalStatsConfig

    def __init__(self, config: GlobalStatsConfig) -> None:
        super().__init__(config, config.mode)
        self.config: GlobalStatsConfig = config
        self.models: dict[str, GroupModel] = {}
        #: the fitted normals' leave-one-out image scores (None: more normals than folds, or tiled)
        self._heldout_scores: "np.ndarray | None" = None

    @property
    def window(self) -> float:
        """The window side in use: the config's, else 1 (one_class) or 0.5 (few_shot)."""
        if self.config.window is not None:
            return float(self.config.window)
        return 1.0 if self.mode is Mode.ONE_CLASS else 0.5

    @property
    def device(self) -> str:
        """The torch device in use (``auto`` resolves to cuda when available)."""
        import torch

        wanted = self.config.device
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={wanted!r} but no CUDA GPU is available to torch; use device='cpu' or 'auto'")
        return wanted

    def _feature_settings(self) -> tuple:
        """What an image's window statistics depend on (the key of the statistics cache)."""
        from myriad.api import file_stamp

        cfg = self.config
        return (cfg.backbone, file_stamp(cfg.weights), tuple(cfg.layers), cfg.image_size, self.window,
                cfg.window_stride, tuple(cfg.groups), cfg.runtime)

    def _cached_statistics(self, images: list["np.ndarray"], store: bool) -> dict[str, "np.ndarray"]:
        """:meth:`_statistics` through the process's statistics cache (fits store, predictions only read)."""
        import numpy as np

        from myriad_experts_global.statistics_cache import CACHE

        limit = int(self.config.feature_cache_mb) * 2**20
        if limit <= 0:
            return self._statistics(images)
        groups = tuple(self.config.groups)

        def compute(missing: list["np.ndarray"]) -> list[tuple["np.ndarray", tuple[int, ...]]]:
            fresh = self._statistics(missing)
            out = []
            for j in range(len(missing)):
                # one array per image: the groups' W x D_g blocks side by side, the widths as payload
                blocks = [fresh[group][j] for group in groups]
                out.append((np.concatenate(blocks, axis=-1), tuple(int(b.shape[-1]) for b in blocks)))
            return out

        found = CACHE.fetch(self._feature_settings(), images, compute, limit, store)
        stacked = np.stack([hit[0] for hit in found])
        widths = found[0][1]
        edges = np.cumsum((0, *widths))
        return {group: np.ascontiguousarray(stacked[..., edges[g] : edges[g + 1]]) for g, group in enumerate(groups)}

    def _statistics(self, images: list["np.ndarray"]) -> dict[str, "np.ndarray"]:
        """Per group, ``N x W x D`` window statistics of the images (float32 numpy)."""
        import numpy as np
        import torch

        from myriad.api import to_tensor

        from myriad_experts_global.statistics import energy_statistics, spectrum_statistics, window_statistics

        cfg = self.config
        window, stride = self.window, cfg.window_stride
        out: dict[str, list[np.ndarray]] = {group: [] for group in cfg.groups}
        previous = torch.get_num_threads()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        try:
            with torch.inference_mode():
                if "cnn" in out:
                    backbone = _backbone(cfg.backbone, tuple(cfg.layers), cfg.weights, self.device, cfg.runtime)
                    for start in range(0, len(images), cfg.batch_size):
                        batch = to_tensor(images[start : start + cfg.batch_size], cfg.image_size, backbone.normalisation)
                        try:
                            stats = window_statistics(backbone(batch), window, stride)
                        except RuntimeError as exc:
                            raise MyriadError(
                                f"backbone {cfg.backbone!r} (layers {cfg.layers}) failed on a {tuple(batch.shape)} "
                                f"batch at image_size={cfg.image_size}: {exc}"
                            ) from exc
                        out["cnn"].append(stats.cpu().numpy())
                native = {"energy": energy_statistics, "spectrum": spectrum_statistics}
                for group in [g for g in native if g in out]:  # native resolution: one image at a time (sizes may differ)
                    for image in images:
                        # a float copy: inputs may be read-only, which torch.from_numpy warns about
                        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
                        try:
                            out[group].append(native[group](pixels, window, stride).numpy())
                        except ValueError as exc:
                            raise MyriadError(f"a {image.shape[0]} x {image.shape[1]} image: {exc}") from exc
        finally:
            if cfg.num_threads is not None:
                torch.set_num_threads(previous)
        return {group: np.concatenate(parts).astype(np.float32) for group, parts in out.items()}

    def _fit(self, images: list["np.ndarray"]) -> None:
        import numpy as np

        from myriad_experts_global.statistics import GaussianModel, heldout_distances, heldout_null

        stats = self._cached_statistics(images, store=True)
        folds = self.config.null_folds
        leave_one_out = len(images) <= folds and self.fit_groups is None
        models = {}
        standardised = []
        for group, samples in stats.items():
            flat = samples.reshape(-1, samples.shape[-1])
            if len(flat) < 2:
                raise ConfigError(
                    "the global expert needs at least 2 statistic windows: give 2+ normal images or set window < 1"
                )
            distances = heldout_distances(samples, self.config.shrinkage, folds)
            null_mean, null_std = heldout_null(samples, distances, self.config.shrinkage)
            models[group] = GroupModel(GaussianModel.fit(flat, self.config.shrinkage), null_mean, null_std)
            if distances is not None:
                standardised.append((distances - null_mean) / null_std)
        self.models = models
        complete = leave_one_out and len(standardised) == len(stats)
        self._heldout_scores = np.mean(standardised, axis=0).mean(axis=1) if complete else None

    def heldout_predictions(
        self, images: list["np.ndarray"], groups: "Sequence[int] | None" = None
    ) -> list[Prediction] | None:
        """With no more normals than ``null_folds``: each scored against a Gaussian of the others (leave-one-out).

        Those are the held-out distances that standardise the groups, so no extra work. More
        normals (or tiles, whose photos the folds do not keep apart): None, and the host uses k folds.
        """
        import numpy as np

        scores = self._heldout_scores
        distinct = groups is None or len(set(groups)) == len(images)
        if scores is None or len(scores) != len(images) or not distinct:
            return None
        return [
            Prediction(anomaly_map=np.full(image.shape[:2], score, dtype=np.float32), score=float(score))
            for image, score in zip(images, scores)
        ]

    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        import numpy as np

        stats = self._cached_statistics(images, store=False)
        per_group = []
        for group, samples in stats.items():
            n, windows, dim = samples.shape
            per_group.append(self.models[group].standardised(samples.reshape(-1, dim)).reshape(n, windows))
        scores = np.mean(per_group, axis=0).mean(axis=1)
        return [
            Prediction(anomaly_map=np.full(image.shape[:2], score, dtype=np.float32), score=float(score))
            for image, score in zip(images, scores)
        ]

    # -- state ----------------------------------------------------------------------------
    def _feature_facts(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "backbone": cfg.backbone,
            "layers": list(cfg.layers),
            "image_size": cfg.image_size,
            "window": self.window,
            "window_stride": cfg.window_stride,
            "groups": list(cfg.groups),
        }

    def state_tensors(self) -> dict[str, Any]:
        import numpy as np
        import torch

        tensors = {}
        for group, model in self.models.items():
            for part in _PARTS:
                tensors[f"{group}.{part}"] = torch.from_numpy(np.ascontiguousarray(getattr(model.gaussian, part)))
        return tensors

    def state_metadata(self) -> dict[str, Any]:
        if not self.models:
            return {}
        return {
            **self._feature_facts(),
            "null": {g: [m.null_mean, m.null_std] for g, m in self.models.items()},
            "isotropic": {g: m.gaussian.isotropic for g, m in self.models.items()},
            "shrinkage": {g: m.gaussian.shrinkage for g, m in self.models.items()},
            "samples": {g: m.gaussian.samples for g, m in self.models.items()},
        }

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        from myriad_experts_global.statistics import GaussianModel

        mine = self._feature_facts()
        theirs = {key: metadata.get(key) for key in _FEATURE_KEYS}
        if mine != theirs:
            differ = ", ".join(f"{k}: saved {theirs[k]!r} vs configured {mine[k]!r}" for k in _FEATURE_KEYS if mine[k] != theirs[k])
            raise WeightsError(f"the saved global model was fitted with other settings ({differ}); refit, or use the saved config")
        expected = {f"{g}.{part}" for g in self.config.groups for part in _PARTS}
        if set(tensors) != expected:
            raise WeightsError(f"saved global-expert state needs {sorted(expected)}, found {sorted(tensors)}")
        models = {}
        for group in self.config.groups:
            mean, components, variances = (tensors[f"{group}.{part}"].double().numpy() for part in _PARTS)
            if components.ndim != 2 or components.shape[1] != mean.shape[0] or variances.shape != (components.shape[0],):
                raise WeightsError(
                    f"saved {group} model is inconsistent: mean {tuple(mean.shape)}, components "
                    f"{tuple(components.shape)}, variances {tuple(variances.shape)}"
                )
            null_mean, null_std = metadata["null"][group]
            gaussian = GaussianModel(
                mean=mean, components=components, variances=variances,
                isotropic=float(metadata["isotropic"][group]), shrinkage=float(metadata["shrinkage"][group]),
                samples=int(metadata["samples"][group]),
            )
            models[group] = GroupModel(gaussian, float(null_mean), float(null_std))
        self.models = models
        self.fitted = True


__all__ = ["GlobalStatsExpert"]
