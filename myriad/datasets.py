"""Dataset readers: MVTec-AD, VisA and a plain folder layout, all giving :class:`Category` objects.

A reader only lists files (and checks that what it needs exists); images are read later
with :func:`myriad.images.load_image` and masks with :func:`load_mask`. Every problem
raises :class:`~myriad.errors.DatasetError` naming the path and what is missing.

Over 400 lines on purpose: three layouts share the :class:`Category` / :class:`Sample` types, the image and mask checks and their one-line error messages; one module keeps the readers consistent.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from myriad.errors import DatasetError
from myriad.images import is_image_file, list_images

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Sample", "Category", "load_mask", "read_mvtec", "read_visa", "read_folder", "NORMAL", "ANOMALOUS"]

NORMAL = 0
ANOMALOUS = 1
#: Defect name of normal samples (MVTec's folder name for them).
GOOD = "good"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")

@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``label`` is 0 for normal and 1 for anomalous; ``defect`` is the defect type
    (``"good"`` for normal samples); ``mask_path`` is the ground-truth mask of an anomalous
    sample, or ``None`` when the dataset has none; ``split`` is ``"train"`` or ``"test"``.
    """

    path: Path
    label: int
    defect: str
    mask_path: Path | None
    category: str
    split: str

    @property
    def is_anomalous(self) -> bool:
        """Whether the sample is labelled anomalous."""
        return self.label == ANOMALOUS


@dataclass
class Category:
    """One product category: its folder and its training and test samples."""

    name: str
    root: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        """Whether every anomalous test sample has a ground-truth mask (pixel metrics possible)."""
        anomalous = [s for s in self.test if s.label == ANOMALOUS]
        return bool(anomalous) and all(s.mask_path is not None for s in anomalous)

    @property
    def defects(self) -> list[str]:
        """Sorted defect types of the anomalous test samples."""
        return sorted({s.defect for s in self.test if s.label == ANOMALOUS})

    @property
    def test_labels(self) -> list[int]:
        """Labels of the test samples, in order."""
        return [s.label for s in self.test]

    def load_mask(self, sample: Sample, shape: tuple[int, int] | None = None) -> "np.ndarray":
        """Same as the module function :func:`load_mask`."""
        return load_mask(sample, shape)

    def __repr__(self) -> str:
        anomalous = sum(s.label for s in self.test)
        return (
            f"Category({self.name!r}, root={str(self.root)!r}, train={len(self.train)}, "
            f"test={len(self.test)} ({anomalous} anomalous), masks={self.has_masks})"
        )


# --------------------------------------------------------------------------- masks


def _header_error(exc: Exception, path: Path) -> str:
    """An :class:`~myriad.errors.ImageError`'s message without its leading ``<path>: ``."""
    message = str(exc)
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file, reading only its header (format and pixel limit checked, no global state)."""
    from myriad.errors import ImageError
    from myriad.images import read_image_size

    if not path.is_file():
        raise DatasetError(f"{path}: image not found")
    try:
        width, height = read_image_size(path)
    except ImageError as exc:
        raise DatasetError(f"{path}: not a readable image: {_header_error(exc, path)}") from exc
    return height, width


def _read_mask_pixels(path: Path, sample: Sample, max_pixels: int | None) -> "np.ndarray":
    """A mask file's pixels in their own mode (16-bit values kept, palettes expanded).

    The size is read from the header and checked against the pixel limit
    (:func:`myriad.images.read_image_size`, default :data:`myriad.images.MAX_PIXELS`) before any
    pixel is decoded, and only :data:`myriad.images.IMAGE_FORMATS` are opened. Pillow's
    process-wide ``Image.MAX_IMAGE_PIXELS`` is never changed, so concurrent readers cannot race.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from myriad.errors import ImageError
    from myriad.images import IMAGE_FORMATS, read_image_size

    if not path.is_file():
        raise DatasetError(f"{path}: mask file not found (for {sample.path})")
    try:
        size = read_image_size(path, max_pixels)
    except ImageError as exc:
        raise DatasetError(f"{path}: not a readable mask image: {_header_error(exc, path)}") from exc
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            if img.size != size:  # replaced since the header was checked
                raise DatasetError(f"{path}: mask file changed while being read")
            img.load()
            if img.mode in ("P", "PA"):
                img = img.convert("RGBA" if img.mode == "PA" or "transparency" in img.info else "RGB")
            return np.asarray(img)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: mask file not found (for {sample.path})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"{path}: not a readable mask image: {exc}") from exc


