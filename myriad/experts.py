"""The expert contract: what every vision expert takes and returns.

An expert turns RGB images into anomaly maps. Images are ``numpy.uint8`` arrays of
shape ``H x W x 3`` (use :func:`myriad.images.load_image`). ``predict`` returns, per
image, a :class:`Prediction` holding an ``H x W`` float32 anomaly map at the input
resolution and a float image score (higher = more anomalous).

The host enforces this at run time (:meth:`Expert.predict`, so every caller is covered):
one :class:`Prediction` per image, a 2-D map of the image's own ``H x W``, every map value
and the score finite. A float64 map is converted to float32 (the contract's dtype; the
values are kept, and one that overflows float32 fails the finiteness check); any other
dtype, a wrong shape, NaN or infinity raises :class:`~myriad.errors.ContractError` naming
the expert and the image's index in the batch.

Modes (the field's vocabulary, as anomalib's ``LearningType``):

- ``zero_shot``: no normal images needed; ``fit`` is not required.
- ``few_shot``: ``fit`` takes k normal reference images (k = 1, 2, 4, ...).
- ``one_class``: ``fit`` takes a training set of normal images.

Fitted state is saved to a directory with safetensors (tensors) and JSON (config),
never pickle.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Sequence

from myriad.errors import ContractError, ExpertStateError, MyriadError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from pydantic import BaseModel

    from myriad.progress import ProgressCallback, Stage

STATE_CONFIG_FILE = "expert.json"


def check_layer_indices(value: list[int] | None) -> list[int] | None:
    """Validate a config's ``layers`` list (blocks or stages): distinct non-negative integers, or ``None``.

    For a pydantic ``field_validator``; raises ``ValueError`` (which pydantic reports) otherwise.
    """
    if value is not None and (not value or len(set(value)) != len(value) or min(value) < 0):
        raise ValueError(f"layers must be distinct non-negative integers, got {value}")
    return value


class Mode(str, Enum):
    """How an expert learns what normal looks like."""

    ZERO_SHOT = "zero_shot"
    FEW_SHOT = "few_shot"
    ONE_CLASS = "one_class"


@dataclass(frozen=True)
class Prediction:
    """One image's result: ``anomaly_map`` (H x W float32) and ``score`` (float)."""

    anomaly_map: "np.ndarray"
    score: float


