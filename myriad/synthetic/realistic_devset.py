"""The realistic dev set (``myriad make-devset --preset realistic``): real photos, subtle real-sized defects.

Same MVTec-AD layout as :mod:`myriad.synthetic.devset` (readable by
:func:`myriad.datasets.read_mvtec` and ``myriad eval``), plus per-image records in
``devset.json``: the pose of every image (crop centre, rotation, lighting, noise) and, for
every defective image, its kind, family, area fraction, size bucket, visibility and
visibility bucket (:mod:`myriad.synthetic.realistic_buckets`).

* Normal images: 256 px crops of real photos at native resolution
  (:mod:`myriad.synthetic.realistic_photos`). ``crops="shared"`` (the default) draws training
  and test crop centres from the same range, as parts of one production line come from one
  process; ``crops="zoned"`` takes test crops from a separate zone of each photo (test normals
  then hold texture the training crops never show, which held-out calibration normals do not:
  see docs/realistic-devset.md). The measured overlap of their source windows is in the manifest.
* Defects: the evaluation kinds of :mod:`myriad.synthetic.realistic_defects` only
  (:data:`~myriad.synthetic.realistic_defects.REALISTIC_EVAL_KINDS`); local defects cover
  0.05-5 % of the image, texture-wide ones the whole image.

Deterministic: every image has its own random stream from ``(seed, category, split,
defect, index)``; the same seed gives byte-identical files. Built beside ``OUT`` and
renamed into place at the end.

Over 400 lines on purpose: the dev set's settings, its crops, its manifest and the per-image records it writes (size, visibility, family) are one file format; split, a reader would need four modules to learn it.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from myriad.errors import ConfigError, DatasetError
from myriad.synthetic.realistic_defects import REALISTIC_EVAL_KINDS, REALISTIC_TRAIN_KINDS, get_realistic_kind

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from myriad.synthetic.realistic_defects import RealisticKind

__all__ = [
    "RealisticSpec",
    "REALISTIC",
    "visible_spec",
    "KindCatalogue",
    "catalogue",
    "REALISTIC_CATEGORIES",
    "RealisticSample",
    "render_sample",
    "normal_spread",
    "make_realistic_devset",
    "AREA_RANGE",
    "FORMAT",
]

FORMAT = "myriad-devset-realistic/1"
MANIFEST = "devset.json"
REALISTIC_CATEGORIES = ("brick", "grass", "gravel", "tissue", "fundus")
#: Area fraction every local defect must have (retried otherwise).
AREA_RANGE = (0.0005, 0.05)
#: Normal images used to measure the spread of whole-image statistics (texture-wide visibility).
SPREAD_IMAGES = 32
_ATTEMPTS = 12
#: Draws a visible defect gets to reach its area range and least visibility.
_VISIBLE_ATTEMPTS = 60
#: How train and test crop centres are drawn (see :class:`RealisticSpec`).
CROP_MODES = ("shared", "zoned")


@dataclass(frozen=True)
class RealisticSpec:
    """What to generate. ``test_defect`` counts images *per defect kind* and category."""

    categories: tuple[str, ...] = REALISTIC_CATEGORIES
    train: int = 200
    test_good: int = 60
    test_defect: int = 10
    size: int = 256
    seed: int = 0
    defects: tuple[str, ...] = REALISTIC_EVAL_KINDS
    preset: str = "realistic"
    #: "shared": train and test crop centres from one range; "zoned": test crops from a separate zone
    crops: str = "shared"
    #: False: ``test_defect`` images per kind; True: per family (local, texture-wide), spread evenly over its kinds
    per_family: bool = False

    @property
    def kinds(self) -> "KindCatalogue":
        """The defect kinds of this spec's preset (``realistic`` or ``visible``)."""
        return catalogue(self.preset)

    def validate(self) -> "RealisticSpec":
        """Check names, counts and that only evaluation photos and kinds are used; returns self."""
        from myriad.synthetic.realistic_photos import get_photo_source, zones_for

        if not self.categories:
            raise ConfigError("no categories given")
        if self.crops not in CROP_MODES:
            raise ConfigError(f"--crops must be one of {', '.join(CROP_MODES)}, got {self.crops!r}")
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"categories listed twice: {', '.join(self.categories)}")
        for name in self.categories:
            if get_photo_source(name).split != "eval":
                raise ConfigError(f"--categories: {name!r} is a training-only photo; the realistic preset uses evaluation photos only")
        kinds = self.kinds
        for kind in self.defects:
            kinds.get(kind)
            if kind in kinds.train:
                raise ConfigError(f"--defects: {kind!r} is a training kind; the {self.preset} preset writes evaluation kinds only")
        if self.train < 1:
            raise ConfigError(f"--train must be at least 1, got {self.train}")
        if self.test_good < 0 or self.test_defect < 0:
            raise ConfigError("--test-good and --test-defect must not be negative")
        if self.test_good + self.test_defect == 0:
            raise ConfigError("nothing to test: --test-good and --test-defect are both 0")
        if self.test_defect > 0 and not self.defects:
            raise ConfigError("--test-defect > 0 needs at least one defect kind")
        if not 64 <= self.size <= 4096:
            raise ConfigError(f"--size must be between 64 and 4096 pixels, got {self.size}")
        for name in self.categories:
            zones_for(name, self.size)  # refuses a crop the photo cannot hold without upscaling
        return self