def load_mask(sample: Sample, shape: tuple[int, int] | None = None, max_pixels: int | None = None) -> "np.ndarray":
    """Ground-truth mask of ``sample`` as a bool ``H x W`` array (True = anomalous).

    ``shape`` is ``(H, W)``, normally the shape of the loaded image; by default the image
    file's size. Normal samples give all-False. Mask pixels above 0 (in any channel) are
    anomalous; a mask of another size is resized nearest-neighbour. An anomalous sample
    without a mask raises :class:`DatasetError` (zeros would silently corrupt pixel metrics).
    A mask file above ``max_pixels`` (default :data:`myriad.images.MAX_PIXELS`) is refused from
    its header, before decoding.
    """
    import numpy as np
    from PIL import Image

    if shape is None:
        shape = _image_size(sample.path)
    height, width = int(shape[0]), int(shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"mask shape must be positive, got {shape}")
    if sample.label == NORMAL and sample.mask_path is None:
        return np.zeros((height, width), dtype=bool)
    if sample.mask_path is None:
        raise DatasetError(f"{sample.path}: anomalous sample of category {sample.category!r} has no ground-truth mask")

    arr = _read_mask_pixels(sample.mask_path, sample, max_pixels)
    if arr.ndim == 3:
        colour = arr[..., :3] if arr.shape[2] >= 3 else arr[..., :1]
        mask = (colour > 0).any(axis=2)
    else:
        mask = arr > 0
    if mask.shape != (height, width):
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        mask = np.asarray(resized) > 0
    return np.ascontiguousarray(mask, dtype=bool)


# --------------------------------------------------------------------------- helpers


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{path}: {what} not found")
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} is not a folder")
    return path


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _mask_index(folder: Path | None) -> dict[str, Path]:
    """Map image stems to mask files in ``folder``: ``<stem>_mask.<ext>`` wins over ``<stem>.<ext>``."""
    if folder is None or not folder.is_dir():
        return {}
    index: dict[str, Path] = {}
    plain: dict[str, Path] = {}
    for path in list_images(folder):
        stem = path.stem
        if stem.endswith("_mask"):
            index.setdefault(stem[: -len("_mask")], path)
        else:
            plain.setdefault(stem, path)
    for stem, path in plain.items():
        index.setdefault(stem, path)
    return index


def _check_masks(samples: Iterable[Sample], expected: dict[Path, Path], where: str, required: bool = False) -> None:
    """Refuse a partial set of masks: if any anomalous sample has one, all must.

    ``expected`` maps the image path of each anomalous sample without a mask to the mask
    path that was looked for; ``required`` makes a mask mandatory even when none exist.
    """
    anomalous = [s for s in samples if s.label == ANOMALOUS]
    missing = [s for s in anomalous if s.mask_path is None]
    if not missing or (not required and len(missing) == len(anomalous)):
        return
    first = missing[0]
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    looked = expected.get(first.path)
    looked_text = f"; expected {looked}" if looked is not None else ""
    raise DatasetError(f"{first.path}: ground-truth mask missing in {where}{looked_text}{more}")


def _select(available: list[str], wanted: Iterable[str] | None, where: Path | str) -> list[str]:
    if wanted is None:
        return available
    if isinstance(wanted, str):
        wanted = [wanted]
    chosen = list(dict.fromkeys(wanted))
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise DatasetError(f"{where}: unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; available: {', '.join(available) or 'none'}")
    if not chosen:
        raise DatasetError(f"{where}: no categories selected; available: {', '.join(available)}")
    return chosen