@dataclass
class ExpertInfo:
    """What a plugin registered for one expert (see :mod:`myriad.hookspecs`)."""

    name: str
    factory: Callable[..., "Expert"] | str
    config: type["BaseModel"]
    modes: tuple[Mode, ...]
    description: str
    transductive: bool = False
    distribution: str | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def load_factory(self) -> Callable[..., "Expert"]:
        """Resolve ``factory`` (importing ``module:attr`` strings on first use)."""
        if isinstance(self.factory, str):
            import importlib

            module_name, _, attr = self.factory.partition(":")
            try:
                module = importlib.import_module(module_name)
                self.factory = getattr(module, attr)
            except (ImportError, AttributeError) as exc:
                raise MyriadError(
                    f"expert {self.name!r} (from {self.distribution or 'unknown distribution'}): "
                    f"cannot load {self.factory!r}: {exc}"
                ) from exc
        return self.factory  # type: ignore[return-value]

    def as_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``myriad experts --json``."""
        return {
            "name": self.name,
            "modes": [m.value for m in self.modes],
            "distribution": self.distribution,
            "version": self.version,
            "description": self.description,
        }


class Expert(ABC):
    """Base class of vision experts.

    Subclasses set ``mode`` in ``__init__`` (from their config) and implement
    :meth:`_fit` (unless zero-shot), :meth:`_predict`, and, when they hold fitted
    state, :meth:`state_tensors` / :meth:`load_state_tensors`. The public
    :meth:`fit` / :meth:`predict` validate inputs so every expert gives the same
    clear errors.
    """

    #: True if ``predict`` scores a batch jointly (results depend on the batch).
    transductive: ClassVar[bool] = False
    #: the name the expert was registered under (set by :func:`myriad.plugins.get_expert`; used in errors)
    registered_name: str | None = None
    #: Smallest batch a transductive expert can score.
    min_batch: ClassVar[int] = 1
    #: Version of what :meth:`save` writes; raise it when :meth:`state_tensors` or :meth:`state_metadata`
    #: change meaning, so a saved state (a profile) of the old format is refused with "refit" instead of misread.
    STATE_FORMAT: ClassVar[int] = 1
    #: set by the host to receive progress as ``callback(stage, done, total)`` (see :mod:`myriad.progress`);
    #: None: each stage is a tqdm bar on a terminal
    progress_callback: "ProgressCallback | None" = None
    #: set by a wrapper before :meth:`fit` when several fitted images come from one photo (tiled scoring): the
    #: group of each image, as :meth:`heldout_predictions` takes them; None: each image is its own group. An
    #: expert that scores its fitted images held out while fitting (PatchCore's position baseline) reads it.
    fit_groups: "Sequence[int] | None" = None

    def __init__(self, config: "BaseModel", mode: Mode | str) -> None:
        self.config = config
        self.mode = Mode(mode)
        self.fitted = False

    # -- public API --------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit` must be called before :meth:`predict`."""
        return self.mode is not Mode.ZERO_SHOT

    def fit(self, normal_images: Sequence["np.ndarray"]) -> "Expert":
        """Learn normality from normal images (k references or a training set)."""
        from myriad.images import check_batch

        images = check_batch(normal_images, what="normal images")
        self._fit(images)
        self.fitted = True
        return self

    def predict(self, images: Sequence["np.ndarray"]) -> list[Prediction]:
        """Score a batch: one :class:`Prediction` per image, maps at input size."""
        from myriad.images import check_batch

        if self.needs_fit and not self.fitted:
            raise ExpertStateError(
                f"{type(self).__name__} in mode {self.mode.value!r} must be fitted on normal "
                "images before predict()"
            )
        batch = check_batch(images, what="images")
        if self.transductive and len(batch) < self.min_batch:
            raise MyriadError(
                f"{type(self).__name__} is transductive: it scores images against each other "
                f"and needs at least {self.min_batch} images per batch, got {len(batch)}"
            )
        predictions = list(self._predict(batch))
        if len(predictions) != len(batch):  # a plugin bug, reported clearly
            raise ContractError(
                f"{self._describe()}: predict returned {len(predictions)} results for {len(batch)} images"
            )
        return [self._checked(pred, image, index, len(batch)) for index, (pred, image) in enumerate(zip(predictions, batch))]

    def _describe(self) -> str:
        """``expert 'NAME' (ClassName)`` for error messages."""
        cls = type(self).__name__
        return f"expert {self.registered_name!r} ({cls})" if self.registered_name else f"expert {cls}"

    def _checked(self, pred: Any, image: "np.ndarray", index: int, total: int) -> Prediction:
        """``pred`` if it keeps the contract (a float64 map becomes float32); :class:`ContractError` otherwise."""
        import numpy as np

        where = f"{self._describe()} broke the contract for image {index} of the batch ({total} images)"
        if not isinstance(pred, Prediction):
            raise ContractError(f"{where}: returned {type(pred).__name__}, not a myriad.experts.Prediction")
        amap = pred.anomaly_map
        if not isinstance(amap, np.ndarray):
            raise ContractError(f"{where}: anomaly_map is a {type(amap).__name__}, not a numpy array")
        if amap.shape != image.shape[:2]:
            raise ContractError(
                f"{where}: anomaly_map has shape {amap.shape}, the image is {image.shape[0]} x {image.shape[1]} (H x W)"
            )
        if amap.dtype == np.float64:
            with np.errstate(over="ignore"):
                amap = amap.astype(np.float32)
        elif amap.dtype != np.float32:
            raise ContractError(f"{where}: anomaly_map has dtype {amap.dtype}, the contract is float32")
        if not np.isfinite(amap).all():
            bad = int(amap.size - np.count_nonzero(np.isfinite(amap)))
            raise ContractError(f"{where}: anomaly_map has {bad} non-finite values (NaN or infinity)")
        score = pred.score
        if isinstance(score, (bool, np.bool_)) or not isinstance(score, (int, float, np.integer, np.floating)):
            raise ContractError(f"{where}: score is a {type(score).__name__}, not a number")
        if not np.isfinite(score):
            raise ContractError(f"{where}: score is {score}, not finite")
        if amap is pred.anomaly_map and type(score) is float:
            return pred
        return Prediction(amap, float(score))

    def save(self, directory: str | Path) -> Path:
        """Write the config (JSON) and fitted tensors (safetensors) to ``directory``."""
        from myriad.io import atomic_write_text, save_tensors

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = self.state_tensors()
        if tensors:
            save_tensors(tensors, directory / "state.safetensors")
        meta = {
            "class": f"{type(self).__module__}:{type(self).__qualname__}",
            "state_format": type(self).STATE_FORMAT,
            "mode": self.mode.value,
            "fitted": self.fitted,
            "config": json.loads(self.config.model_dump_json()),
            "extra": self.state_metadata(),
        }
        atomic_write_text(directory / STATE_CONFIG_FILE, json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Expert":
        """Rebuild an expert saved with :meth:`save` (no pickle involved)."""
        from myriad.io import load_tensors

        directory = Path(directory)
        meta_path = directory / STATE_CONFIG_FILE
        if not meta_path.is_file():
            raise WeightsError(f"{meta_path}: no saved expert here (missing {STATE_CONFIG_FILE})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{meta_path}: not valid JSON: {exc}") from exc
        saved_class = meta.get("class", "")
        expected = f"{cls.__module__}:{cls.__qualname__}"
        # Loaded through a registered class: its state format decides (the module path may have moved since).
        if cls is not Expert and "state_format" in meta:
            if meta["state_format"] != cls.STATE_FORMAT:
                raise WeightsError(
                    f"{meta_path}: saved in state format {meta['state_format']}, {expected} reads format "
                    f"{cls.STATE_FORMAT}; fit it again"
                )
        elif cls is not Expert and saved_class != expected:
            raise WeightsError(f"{meta_path}: saved by {saved_class}, cannot load into {expected}")
        target: type[Expert] = cls
        if cls is Expert:
            import importlib

            module_name, _, attr = saved_class.partition(":")
            target = getattr(importlib.import_module(module_name), attr)
        config = target.config_model().model_validate(meta["config"])
        expert = target(config)
        state_file = directory / "state.safetensors"
        if state_file.is_file():
            expert.load_state_tensors(load_tensors(state_file), meta.get("extra", {}))
        expert.fitted = bool(meta.get("fitted", False))
        return expert

    # -- for subclasses -----------------------------------------------------------
    def progress_stage(
        self, stage: str, total: int = 0, unit: str = "it", terminal_only: bool = True
    ) -> ContextManager["Stage"]:
        """Report the progress of a long loop: ``with self.progress_stage("features", n) as s: ... s.advance(k)``.

        Reports go to :attr:`progress_callback` when the host set one, else to a tqdm bar drawn
        only on a terminal (always with ``terminal_only=False``); nothing is reported when the
        config's ``progress`` is False. See :mod:`myriad.progress`.
        """
        from myriad.progress import progress_stage

        enabled = bool(getattr(self.config, "progress", True))
        return progress_stage(
            stage, total, callback=self.progress_callback, enabled=enabled, unit=unit, terminal_only=terminal_only
        )

    @classmethod
    def config_model(cls) -> type["BaseModel"]:
        """The pydantic model of this expert's config (default: the ``Config`` attribute)."""
        model = getattr(cls, "Config", None)
        if model is None:
            raise NotImplementedError(f"{cls.__name__} must define Config or override config_model()")
        return model

    def _fit(self, images: list["np.ndarray"]) -> None:
        raise ExpertStateError(f"{type(self).__name__} in mode {self.mode.value!r} takes no fit()")

    @abstractmethod
    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        """Score validated RGB uint8 images; return maps at each input's size."""

    def heldout_predictions(
        self, images: list["np.ndarray"], groups: Sequence[int] | None = None
    ) -> list[Prediction] | None:
        """The images this expert was just fitted on, each scored as if it had been held out; None: cannot.

        Optional. The host calls it right after :meth:`fit` with the same images, to calibrate on
        held-out normals scored the way test images are (against everything fitted, minus the
        image itself) instead of k folds that fit on a fraction of the images. ``groups[i]``
        names the group of image ``i`` (default: each image its own); an image must be scored
        without anything learnt from its group (tiles of one photo form a group). Return one
        :class:`Prediction` per image, or None (the default) to let the host use k folds.
        """
        return None

    def state_tensors(self) -> dict[str, Any]:
        """Fitted tensors to save (name -> torch tensor or numpy array)."""
        return {}

    def state_metadata(self) -> dict[str, Any]:
        """JSON-serialisable facts needed to check or rebuild the fitted state."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        """Restore what :meth:`state_tensors` returned; check it matches the config."""
        if tensors:
            raise WeightsError(f"{type(self).__name__} holds no fitted tensors but some were saved")
