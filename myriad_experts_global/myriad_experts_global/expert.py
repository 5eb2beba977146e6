"""The texture-wide expert: orchestration of the backbone, window statistics and the Gaussian model.

Fit: every normal image goes through the frozen backbone once; the per-window
statistics of all its stages (see :mod:`myriad_experts_global.statistics`) become
samples of one Gaussian. Predict: a window's score is its Mahalanobis distance to
that Gaussian, the image score is the mean over the image's windows (a texture-wide
change moves every window a little; the mean is what moves most reliably), and the
anomaly map is that image score everywhere: the expert judges the image as a whole
and says so, instead of pretending to localise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from myriad.errors import ConfigError, MyriadError, WeightsError
from myriad.experts import Expert, Prediction

from myriad_experts_global.plugin import GlobalStatsConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from myriad.backbone import FeatureBackbone
    from myriad_experts_global.statistics import GaussianModel

#: Keys of ``state_metadata`` that must match the config for a saved model to be usable.
_FEATURE_KEYS = ("backbone", "layers", "image_size", "window", "window_stride")


def _backbone(name: str, layers: tuple[int, ...], weights: str | None, device: str) -> "FeatureBackbone":
    """A frozen :class:`~myriad.backbone.FeatureBackbone`, shared by experts of this process."""
    from myriad.backbone import FeatureBackbone
    from myriad.model_cache import cached, file_stamp

    def build() -> FeatureBackbone:
        try:
            return FeatureBackbone(name, out_indices=layers, weights=weights, device=device)
        except MyriadError:
            raise
        except (IndexError, ValueError, AssertionError, RuntimeError) as exc:
            raise ConfigError(f"backbone {name!r} cannot return stages layers={list(layers)}: {exc}") from exc

    return cached(("global-backbone", name, layers, file_stamp(weights), device), build)


class GlobalStatsExpert(Expert):
    """Image-level anomaly score: Mahalanobis distance of pooled feature statistics (texture-wide changes)."""

    Config = GlobalStatsConfig

    def __init__(self, config: GlobalStatsConfig) -> None:
        super().__init__(config, config.mode)
        self.config: GlobalStatsConfig = config
        self.model: "GaussianModel | None" = None

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

    def _statistics(self, images: list["np.ndarray"]) -> "np.ndarray":
        """``N x W x D`` window statistics of the images (float32 numpy)."""
        import contextlib

        import numpy as np
        import torch

        from myriad.images import to_tensor

        from myriad_experts_global.statistics import window_statistics

        cfg = self.config
        backbone = _backbone(cfg.backbone, tuple(cfg.layers), cfg.weights, self.device)
        threads = contextlib.nullcontext()
        previous = torch.get_num_threads()
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        out = []
        try:
            with threads:
                for start in range(0, len(images), cfg.batch_size):
                    batch = to_tensor(images[start : start + cfg.batch_size], cfg.image_size, backbone.normalisation)
                    try:
                        features = backbone(batch)
                        stats = window_statistics(features, cfg.window, cfg.window_stride)
                    except (RuntimeError, ValueError) as exc:
                        raise MyriadError(
                            f"backbone {cfg.backbone!r} (layers {cfg.layers}) failed on a {tuple(batch.shape)} "
                            f"batch at image_size={cfg.image_size}: {exc}"
                        ) from exc
                    out.append(stats.cpu().numpy())
        finally:
            if cfg.num_threads is not None:
                torch.set_num_threads(previous)
        return np.concatenate(out).astype(np.float32)

    def _fit(self, images: list["np.ndarray"]) -> None:
        from myriad_experts_global.statistics import GaussianModel

        stats = self._statistics(images)
        samples = stats.reshape(-1, stats.shape[-1])
        if len(samples) < 2:
            raise ConfigError(
                "the global expert needs at least 2 statistic windows: give 2+ normal images or set window < 1"
            )
        self.model = GaussianModel.fit(samples, self.config.shrinkage)

    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        import numpy as np

        assert self.model is not None
        stats = self._statistics(images)
        n, windows, dim = stats.shape
        distances = self.model.distances(stats.reshape(-1, dim)).reshape(n, windows)
        scores = distances.mean(axis=1)
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
            "window": cfg.window,
            "window_stride": cfg.window_stride,
        }

    def state_tensors(self) -> dict[str, Any]:
        import torch

        if self.model is None:
            return {}
        return {
            "mean": torch.from_numpy(self.model.mean.copy()),
            "precision": torch.from_numpy(self.model.precision.copy()),
        }

    def state_metadata(self) -> dict[str, Any]:
        if self.model is None:
            return {}
        return {**self._feature_facts(), "shrinkage": self.model.shrinkage, "samples": self.model.samples}

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        from myriad_experts_global.statistics import GaussianModel

        if set(tensors) != {"mean", "precision"}:
            raise WeightsError(f"saved global-expert state needs 'mean' and 'precision', found {sorted(tensors)}")
        mine = self._feature_facts()
        theirs = {key: metadata.get(key) for key in _FEATURE_KEYS}
        if mine != theirs:
            differ = ", ".join(f"{k}: saved {theirs[k]!r} vs configured {mine[k]!r}" for k in _FEATURE_KEYS if mine[k] != theirs[k])
            raise WeightsError(f"the saved global model was fitted with other settings ({differ}); refit, or use the saved config")
        mean = tensors["mean"].double().numpy()
        precision = tensors["precision"].double().numpy()
        if precision.shape != (mean.shape[0], mean.shape[0]):
            raise WeightsError(f"saved precision has shape {tuple(precision.shape)} for a mean of {mean.shape[0]} values")
        self.model = GaussianModel(
            mean=mean, precision=precision, shrinkage=float(metadata.get("shrinkage", 0.0)), samples=int(metadata.get("samples", 0))
        )
        self.fitted = True


__all__ = ["GlobalStatsExpert"]