REALISTIC = RealisticSpec()


@dataclass(frozen=True)
class KindCatalogue:
    """One preset's defect kinds and the rules every defect of it must meet."""

    name: str
    lookup: Callable[[str], "RealisticKind"]
    eval: tuple[str, ...]
    train: tuple[str, ...]
    #: area fraction every local defect must have
    area_range: tuple[float, float]
    #: least (local, texture-wide) visibility a defect must reach; None: any
    min_visibility: tuple[float, float] | None
    attempts: int
    #: kind -> photos it is not drawn on
    not_on: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def get(self, name: str) -> "RealisticKind":
        """The kind ``name`` (ConfigError naming the available ones)."""
        return self.lookup(name)


def catalogue(preset: str) -> KindCatalogue:
    """The kinds and rules of ``preset``: ``realistic`` (subtle) or ``visible`` (flagged at a glance)."""
    if preset == "visible":
        from myriad.synthetic.visible_defects import (
            VISIBLE_AREA_RANGE,
            VISIBLE_EVAL_KINDS,
            VISIBLE_MIN_VISIBILITY,
            VISIBLE_NOT_ON,
            VISIBLE_TRAIN_KINDS,
            get_visible_kind,
        )

        return KindCatalogue("visible", get_visible_kind, VISIBLE_EVAL_KINDS, VISIBLE_TRAIN_KINDS, VISIBLE_AREA_RANGE,
                             VISIBLE_MIN_VISIBILITY, _VISIBLE_ATTEMPTS, VISIBLE_NOT_ON)
    return KindCatalogue("realistic", get_realistic_kind, REALISTIC_EVAL_KINDS, REALISTIC_TRAIN_KINDS, AREA_RANGE, None, _ATTEMPTS)


#: The visible preset (``myriad make-devset --preset visible``): the realistic photos and crops, defects an
#: inspector flags at a glance (:mod:`myriad.synthetic.visible_defects`), 40 per family and category.
def visible_spec() -> RealisticSpec:
    from myriad.synthetic.visible_defects import VISIBLE_EVAL_KINDS

    return RealisticSpec(train=200, test_good=200, test_defect=40, per_family=True, preset="visible", defects=VISIBLE_EVAL_KINDS)


def _stream(seed: int, *parts: str | int) -> "np.random.Generator":
    import numpy as np

    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(words)


@dataclass
class RealisticSample:
    """One rendered image: the image, its defect-free twin (same pose and noise), the mask and the record."""

    image: "np.ndarray"
    clean: "np.ndarray"
    mask: "np.ndarray | None"
    info: dict


def _donor(category: str) -> Callable[["np.random.Generator", int], tuple[str, "np.ndarray"]]:
    """Foreign material for ``category``: a native-resolution window of another evaluation photo."""
    from myriad.synthetic.realistic_photos import EVAL_PHOTOS, get_photo_source, photo

    others = [name for name in EVAL_PHOTOS if name != category]
    colour = get_photo_source(category).colour

    def donor(rng: "np.random.Generator", side: int) -> tuple[str, "np.ndarray"]:
        import numpy as np

        name = others[int(rng.integers(len(others)))]
        image = photo(name).astype(np.float32)
        height, width = image.shape[:2]
        side = min(side, height, width)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        patch = image[top : top + side, left : left + side]
        if patch.ndim == 2:
            patch = patch[..., None]
        if colour and patch.shape[2] == 1:
            patch = np.repeat(patch, 3, axis=2)
        if not colour and patch.shape[2] == 3:
            patch = patch.mean(axis=2, keepdims=True)
        return name, patch

    return donor