# --------------------------------------------------------------------------- MVTec AD


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def read_mvtec(root: str | Path, categories: Iterable[str] | str | None = None) -> list[Category]:
    """Read an MVTec-AD style dataset.

    Layout: ``<root>/<category>/train/good/*``, ``<root>/<category>/test/<defect>/*``
    (``good`` is normal) and ``<root>/<category>/ground_truth/<defect>/<stem>_mask.png``
    (``<stem>.png`` is accepted too). ``root`` may also be one category folder. Categories
    are found automatically (sorted) or restricted to ``categories``. Anomalous samples
    have no masks when the dataset has none; a dataset with only some masks is an error.
    """
    root = _require_dir(Path(root), "MVTec dataset folder")
    if _is_mvtec_category(root) and not any(_is_mvtec_category(d) for d in _subdirs(root)):
        names = _select([root.name], categories, root)
        return [_read_mvtec_category(root, names[0])]
    available = [d.name for d in _subdirs(root) if _is_mvtec_category(d)]
    if categories is None and not available:
        raise DatasetError(f"{root}: no categories found (expected <category>/train/good and <category>/test folders)")
    if isinstance(categories, str):
        categories = [categories]
    # A named folder that exists but is malformed gets its own, more precise error below.
    existing = available + [c for c in (categories or []) if c not in available and (root / c).is_dir()]
    names = _select(existing, categories, root)
    return [_read_mvtec_category(root / name, name) for name in names]


def _read_mvtec_category(folder: Path, name: str) -> Category:
    train_dir = folder / "train" / GOOD
    if not train_dir.is_dir():
        raise DatasetError(f"{train_dir}: training folder of category {name!r} not found (expected train/good)")
    train_images = list_images(train_dir)
    if not train_images:
        raise DatasetError(f"{train_dir}: no training images in category {name!r}")
    train = [Sample(p, NORMAL, GOOD, None, name, "train") for p in train_images]

    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir}: test folder of category {name!r} not found")
    ground_truth = folder / "ground_truth"
    test: list[Sample] = []
    expected: dict[Path, Path] = {}
    for defect_dir in _subdirs(test_dir):
        defect = defect_dir.name
        images = list_images(defect_dir)
        if defect == GOOD:
            test += [Sample(p, NORMAL, GOOD, None, name, "test") for p in images]
            continue
        masks = _mask_index(ground_truth / defect)
        for path in images:
            mask = masks.get(path.stem)
            if mask is None:
                expected[path] = ground_truth / defect / f"{path.stem}_mask.png"
            test.append(Sample(path, ANOMALOUS, defect, mask, name, "test"))
    if not test:
        raise DatasetError(f"{test_dir}: no test images in category {name!r} (expected test/<defect>/*.png)")
    _check_masks(test, expected, str(ground_truth))
    return Category(name, folder, train, test)


# --------------------------------------------------------------------------- VisA


