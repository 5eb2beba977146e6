"""Run an expert over an MVTec-AD-layout dataset: fit (calibrated), predict, score.

Protocol (the Myriad paper's tables):

* **one-class** (no ``k_shot``): the expert fits on every ``train/good`` image;
* **few-shot** (``k_shot=K``): it fits on K images drawn from ``train/good`` with the seed;
  ``runs=N`` repeats the draw with seeds ``seed, seed + 1, ...`` and the report averages
  the runs;
* **zero-shot** experts do not fit; the same normal images only calibrate them.

Fitting goes through :class:`myriad.detector.Detector`, so every expert is calibrated the
same way (threshold = max score of held-out normals over k folds, see
:mod:`myriad.calibration`; a zero-shot transductive expert is calibrated in each test
batch by the control normals the detector appends to it); ``expert_accuracy`` counts
decisions at that threshold.
Threshold-free metrics (AUROC, AP, F1-max, AUPRO) use the **raw** scores and maps:
calibration clips to [0, 1], which would create ties.

Extension point: ``evaluate(settings, steps=[...])`` runs each :class:`EvalStep` on every
batch (it sees the samples, images, detections and the new :class:`ImageRecord` objects,
and may fill ``record.extra``) and adds its :meth:`EvalStep.metrics` to each run's
metrics. An LMM step would ask the model about each image, store its answer in
``record.extra`` (written to the predictions JSONL) and report ``accuracy`` beside
``expert_accuracy``.

Over 400 lines on purpose: the evaluation settings, the per-category loop and the report it returns are one pipeline, with its error messages in one place; plots and reports live in their own modules.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

from myriad.errors import ConfigError
from myriad.evaluation.records import CategoryResult, EvalResult, Example, ImageRecord, RunResult

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.datasets import Category, Sample
    from myriad.detector import Detection, Detector
    from myriad.experts import ExpertInfo

__all__ = ["EvalSettings", "EvalStep", "evaluate", "expert_config", "peak_rss_mb", "image_metrics"]

#: Test images per predict call of an expert that scores each image alone.
DEFAULT_BATCH_SIZE = 8

#: Image and pixel metrics every run reports (None when undefined for the data).
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "image_ap", "expert_accuracy")


@dataclass
class EvalSettings:
    """What ``myriad eval`` was asked to do."""

    expert: str
    data: Path
    categories: tuple[str, ...] | None = None
    k_shot: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    device: str | None = None
    seed: int = 0
    runs: int = 1
    #: test images per predict call (None: 8, or the whole test split for a transductive expert,
    #: which scores each image against the others of its batch)
    batch_size: int | None = None
    folds: int = 3
    #: control normals per test batch of a transductive zero-shot expert (None: the detector's default)
    controls: int | None = None
    #: pixel metrics on maps/masks shrunk so the longer side is at most this (0 = native size)
    metric_size: int = 256
    #: rows of the example overlay grid per category
    examples: int = 6
    #: calibrate at this false-alarm rate instead of the paper's maximum (None)
    false_alarm_rate: float | None = None
    #: how held-out normals are scored (myriad.calibration.CALIBRATION_METHODS)
    calibration: str = "auto"
    #: native-resolution tiling (see myriad.tiling): "auto", "none" or a tile side
    tile: int | str | None = "auto"
    progress: bool = True

    def validate(self) -> "EvalSettings":
        """Check the numbers; errors name the option."""
        if self.k_shot is not None and self.k_shot < 1:
            raise ConfigError(f"--k-shot must be at least 1, got {self.k_shot}")
        if self.runs < 1:
            raise ConfigError(f"--runs must be at least 1, got {self.runs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.folds < 2:
            raise ConfigError(f"--folds must be at least 2, got {self.folds}")
        if self.controls is not None and self.controls < 0:
            raise ConfigError(f"--controls must not be negative, got {self.controls}")
        if self.metric_size < 0 or self.examples < 0:
            raise ConfigError("--metric-size and --examples must not be negative")
        from myriad.calibration import check_false_alarm_rate

        check_false_alarm_rate(self.false_alarm_rate)
        from myriad.calibration import check_calibration_method

        check_calibration_method(self.calibration)
        return self

    def to_json(self) -> dict[str, Any]:
        """JSON form stored in the report."""
        data = asdict(self)
        data["data"] = str(self.data)
        data["categories"] = list(self.categories) if self.categories else None
        data.pop("progress")
        return data


class EvalStep(Protocol):
    """A per-batch add-on to the evaluation (e.g. LMM answers); see the module docstring."""

    name: str

    def process(
        self,
        category: "Category",
        samples: Sequence["Sample"],
        images: Sequence["np.ndarray"],
        detections: Sequence["Detection"],
        records: Sequence[ImageRecord],
    ) -> None:
        """Look at one batch; may fill ``record.extra`` of its records."""

    def metrics(self, records: Sequence[ImageRecord]) -> dict[str, float | None]:
        """Metrics over one category-run's records (merged into the run's metrics)."""


def _fitted_hooks(steps: Sequence[EvalStep]) -> list[Any]:
    """Steps that look at the fitted detector (an optional ``fitted(category, detector, normal_images)`` method;
    a step with ``needs_heldout = True`` also gets the normal images' held-out detections kept)."""
    return [step for step in steps if callable(getattr(step, "fitted", None))]


# --------------------------------------------------------------------------- helpers


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB (None where unsupported)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _peak_gpu_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except Exception:  # noqa: BLE001 - reporting only
        return None
    return None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def evaluation_config(settings: EvalSettings, warn: Callable[[str], None] = _warn) -> dict[str, Any]:
    """:func:`expert_config` for ``settings.expert``; for a fused expert, one config per member."""
    from myriad.fusion import is_fused, member_configs
    from myriad.plugins import get_expert_info

    configs = member_configs(settings.expert, settings.config)
    out = {name: expert_config(get_expert_info(name), settings, warn, cfg) for name, cfg in configs.items()}
    return out if is_fused(settings.expert) else out[settings.expert]


def expert_config(
    info: "ExpertInfo",
    settings: EvalSettings,
    warn: Callable[[str], None] = _warn,
    user_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The expert config for this evaluation: user options plus ``mode`` and ``device``.

    When the expert's config has a ``mode`` field, ``--k-shot`` selects ``few_shot`` and its
    absence ``one_class`` (or ``zero_shot`` for experts without one-class mode), unless the
    user's config sets the mode; contradictions are errors. ``device`` is passed when the
    config has a ``device`` field. ``user_config``: the options (default ``settings.config``).
    """
    from myriad.expert_settings import resolve_member_config

    config = dict(settings.config if user_config is None else user_config)
    return resolve_member_config(
        info, config, k_shot=settings.k_shot, device=settings.device, override_device=True, warn=warn
    )


def _draw_references(category: "Category", k_shot: int | None, seed: int) -> list["Sample"]:
    import numpy as np

    if k_shot is None:
        return list(category.train)
    order = np.random.default_rng(seed).choice(len(category.train), size=k_shot, replace=False)
    return [category.train[int(i)] for i in sorted(order)]


def _batch_size(settings: EvalSettings, detector: "Detector", test_images: int) -> int:
    """Test images per predict call: the setting, else 8, or the whole split for a transductive expert
    (its scores compare each image with the others of its batch, so one batch keeps them on one scale)."""
    if settings.batch_size is not None:
        return settings.batch_size
    members = getattr(detector, "members", [detector])  # a fusion batches for its transductive members
    return max(1, test_images) if any(m.expert.transductive for m in members) else DEFAULT_BATCH_SIZE


def _batches(samples: list["Sample"], size: int, min_batch: int) -> list[list["Sample"]]:
    """Chunks of ``size``; a last chunk smaller than ``min_batch`` joins the previous one."""
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    if len(chunks) > 1 and len(chunks[-1]) < min_batch:
        chunks[-2].extend(chunks.pop())
    return chunks


def _pick_examples(samples: list["Sample"], count: int) -> list["Sample"]:
    """One normal image, then the first image of each defect type, then more defects."""
    if count <= 0:
        return []
    normals = [s for s in samples if s.label == 0]
    anomalous = [s for s in samples if s.label != 0]
    firsts: dict[str, "Sample"] = {}
    for s in anomalous:
        firsts.setdefault(s.defect, s)
    picks = normals[:1] + [firsts[d] for d in sorted(firsts)]
    picks += [s for s in anomalous if s not in picks]
    return picks[:count]


def _shrunk_shape(height: int, width: int, limit: int) -> tuple[int, int]:
    if limit <= 0 or max(height, width) <= limit:
        return height, width
    scale = limit / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink_map(values: "np.ndarray", shape: tuple[int, int]) -> "np.ndarray":
    from myriad.evaluation.overlay import resize_to

    return resize_to(values, *shape)


def _shrink_mask(mask: "np.ndarray", shape: tuple[int, int]) -> "np.ndarray":
    """Area-resize a bool mask; keeps thin defects that plain thresholding would drop."""
    import numpy as np

    if mask.shape == shape:
        return mask
    from myriad.evaluation.overlay import resize_to

    cover = resize_to(mask.astype(np.float32), *shape)
    small = cover >= 0.5
    if mask.any() and not small.any():
        small = cover > 0
    return small


def _shrink_image(image: "np.ndarray", shape: tuple[int, int]) -> "np.ndarray":
    import numpy as np
    from PIL import Image

    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def image_metrics(
    labels: Sequence[int],
    raw_scores: Sequence[float],
    decisions: Sequence[bool],
    masks: Sequence["np.ndarray"] | None = None,
    raw_maps: Sequence["np.ndarray"] | None = None,
) -> tuple[dict[str, float | None], list[str]]:
    """Metrics of one category-run and notes on those that are undefined for the data."""
    import numpy as np

    from myriad import metrics

    notes: list[str] = []
    y = np.asarray(labels, dtype=bool)
    out: dict[str, float | None] = {key: None for key in METRIC_KEYS}
    out["expert_accuracy"] = metrics.accuracy(y, np.asarray(decisions, dtype=bool))
    if y.all() or not y.any():
        notes.append("test set has only one class: image AUROC, AP and F1-max are undefined")
    else:
        out["image_auroc"] = metrics.image_auroc(y, raw_scores)
        out["image_ap"] = metrics.average_precision(y, raw_scores)
        out["f1_max"] = metrics.f1_max(y, raw_scores)[0]
    if masks is not None and raw_maps is not None:
        try:
            out["pixel_auroc"] = metrics.pixel_auroc(list(masks), list(raw_maps))
            out["aupro"] = metrics.aupro(list(masks), list(raw_maps))
        except ValueError as exc:
            notes.append(f"pixel metrics undefined: {exc}")
    return out, notes


# --------------------------------------------------------------------------- main loop


def evaluate(
    settings: EvalSettings,
    steps: Sequence[EvalStep] = (),
    warn: Callable[[str], None] = _warn,
) -> EvalResult:
    """Evaluate ``settings.expert`` on ``settings.data``; nothing is written to disk."""
    from myriad.datasets import read_mvtec
    from myriad.fusion import make_detector, member_names
    from myriad.plugins import get_expert_info

    start = time.perf_counter()
    settings.validate()
    config = evaluation_config(settings, warn)
    categories = read_mvtec(settings.data, settings.categories)

    # Check everything that can fail before the first (possibly long) fit.
    probe = make_detector(settings.expert, config, tile=settings.tile)
    mode = probe.mode
    if "few_shot" in mode.split("+") and settings.k_shot is None:
        raise ConfigError(
            f"expert {settings.expert!r} is configured few-shot: give --k-shot K "
            "(or set a one-class mode in --config)"
        )
    if settings.k_shot is not None:
        for category in categories:
            if settings.k_shot > len(category.train):
                train_dir = category.train[0].path.parent if category.train else category.root / "train" / "good"
                raise ConfigError(
                    f"--k-shot {settings.k_shot} is larger than the {len(category.train)} training images "
                    f"in {train_dir} (category {category.name!r})"
                )
    min_batch = probe.min_batch
    if settings.batch_size is not None and settings.batch_size < min_batch:
        raise ConfigError(
            f"--batch-size {settings.batch_size} is too small: expert {settings.expert!r} is transductive "
            f"and needs at least {min_batch} images per batch"
        )
    resolved_config = probe.resolved_config()
    del probe
    import torch  # noqa: F401  - imported now so that the first category's fit time does not include it

    results: list[CategoryResult] = []
    records: list[ImageRecord] = []
    for category in categories:
        result = CategoryResult(
            name=category.name, root=str(category.root), num_train=len(category.train), has_masks=category.has_masks
        )
        for run in range(settings.runs):
            run_result, run_records = _run_category(settings, config, category, run, min_batch, result, steps)
            result.runs.append(run_result)
            records.extend(run_records)
        result.peak_rss_mb = peak_rss_mb() or 0.0
        results.append(result)

    return EvalResult(
        expert=settings.expert,
        mode=mode,
        config=resolved_config,
        settings=settings.to_json(),
        categories=results,
        records=records,
        total_seconds=round(time.perf_counter() - start, 3),
        peak_rss_mb=peak_rss_mb() or 0.0,
        peak_gpu_mb=_peak_gpu_mb(),
        expert_info=_expert_info(member_names(settings.expert)),
    )


def _expert_info(names: list[str]) -> dict[str, Any]:
    """Distribution, version and description of the expert (joined with '+' for a fusion)."""
    from myriad.plugins import get_expert_info

    infos = [get_expert_info(name) for name in names]
    return {
        key: " + ".join(str(getattr(info, key)) for info in infos)
        for key in ("distribution", "version", "description")
    }


def _run_category(
    settings: EvalSettings,
    config: dict[str, Any],
    category: "Category",
    run: int,
    min_batch: int,
    result: CategoryResult,
    steps: Sequence[EvalStep],
) -> tuple[RunResult, list[ImageRecord]]:
    from tqdm import tqdm

    from myriad.datasets import load_mask
    from myriad.fusion import make_detector
    from myriad.images import load_image

    seed = settings.seed + run
    references = _draw_references(category, settings.k_shot, seed)
    normal_images = [load_image(s.path) for s in references]
    detector = make_detector(settings.expert, config, tile=settings.tile)
    started = time.perf_counter()
    hooks = _fitted_hooks(steps)
    detector.fit(
        normal_images, folds=settings.folds, seed=seed, controls=settings.controls,
        false_alarm_rate=settings.false_alarm_rate, calibration=settings.calibration,
        keep_heldout=any(getattr(step, "needs_heldout", False) for step in hooks),
    )
    fit_seconds = time.perf_counter() - started
    for step in hooks:
        step.fitted(category, detector, normal_images)
    del normal_images

    examples = {s.path for s in _pick_examples(category.test, settings.examples)} if run == 0 else set()
    kept: dict[Path, Example] = {}
    labels: list[int] = []
    raw_scores: list[float] = []
    decisions: list[bool] = []
    masks: list[np.ndarray] | None = [] if category.has_masks else None
    maps: list[np.ndarray] | None = [] if category.has_masks else None
    run_records: list[ImageRecord] = []
    detect_seconds = 0.0
    batch_calibrations: list[dict[str, Any]] = []  # in-batch calibrations (transductive experts with controls)

    desc = f"{category.name}" + (f" run {run + 1}/{settings.runs}" if settings.runs > 1 else "")
    with tqdm(total=len(category.test), desc=desc, unit="img", disable=None if settings.progress else True, leave=False, file=sys.stderr) as bar:
        for batch in _batches(list(category.test), _batch_size(settings, detector, len(category.test)), min_batch):
            images = [load_image(s.path) for s in batch]
            started = time.perf_counter()
            detections = detector.detect(images)
            detect_seconds += time.perf_counter() - started
            batch_record = detector.batch_calibration_record()
            if batch_record is not None:
                batch_calibrations.append(batch_record)
            new_records = []
            for sample, image, det in zip(batch, images, detections):
                record = ImageRecord(
                    category=category.name,
                    run=run,
                    path=str(sample.path),
                    label=int(sample.label),
                    defect=sample.defect,
                    raw_score=float(det.raw_score),
                    score=float(det.score),
                    anomalous=bool(det.anomalous),
                )
                if det.members:
                    record.extra["members"] = det.members
                new_records.append(record)
                labels.append(record.label)
                raw_scores.append(record.raw_score)
                decisions.append(record.anomalous)
                mask = None
                if masks is not None or sample.path in examples:
                    mask = load_mask(sample, shape=image.shape[:2]) if (sample.mask_path is not None or sample.label == 0) else None
                if masks is not None and maps is not None:
                    shape = _shrunk_shape(*image.shape[:2], settings.metric_size)
                    masks.append(_shrink_mask(mask, shape))
                    maps.append(_shrink_map(det.raw_map, shape))
                if sample.path in examples:
                    shape = _shrunk_shape(*image.shape[:2], 256)
                    kept[sample.path] = Example(
                        path=str(sample.path),
                        label=record.label,
                        defect=sample.defect,
                        image=_shrink_image(image, shape),
                        calibrated_map=_shrink_map(det.anomaly_map, shape),
                        mask=None if mask is None else _shrink_mask(mask, shape),
                        score=record.score,
                        anomalous=record.anomalous,
                    )
            for step in steps:
                step.process(category, batch, images, detections, new_records)
            run_records.extend(new_records)
            bar.update(len(batch))

    metrics, notes = image_metrics(labels, raw_scores, decisions, masks, maps)
    for step in steps:
        metrics.update(step.metrics(run_records))
    if run == 0:
        order = {s.path: i for i, s in enumerate(_pick_examples(category.test, settings.examples))}
        result.examples = sorted(kept.values(), key=lambda e: order[Path(e.path)])
    calibration = detector.calibration_record()
    if batch_calibrations:  # the decisions used these; the last one first-level (plots read its threshold)
        calibration = {**batch_calibrations[-1], "fit": calibration, "batches": batch_calibrations}
    run_result = RunResult(
        category=category.name,
        run=run,
        seed=seed,
        metrics=metrics,
        fit_seconds=round(fit_seconds, 4),
        ms_per_image=round(1000.0 * detect_seconds / max(len(category.test), 1), 3),
        num_fit=len(references),
        num_test=len(category.test),
        num_anomalous=sum(labels),
        calibration=calibration,
        references=[s.path.name for s in references] if settings.k_shot is not None else None,
        notes=notes,
    )
    return run_result, run_records