@lru_cache(maxsize=64)
def normal_spread(seed: int, category: str, size: int) -> "np.ndarray":
    """Standard deviation of the whole-image statistics over ``SPREAD_IMAGES`` normal training-zone crops."""
    import numpy as np

    from myriad.synthetic.realistic_defects import texture_descriptor
    from myriad.synthetic.realistic_photos import draw_pose, finish, render_material, zones_for

    zones = zones_for(category, size)
    rows = []
    for index in range(SPREAD_IMAGES):
        rng = _stream(seed, category, "spread", "good", index)
        pose = draw_pose(rng, zones, "train")
        material = render_material(category, pose, size)
        noise = rng.standard_normal(material.shape).astype(np.float32)
        rows.append(texture_descriptor(finish(material, pose, noise)))
    return np.asarray(rows).std(axis=0)


def render_sample(
    category: str,
    kind: str,
    rng: "np.random.Generator",
    size: int,
    zone: str = "test",
    seed: int = 0,
    kinds: KindCatalogue | None = None,
) -> RealisticSample:
    """Render one image of ``category`` with defect ``kind`` (``"good"`` for a normal image) from ``rng``.

    ``zone`` is the photo zone the crop is centred in (``"train"``, ``"test"`` or ``"any"``). Works
    for every registered photo and kind of the catalogue ``kinds`` (default: the realistic
    preset's; training kinds included, for LMM data made from training photos); ``seed`` only
    selects the normal images that texture-wide visibility is measured against. A defect is
    redrawn until its area (local kinds) and visibility meet the catalogue's rules.
    """
    import numpy as np

    from myriad.synthetic.realistic_buckets import size_bucket, visibility_bucket
    from myriad.synthetic.realistic_defects import Scene, global_visibility, local_visibility
    from myriad.synthetic.realistic_photos import draw_pose, finish, get_photo_source, render_material, zones_for

    kinds = kinds or catalogue("realistic")
    source = get_photo_source(category)
    zones = zones_for(category, size)
    pose = draw_pose(rng, zones, zone)
    material = render_material(category, pose, size)
    noise = rng.standard_normal(material.shape).astype(np.float32)
    clean = finish(material, pose, noise)
    info: dict = {"pose": pose.as_dict()}
    if kind == "good":
        return RealisticSample(clean, clean, None, info)

    spec = kinds.get(kind)
    if spec.needs_orientation and not source.oriented:
        raise ConfigError(f"defect kind {kind!r} needs an oriented photo; {category!r} is not")
    scene = Scene(category, material, pose, size, source.colour, source.oriented,
                  render=lambda p: render_material(category, p, size), donor=_donor(category))
    least = None if kinds.min_visibility is None else kinds.min_visibility[1 if spec.is_global else 0]
    for _ in range(kinds.attempts):
        alteration = spec.paint(scene, rng)
        if spec.is_global:
            mask = np.ones((size, size), dtype=bool)
        else:
            mask = alteration.alpha > 0
            if not kinds.area_range[0] <= float(mask.mean()) <= kinds.area_range[1]:
                continue
        extra = None
        if alteration.extra_noise:
            extra = rng.standard_normal(material.shape).astype(np.float32) * alteration.extra_noise
        image = finish(alteration.material, pose, noise, extra)
        if spec.is_global:
            visibility, contrast = global_visibility(clean, image, normal_spread(seed, category, size)), None
        else:
            visibility, contrast = local_visibility(clean, image, mask)
        if least is None or visibility >= least:
            break
    else:
        rule = f"the area range {kinds.area_range}" + ("" if least is None else f" and visibility >= {least}")
        raise RuntimeError(f"defect kind {kind!r} on {category!r}: no draw met {rule} in {kinds.attempts} attempts")
    area = float(mask.mean())
    info.update({
        "kind": kind,
        "family": spec.family,
        "global": spec.is_global,
        "area_fraction": round(area, 6),
        "size_bucket": size_bucket(area, spec.is_global),
        "visibility": round(visibility, 3),
        "visibility_bucket": visibility_bucket(visibility, spec.is_global),
        "contrast": None if contrast is None else round(contrast, 3),
        "params": alteration.params,
    })
    return RealisticSample(image, clean, mask, info)