def read_visa(root: str | Path, split_csv: str | Path | None = None, categories: Iterable[str] | str | None = None) -> list[Category]:
    """Read VisA from its split CSV (columns ``object,split,label,image,mask``).

    ``label`` is ``normal`` or ``anomaly``, ``split`` is ``train`` or ``test``, ``image``
    and ``mask`` are relative to ``root`` (``mask`` empty for normal images). The default
    CSV is ``<root>/split_csv/1cls.csv``. Categories are sorted by name; the CSV's row order
    is kept inside each split. Anomalous samples get the defect name ``"anomaly"``.
    """
    root = _require_dir(Path(root), "VisA dataset folder")
    csv_path = Path(split_csv) if split_csv is not None else root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: VisA split CSV not found")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [column.strip() for column in (reader.fieldnames or [])]
            missing = [column for column in VISA_COLUMNS if column not in header]
            if missing:
                raise DatasetError(f"{csv_path}: split CSV lacks column(s) {', '.join(missing)} (has: {', '.join(header) or 'nothing'})")
            rows = [(number, {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}) for number, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read split CSV: {exc}") from exc
    rows = [(number, row) for number, row in rows if any(row.values())]
    if not rows:
        raise DatasetError(f"{csv_path}: split CSV has no rows")

    available = sorted({row["object"] for _, row in rows if row["object"]})
    names = _select(available, categories, csv_path)
    found: dict[str, Category] = {name: Category(name, root / name) for name in names}
    expected: dict[Path, Path] = {}
    for number, row in rows:
        where = f"{csv_path}, line {number}"
        name = row["object"]
        if not name:
            raise DatasetError(f"{where}: empty 'object'")
        if name not in found:
            continue
        split = row["split"].lower()
        if split not in ("train", "test"):
            raise DatasetError(f"{where}: split must be 'train' or 'test', got {row['split']!r}")
        label_text = row["label"].lower()
        if label_text not in ("normal", "anomaly"):
            raise DatasetError(f"{where}: label must be 'normal' or 'anomaly', got {row['label']!r}")
        if not row["image"]:
            raise DatasetError(f"{where}: empty 'image'")
        image = root / row["image"]
        if not is_image_file(image):
            raise DatasetError(f"{where}: {row['image']!r} is not an image file name")
        if not image.is_file():
            raise DatasetError(f"{image}: image listed in {where} not found")
        label = ANOMALOUS if label_text == "anomaly" else NORMAL
        mask: Path | None = None
        if label == ANOMALOUS and row["mask"]:
            mask = root / row["mask"]
            if not mask.is_file():
                raise DatasetError(f"{mask}: mask listed in {where} not found")
        sample = Sample(image, label, "anomaly" if label == ANOMALOUS else GOOD, mask, name, split)
        (found[name].train if split == "train" else found[name].test).append(sample)
    for category in found.values():
        if not category.train:
            raise DatasetError(f"{csv_path}: category {category.name!r} has no training images")
        if not category.test:
            raise DatasetError(f"{csv_path}: category {category.name!r} has no test images")
        _check_masks(category.test, expected, f"the 'mask' column of {csv_path}")
    return [found[name] for name in names]


# --------------------------------------------------------------------------- plain folders


def read_folder(
    normal_dir: str | Path | None,
    abnormal_dir: str | Path | None = None,
    mask_dir: str | Path | None = None,
    name: str = "folder",
    train_dir: str | Path | None = None,
) -> Category:
    """Read a plain folder layout as one category named ``name``.

    * ``normal_dir``: normal images, used as **test** normals (may be ``None``).
    * ``abnormal_dir``: anomalous test images; images directly inside get the defect name
      ``"anomaly"``, images in subfolders get the subfolder's name as defect.
    * ``mask_dir``: masks matched by stem (``<stem>_mask.<ext>`` or ``<stem>.<ext>``), looked
      up in ``mask_dir/<defect>/`` first, then ``mask_dir/``. When given, every anomalous
      image must have a mask.
    * ``train_dir``: normal training images (few-shot references or one-class training);
      without it ``train`` is empty (zero-shot use).
    """
    normal = _require_dir(Path(normal_dir), "folder of normal images") if normal_dir is not None else None
    abnormal = _require_dir(Path(abnormal_dir), "folder of anomalous images") if abnormal_dir is not None else None
    masks_root = _require_dir(Path(mask_dir), "mask folder") if mask_dir is not None else None
    train_root = _require_dir(Path(train_dir), "folder of training images") if train_dir is not None else None
    if mask_dir is not None and abnormal is None:
        raise DatasetError(f"{mask_dir}: a mask folder needs a folder of anomalous images (abnormal_dir)")
    folders = [p for p in (normal, abnormal, train_root) if p is not None]
    if not folders:
        raise DatasetError("read_folder needs at least a folder of normal or anomalous images")

    test: list[Sample] = []
    if normal is not None:
        test += [Sample(p, NORMAL, GOOD, None, name, "test") for p in list_images(normal)]
    expected: dict[Path, Path] = {}
    if abnormal is not None:
        groups = [("anomaly", abnormal)] + [(d.name, d) for d in _subdirs(abnormal)]
        found_any = False
        for defect, folder in groups:
            images = list_images(folder)
            found_any = found_any or bool(images)
            if not images:
                continue
            lookups = [_mask_index(masks_root / defect), _mask_index(masks_root)] if masks_root is not None else []
            for path in images:
                mask = next((index[path.stem] for index in lookups if path.stem in index), None)
                if mask is None and masks_root is not None:
                    expected[path] = masks_root / f"{path.stem}_mask.png"
                test.append(Sample(path, ANOMALOUS, defect, mask, name, "test"))
        if not found_any:
            raise DatasetError(f"{abnormal}: no anomalous images found")
    if normal is not None and not any(s.label == NORMAL for s in test):
        raise DatasetError(f"{normal}: no normal images found")
    if masks_root is not None:
        _check_masks(test, expected, str(masks_root), required=True)

    train: list[Sample] = []
    if train_root is not None:
        train = [Sample(p, NORMAL, GOOD, None, name, "train") for p in list_images(train_root)]
        if not train:
            raise DatasetError(f"{train_root}: no training images found")
    try:
        root = Path(os.path.commonpath([str(p.resolve()) for p in folders]))
    except ValueError:  # folders on different drives
        root = folders[0]
    return Category(name, root, train, test)
