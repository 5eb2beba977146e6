"""Deterministic MVTec-AD-layout development sets from texture sources and defect painters.

Layout written by :func:`make_devset` (readable by :func:`myriad.datasets.read_mvtec`)::

    OUT/devset.json                                   manifest: spec, textures, defect kinds, every file
    OUT/README.md                                     what was generated and how to regenerate it
    OUT/<category>/train/good/000.png ...             normal training images
    OUT/<category>/test/good/000.png ...              normal test images
    OUT/<category>/test/<defect>/000.png ...          defective test images
    OUT/<category>/ground_truth/<defect>/000_mask.png masks (255 = defect)

Every image has its own random stream derived from ``(seed, category, split, defect,
index)``, so the same seed gives byte-identical files, and changing one count or adding a
category leaves the other images unchanged. The folder is built beside ``OUT`` and
renamed into place at the end: an interrupted run leaves nothing half written.

Presets (``myriad make-devset --preset``):

* ``default``: 5 textures (brick, grass, gravel, wood, weave) x (16 train, 8 good test,
  2 per evaluation defect kind) at 256 px: about 190 images in a few seconds.
* ``benchmark``: 7 textures (adds dots and marble) x (200 train, 40 good, 10 per kind):
  about 2,150 images (190 MB), about one CPU-minute. Use it for tables that should mean something.
* ``samples``: one texture (brick): 4 train, 4 good and 4 defective test images, for
  README demos.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from myriad.errors import ConfigError, DatasetError
from myriad.synthetic.defects import EVAL_DEFECTS, TRAIN_DEFECTS, applicable_defects, get_defect

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = [
    "DevsetSpec",
    "PRESETS",
    "PRESET_NAMES",
    "DEFAULT_CATEGORIES",
    "MANIFEST",
    "make_devset",
    "iter_defect_samples",
    "SyntheticSample",
]

MANIFEST = "devset.json"
FORMAT = "myriad-devset/1"
DEFAULT_CATEGORIES = ("brick", "grass", "gravel", "wood", "weave")
#: Every ``--preset`` of ``myriad make-devset``; ``realistic`` is made by :mod:`myriad.synthetic.realistic_devset`.
PRESET_NAMES = ("default", "benchmark", "samples", "realistic", "visible")


@dataclass(frozen=True)
class DevsetSpec:
    """What to generate. ``test_defect`` counts images *per defect kind* and category."""

    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    train: int = 16
    test_good: int = 8
    test_defect: int = 2
    size: int = 256
    seed: int = 0
    defects: tuple[str, ...] = EVAL_DEFECTS
    preset: str = "default"

    def validate(self) -> "DevsetSpec":
        """Check names and counts; returns self. Errors name the setting."""
        from myriad.synthetic.textures import get_texture

        if not self.categories:
            raise ConfigError("no categories given")
        for name in self.categories:
            get_texture(name)
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"categories listed twice: {', '.join(self.categories)}")
        for kind in self.defects:
            get_defect(kind)
        if self.train < 1:
            raise ConfigError(f"--train must be at least 1, got {self.train}")
        if self.test_good < 0 or self.test_defect < 0:
            raise ConfigError("--test-good and --test-defect must not be negative")
        if self.test_good + self.test_defect == 0:
            raise ConfigError("nothing to test: --test-good and --test-defect are both 0")
        if self.test_defect > 0 and not self.defects:
            raise ConfigError("--test-defect > 0 needs at least one defect kind")
        if not 32 <= self.size <= 4096:
            raise ConfigError(f"--size must be between 32 and 4096 pixels, got {self.size}")
        return self


PRESETS: dict[str, DevsetSpec] = {
    "default": DevsetSpec(),
    "benchmark": DevsetSpec(
        categories=DEFAULT_CATEGORIES + ("dots", "marble"), train=200, test_good=40, test_defect=10, preset="benchmark"
    ),
    "samples": DevsetSpec(
        categories=("brick",), train=4, test_good=4, test_defect=1,
        defects=("scratch", "stain", "cut_paste", "local_rotate"), preset="samples",
    ),
}


def _stream(seed: int, *parts: str | int) -> "np.random.Generator":
    """An independent random stream for one image, stable across Python runs."""
    import numpy as np

    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(words)


@dataclass
class _Planned:
    category: str
    split: str  # "train" or "test"
    defect: str  # "good" or a defect kind
    index: int

    @property
    def image_rel(self) -> str:
        return f"{self.category}/{self.split}/{self.defect}/{self.index:03d}.png"

    @property
    def mask_rel(self) -> str | None:
        if self.defect == "good":
            return None
        return f"{self.category}/ground_truth/{self.defect}/{self.index:03d}_mask.png"


def _plan(spec: DevsetSpec) -> list[_Planned]:
    from myriad.synthetic.textures import get_texture

    plan: list[_Planned] = []
    for category in spec.categories:
        plan += [_Planned(category, "train", "good", i) for i in range(spec.train)]
        plan += [_Planned(category, "test", "good", i) for i in range(spec.test_good)]
        if spec.test_defect:
            for kind in applicable_defects(spec.defects, get_texture(category).oriented):
                plan += [_Planned(category, "test", kind, i) for i in range(spec.test_defect)]
    return plan


def render(spec: DevsetSpec, item: "_Planned") -> tuple["np.ndarray", "np.ndarray | None", dict]:
    """Image (and mask) of one planned file; deterministic for ``spec.seed``."""
    from myriad.synthetic.defects import paint_defect, visibility
    from myriad.synthetic.textures import TEXTURES, get_texture

    rng = _stream(spec.seed, item.category, item.split, item.defect, item.index)
    image = get_texture(item.category).sample(rng, spec.size)
    if item.defect == "good":
        return image, None, {}
    info: dict = {}
    donor = None
    if get_defect(item.defect).uses_donor:
        others = [name for name in TEXTURES if name != item.category]
        donor_name = others[int(rng.integers(len(others)))]
        donor = get_texture(donor_name).sample(rng, spec.size)
        info["donor"] = donor_name
    defective, mask = paint_defect(item.defect, image, rng, donor=donor)
    info["mask_fraction"] = round(float(mask.mean()), 5)
    info["visibility"] = round(visibility(image, defective, mask), 2)
    return defective, mask, info


def _save_png(array: "np.ndarray", path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def make_devset(
    out: str | Path,
    spec: DevsetSpec | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the dev set described by ``spec`` to ``out``; returns the manifest.

    ``out`` must not exist, be an empty folder, or (with ``overwrite``) be a dev set
    written earlier (it has ``devset.json``); any other folder is refused so that no
    user data is deleted. ``progress(done, total)`` is called after each image.
    """
    import tempfile

    import numpy as np

    from myriad import __version__
    from myriad.io import atomic_write_text
    from myriad.synthetic.defects import DEFECTS
    from myriad.synthetic.textures import get_texture

    spec = (spec or PRESETS["default"]).validate()
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise DatasetError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not (out / MANIFEST).is_file():
                raise DatasetError(f"{out}: folder is not empty and is not a dev set (no {MANIFEST}); choose another OUT")
            if not overwrite:
                raise DatasetError(f"{out}: a dev set already exists here; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)

    plan = _plan(spec)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files = []
        for done, item in enumerate(plan, start=1):
            image, mask, info = render(spec, item)
            _save_png(image, staging / item.image_rel)
            record = {"image": item.image_rel, "category": item.category, "split": item.split, "defect": item.defect}
            if mask is not None:
                _save_png(mask.astype(np.uint8) * 255, staging / str(item.mask_rel))
                record["mask"] = item.mask_rel
            record.update(info)
            files.append(record)
            if progress is not None:
                progress(done, len(plan))
        manifest = _manifest(spec, plan, files, __version__, DEFECTS, get_texture)
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


def _manifest(spec: DevsetSpec, plan: list[_Planned], files: list[dict], version: str, defects: dict, get_texture: Callable) -> dict:
    categories = {}
    for name in spec.categories:
        items = [p for p in plan if p.category == name]
        kinds: dict[str, int] = {}
        for p in items:
            if p.split == "test" and p.defect != "good":
                kinds[p.defect] = kinds.get(p.defect, 0) + 1
        categories[name] = {
            "texture": get_texture(name).as_dict(),
            "train": sum(p.split == "train" for p in items),
            "test_good": sum(p.split == "test" and p.defect == "good" for p in items),
            "test_defect": kinds,
        }
    used = sorted({p.defect for p in plan if p.defect != "good"})
    return {
        "format": FORMAT,
        "generator": f"myriad {version}",
        "spec": {**asdict(spec), "categories": list(spec.categories), "defects": list(spec.defects)},
        "command": _command(spec),
        "categories": categories,
        "defect_kinds": {k: defects[k].as_dict() for k in used},
        "files": files,
    }


def _command(spec: DevsetSpec) -> str:
    parts = ["myriad make-devset OUT", f"--seed {spec.seed}", f"--categories {','.join(spec.categories)}"]
    parts += [f"--train {spec.train}", f"--test-good {spec.test_good}", f"--test-defect {spec.test_defect}", f"--size {spec.size}"]
    parts.append(f"--defects {','.join(spec.defects)}")
    return " ".join(parts)


def _readme(manifest: dict) -> str:
    spec = manifest["spec"]
    lines = [
        "# Synthetic development set",
        "",
        f"Generated by {manifest['generator']} (preset `{spec['preset']}`, seed {spec['seed']}, {spec['size']} px).",
        "MVTec-AD layout: `<category>/train/good`, `<category>/test/<defect>`, `<category>/ground_truth/<defect>/<name>_mask.png`.",
        "Synthetic textures and defects: for development and regression checks, not a substitute for MVTec AD or VisA.",
        "",
        "Regenerate byte-identically with:",
        "",
        f"    {manifest['command']}",
        "",
        "| category | source | train | test good | test defective |",
        "|---|---|---:|---:|---|",
    ]
    for name, cat in manifest["categories"].items():
        kinds = ", ".join(f"{k} {n}" for k, n in cat["test_defect"].items()) or "none"
        lines.append(f"| {name} | {cat['texture']['origin']}: {cat['texture']['description']} | {cat['train']} | {cat['test_good']} | {kinds} |")
    lines += ["", "| defect kind | family | description |", "|---|---|---|"]
    for name, kind in manifest["defect_kinds"].items():
        lines.append(f"| {name} | {kind['family']} | {kind['description']} |")
    lines += ["", "Whole-image kinds (`global_*`) have a mask covering the entire image.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- training generator


@dataclass(frozen=True)
class SyntheticSample:
    """One generated training example: ``mask`` is all False for normal images."""

    image: "np.ndarray"
    mask: "np.ndarray"
    texture: str
    defect: str  # "good" for normal images
    meta: dict = field(default_factory=dict)


def iter_defect_samples(
    textures: Sequence[str] = DEFAULT_CATEGORIES,
    kinds: Sequence[str] = TRAIN_DEFECTS,
    size: int = 256,
    seed: int = 0,
    normal_fraction: float = 0.0,
    limit: int | None = None,
) -> Iterator[SyntheticSample]:
    """Endless (or ``limit``) stream of synthetic anomalies for training, deterministic for ``seed``.

    Defaults to :data:`~myriad.synthetic.defects.TRAIN_DEFECTS`, disjoint from the kinds
    in dev sets, so evaluation on a dev set measures generalisation to unseen defects.
    Kinds that need an oriented texture are only drawn for oriented textures.
    """
    import numpy as np

    from myriad.synthetic.textures import get_texture

    spec = replace(DevsetSpec(), categories=tuple(textures), defects=tuple(kinds), size=int(size), seed=int(seed)).validate()
    if not 0.0 <= normal_fraction <= 1.0:
        raise ConfigError(f"normal_fraction must be in [0, 1], got {normal_fraction}")
    chooser = _stream(seed, "iter_defect_samples")
    index = 0
    while limit is None or index < limit:
        texture = spec.categories[int(chooser.integers(len(spec.categories)))]
        allowed = applicable_defects(spec.defects, get_texture(texture).oriented)
        if not allowed or chooser.random() < normal_fraction:
            defect = "good"
        else:
            defect = allowed[int(chooser.integers(len(allowed)))]
        item = _Planned(texture, "synthetic", defect, index)
        image, mask, info = render(spec, item)
        if mask is None:
            mask = np.zeros(image.shape[:2], dtype=bool)
        yield SyntheticSample(image, mask, texture, defect, info)
        index += 1