@dataclass
class _Planned:
    category: str
    split: str
    defect: str
    index: int

    @property
    def image_rel(self) -> str:
        return f"{self.category}/{self.split}/{self.defect}/{self.index:03d}.png"

    @property
    def mask_rel(self) -> str:
        return f"{self.category}/ground_truth/{self.defect}/{self.index:03d}_mask.png"


def applicable_kinds(spec: RealisticSpec, category: str) -> list[str]:
    """The spec's defect kinds that make sense on ``category`` (rotation kinds need an oriented photo; a
    catalogue may leave a kind off a photo, :attr:`KindCatalogue.not_on`)."""
    from myriad.synthetic.realistic_photos import get_photo_source

    oriented = get_photo_source(category).oriented
    kinds = spec.kinds
    return [k for k in spec.defects
            if (oriented or not kinds.get(k).needs_orientation) and category not in kinds.not_on.get(k, ())]


def defect_counts(spec: RealisticSpec, category: str) -> dict[str, int]:
    """Defective test images per kind of ``category``: ``test_defect`` each, or (``per_family``)
    ``test_defect`` per family spread evenly over its applicable kinds (the first kinds get one more)."""
    kinds = applicable_kinds(spec, category) if spec.test_defect else []
    if not spec.per_family:
        return {k: spec.test_defect for k in kinds}
    counts: dict[str, int] = {}
    for family in dict.fromkeys(spec.kinds.get(k).family for k in kinds):
        members = [k for k in kinds if spec.kinds.get(k).family == family]
        share, extra = divmod(spec.test_defect, len(members))
        counts.update({k: share + (i < extra) for i, k in enumerate(members)})
    return {k: counts[k] for k in kinds}


def _plan(spec: RealisticSpec) -> list[_Planned]:
    plan: list[_Planned] = []
    for category in spec.categories:
        plan += [_Planned(category, "train", "good", i) for i in range(spec.train)]
        plan += [_Planned(category, "test", "good", i) for i in range(spec.test_good)]
        for kind, count in defect_counts(spec, category).items():
            plan += [_Planned(category, "test", kind, i) for i in range(count)]
    return plan


def render_planned(spec: RealisticSpec, item: _Planned) -> RealisticSample:
    """The sample of one planned file; deterministic for ``spec.seed``."""
    rng = _stream(spec.seed, item.category, item.split, item.defect, item.index)
    zone = item.split if spec.crops == "zoned" else "any"
    return render_sample(item.category, item.defect, rng, spec.size, zone=zone, seed=spec.seed, kinds=spec.kinds)


def _save_png(array: "np.ndarray", path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not (out / MANIFEST).is_file():
                raise DatasetError(f"{out}: folder is not empty and is not a dev set (no {MANIFEST}); choose another OUT")
            if not overwrite:
                raise DatasetError(f"{out}: a dev set already exists here; pass --overwrite to replace it")


def make_realistic_devset(
    out: str | Path,
    spec: RealisticSpec | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the realistic dev set described by ``spec`` to ``out``; returns the manifest.

    ``out`` must not exist, be an empty folder, or (with ``overwrite``) be a dev set
    written earlier (it has ``devset.json``). ``progress(done, total)`` is called after
    each image. Nothing appears at ``out`` until every file is written.
    """
    import tempfile

    import numpy as np

    from myriad import __version__
    from myriad.io import atomic_write_text

    spec = (spec or REALISTIC).validate()
    out = Path(out)
    _check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(spec)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files = []
        for done, item in enumerate(plan, start=1):
            sample = render_planned(spec, item)
            _save_png(sample.image, staging / item.image_rel)
            record = {"image": item.image_rel, "category": item.category, "split": item.split, "defect": item.defect}
            if sample.mask is not None:
                _save_png(sample.mask.astype(np.uint8) * 255, staging / item.mask_rel)
                record["mask"] = item.mask_rel
            record.update(sample.info)
            files.append(record)
            if progress is not None:
                progress(done, len(plan))
        manifest = _manifest(spec, files, __version__)
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
        atomic_write_text(staging / "README.md", _readme(manifest))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "previous")
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _counts(files: list[dict], field: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in files:
        if record["defect"] != "good":
            counts[str(record[field])] = counts.get(str(record[field]), 0) + 1
    return dict(sorted(counts.items()))


def _manifest(spec: RealisticSpec, files: list[dict], version: str) -> dict:
    from myriad.synthetic import realistic_buckets as buckets
    from myriad.synthetic.realistic_photos import EVAL_PHOTOS, TRAIN_PHOTOS, get_photo_source, photo, window_overlap, zones_for

    categories = {}
    for name in spec.categories:
        mine = [f for f in files if f["category"] == name]
        windows = {split: [(f["pose"]["cy"], f["pose"]["cx"], spec.size * f["pose"]["scale"] / 2) for f in mine if f["split"] == split]
                   for split in ("train", "test")}
        categories[name] = {
            "photo": get_photo_source(name).as_dict(),
            "zones": zones_for(name, spec.size).as_dict(),
            "train": sum(f["split"] == "train" for f in mine),
            "test_good": sum(f["split"] == "test" and f["defect"] == "good" for f in mine),
            "test_defect": _counts(mine, "defect"),
            "test_train_overlap": window_overlap(windows["test"], windows["train"], photo(name).shape[:2]),
        }
    used = sorted({f["defect"] for f in files if f["defect"] != "good"})
    return {
        "format": FORMAT,
        "generator": f"myriad {version}",
        "spec": {**asdict(spec), "categories": list(spec.categories), "defects": list(spec.defects)},
        "command": _command(spec),
        "crop_size": spec.size,
        "split": {
            "eval_kinds": list(spec.kinds.eval),
            "train_kinds": list(spec.kinds.train),
            "eval_photos": list(EVAL_PHOTOS),
            "train_photos": list(TRAIN_PHOTOS),
            "rule": "evaluation kinds and photos are never used to train Myriad's LMM; this preset writes only evaluation kinds on evaluation photos",
            "area_range": list(spec.kinds.area_range),
            "min_visibility": None if spec.kinds.min_visibility is None else list(spec.kinds.min_visibility),
        },
        "buckets": {
            "size": list(buckets.SIZE_BUCKETS),
            "visibility": list(buckets.VISIBILITY_BUCKETS),
            "local_visibility_thresholds": list(buckets.LOCAL_VISIBILITY_THRESHOLDS),
            "global_visibility_thresholds": list(buckets.GLOBAL_VISIBILITY_THRESHOLDS),
            "local_visibility": "RMS grey change inside the mask / std of the clean texture in a ring around it",
            "global_visibility": "largest shift of a whole-image statistic / its std over normal images",
        },
        "counts": {field: _counts(files, field) for field in ("size_bucket", "visibility_bucket", "family", "kind")},
        "categories": categories,
        "defect_kinds": {k: spec.kinds.get(k).as_dict() for k in used},
        "files": files,
    }


def _command(spec: RealisticSpec) -> str:
    parts = [f"myriad make-devset OUT --preset {spec.preset}", f"--seed {spec.seed}", f"--categories {','.join(spec.categories)}"]
    parts += [f"--train {spec.train}", f"--test-good {spec.test_good}", f"--test-defect {spec.test_defect}", f"--size {spec.size}"]
    parts.append(f"--defects {','.join(spec.defects)}")
    parts.append(f"--crops {spec.crops}")
    return " ".join(parts)


def _readme(manifest: dict) -> str:
    spec = manifest["spec"]
    lines = [
        f"# {spec['preset'].capitalize()} development set",
        "",
        f"Generated by {manifest['generator']} (preset `{spec['preset']}`, seed {spec['seed']}, {spec['size']} px crops).",
        "Normal images are native-resolution crops of real photos (scikit-image's bundled samples); defects are",
        *(["small (0.1-3 % of the image) but plain to see (every one at least `medium` visibility), or texture-wide.",
           "See docs/realistic-devset.md, 'The visible preset'."] if spec["preset"] == "visible" else
          ["small, low-contrast, real-sized (0.05-5 % of the image) or texture-wide. See docs/realistic-devset.md."]),
        "",
        "Regenerate byte-identically with:",
        "",
        f"    {manifest['command']}",
        "",
        "| category | photo | train | test good | test defective | test/train window overlap (mean single, mean union) |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, cat in manifest["categories"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in cat["test_defect"].items()) or "none"
        overlap = cat["test_train_overlap"]
        lines.append(f"| {name} | {cat['photo']['photo']} | {cat['train']} | {cat['test_good']} | {kinds} | "
                     f"{overlap['mean_single']:.2f}, {overlap['mean_union']:.2f} |")
    lines += ["", "| bucket | defective images |", "|---|---:|"]
    for field, counts in manifest["counts"].items():
        for name, count in counts.items():
            lines.append(f"| {field} = {name} | {count} |")
    lines.append("")
    return "\n".join(lines)
