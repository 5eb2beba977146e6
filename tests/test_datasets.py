"""Dataset readers on tiny datasets built in tmp_path, and every error they raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from myriad.datasets import Category, Sample, load_mask, read_folder, read_mvtec, read_visa
from myriad.errors import DatasetError

SIZE = 32


def _image(path: Path, value: int = 128, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int] = (4, 4, 12, 12), size: tuple[int, int] = (SIZE, SIZE), mode: str = "L") -> Path:
    """Binary mask (255 inside ``box`` = top, left, bottom, right) of ``size`` = (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    top, left, bottom, right = box
    arr[top:bottom, left:right] = 255
    Image.fromarray(arr).convert(mode).save(path)
    return path


def _mvtec_category(folder: Path, masks: bool = True) -> Path:
    for i in range(3):
        _image(folder / "train" / "good" / f"{i:03d}.png")
    _image(folder / "test" / "good" / "000.png")
    for defect in ("crack", "scratch"):
        for i in range(2):
            _image(folder / "test" / defect / f"{i:03d}.png", 200)
            if masks:
                _mask(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return folder


@pytest.fixture
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    _mvtec_category(root / "bottle")
    _mvtec_category(root / "cable")
    (root / "license.txt").write_text("not a category")
    (root / "docs").mkdir()  # a folder without train/test is not a category
    return root


# --------------------------------------------------------------------------- MVTec


def test_read_mvtec(mvtec: Path) -> None:
    categories = read_mvtec(mvtec)
    assert [c.name for c in categories] == ["bottle", "cable"]
    bottle = categories[0]
    assert isinstance(bottle, Category) and bottle.root == mvtec / "bottle"
    assert len(bottle.train) == 3 and all(s.label == 0 and s.split == "train" and s.defect == "good" for s in bottle.train)
    assert [s.defect for s in bottle.test] == ["crack", "crack", "good", "scratch", "scratch"]
    assert bottle.test_labels == [1, 1, 0, 1, 1]
    assert bottle.defects == ["crack", "scratch"]
    assert bottle.has_masks
    crack = bottle.test[0]
    assert crack == Sample(mvtec / "bottle/test/crack/000.png", 1, "crack", mvtec / "bottle/ground_truth/crack/000_mask.png", "bottle", "test")
    assert bottle.test[2].mask_path is None
    assert "bottle" in repr(bottle)


def test_read_mvtec_selects_categories(mvtec: Path) -> None:
    assert [c.name for c in read_mvtec(mvtec, ["cable"])] == ["cable"]
    assert [c.name for c in read_mvtec(mvtec, "bottle")] == ["bottle"]
    with pytest.raises(DatasetError, match=r"unknown category 'screw'.*available: bottle, cable"):
        read_mvtec(mvtec, ["screw"])


def test_read_mvtec_single_category_root(mvtec: Path) -> None:
    (category,) = read_mvtec(mvtec / "bottle")
    assert category.name == "bottle" and len(category.test) == 5
    with pytest.raises(DatasetError, match="unknown category 'cable'"):
        read_mvtec(mvtec / "bottle", ["cable"])


def test_read_mvtec_without_masks(tmp_path: Path) -> None:
    (category,) = read_mvtec(_mvtec_category(tmp_path / "wood", masks=False))
    assert not category.has_masks
    assert all(s.mask_path is None for s in category.test)
    with pytest.raises(DatasetError, match="no ground-truth mask"):
        load_mask(category.test[0], (SIZE, SIZE))


def test_read_mvtec_plain_stem_masks(tmp_path: Path) -> None:
    folder = _mvtec_category(tmp_path / "tile", masks=False)
    for defect in ("crack", "scratch"):
        for i in range(2):
            _mask(folder / "ground_truth" / defect / f"{i:03d}.png")
    (category,) = read_mvtec(folder)
    assert category.has_masks and category.test[0].mask_path == folder / "ground_truth/crack/000.png"


def test_mvtec_errors(tmp_path: Path, mvtec: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere.*not found"):
        read_mvtec(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        read_mvtec(tmp_path / "file.txt")
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetError, match="empty: no categories found"):
        read_mvtec(tmp_path / "empty")


def test_mvtec_category_errors(tmp_path: Path) -> None:
    no_train = tmp_path / "a" / "cat"
    _image(no_train / "test" / "good" / "000.png")
    with pytest.raises(DatasetError, match=r"train[/\\]good.*not found"):
        read_mvtec(tmp_path / "a")

    empty_train = tmp_path / "b" / "cat"
    (empty_train / "train" / "good").mkdir(parents=True)
    _image(empty_train / "test" / "good" / "000.png")
    with pytest.raises(DatasetError, match="no training images in category 'cat'"):
        read_mvtec(tmp_path / "b")

    no_test = tmp_path / "c" / "cat"
    _image(no_test / "train" / "good" / "000.png")
    with pytest.raises(DatasetError, match=r"test: test folder of category 'cat' not found"):
        read_mvtec(tmp_path / "c")

    empty_test = tmp_path / "d" / "cat"
    _image(empty_test / "train" / "good" / "000.png")
    (empty_test / "test" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no test images"):
        read_mvtec(tmp_path / "d")

    # A named category folder that exists but is malformed gets the precise error.
    named = tmp_path / "e"
    _mvtec_category(named / "ok")
    (named / "broken").mkdir()
    with pytest.raises(DatasetError, match="broken.*train"):
        read_mvtec(named, ["broken"])


def test_mvtec_partial_masks_name_the_file(tmp_path: Path) -> None:
    folder = _mvtec_category(tmp_path / "cat")
    (folder / "ground_truth" / "scratch" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"scratch[/\\]001\.png: ground-truth mask missing.*001_mask\.png"):
        read_mvtec(folder)


# --------------------------------------------------------------------------- masks


def test_load_mask(tmp_path: Path) -> None:
    (category,) = read_mvtec(_mvtec_category(tmp_path / "cat"))
    normal = category.test[2]
    assert normal.label == 0
    zeros = category.load_mask(normal, (8, 10))
    assert zeros.shape == (8, 10) and zeros.dtype == bool and not zeros.any()
    mask = load_mask(category.test[0])  # shape read from the image file
    assert mask.dtype == bool and mask.shape == (SIZE, SIZE)
    assert mask[4:12, 4:12].all() and mask.sum() == 64
    small = load_mask(category.test[0], (16, 16))  # nearest-neighbour resize
    assert small.shape == (16, 16) and small[2:6, 2:6].all() and small.sum() == 16


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "P", "I;16"])
def test_load_mask_modes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "m.png"
    if mode == "I;16":
        arr = np.zeros((SIZE, SIZE), dtype=np.uint16)
        arr[0:2, 0:3] = 1  # values 0/1 in 16 bits must not be rounded away
        Image.fromarray(arr).save(path)
    else:
        _mask(path, box=(0, 0, 2, 3), mode=mode)
    sample = Sample(tmp_path / "img.png", 1, "x", path, "c", "test")
    mask = load_mask(sample, (SIZE, SIZE))
    assert mask.sum() == 6 and mask[0:2, 0:3].all()


def test_load_mask_errors(tmp_path: Path) -> None:
    sample = Sample(tmp_path / "img.png", 1, "x", tmp_path / "gone.png", "c", "test")
    with pytest.raises(DatasetError, match="gone.png: mask file not found"):
        load_mask(sample, (4, 4))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png: not a readable mask"):
        load_mask(Sample(tmp_path / "img.png", 1, "x", tmp_path / "bad.png", "c", "test"), (4, 4))
    with pytest.raises(DatasetError, match="img.png: image not found"):
        load_mask(Sample(tmp_path / "img.png", 0, "good", None, "c", "test"))


def _png_header(width: int, height: int) -> bytes:
    """A few bytes of PNG declaring ``width x height`` (8-bit grey), with no real pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_load_mask_leaves_pillows_global_pixel_limit_alone(tmp_path: Path, monkeypatch) -> None:
    """Pillow's process-wide ``MAX_IMAGE_PIXELS`` is never changed, not even while a mask decodes."""
    path = _mask(tmp_path / "m.png")
    sample = Sample(tmp_path / "img.png", 1, "x", path, "c", "test")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12345)  # a value no code sets on purpose
    seen = []
    original = Image.open

    def spy(*args, **kwargs):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return original(*args, **kwargs)

    monkeypatch.setattr(Image, "open", spy)
    assert load_mask(sample, (SIZE, SIZE)).sum() == 64
    assert seen and set(seen) == {12345} and Image.MAX_IMAGE_PIXELS == 12345


def test_load_mask_refuses_a_huge_mask_from_its_header(tmp_path: Path, monkeypatch) -> None:
    from myriad.images import MAX_PIXELS

    huge = tmp_path / "huge_mask.png"
    huge.write_bytes(_png_header(9000, 9000))  # 81 M pixels declared in under 200 bytes
    assert 9000 * 9000 > MAX_PIXELS
    sample = Sample(tmp_path / "img.png", 1, "x", huge, "c", "test")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(DatasetError, match=r"huge_mask\.png: not a readable mask image: image too large: 9000 x 9000"):
        load_mask(sample, (4, 4))
    assert decoded == []  # refused from the header: no pixel was decoded
    monkeypatch.undo()
    small = tmp_path / "small.png"
    _mask(small, size=(40, 40))
    with pytest.raises(DatasetError, match=r"small\.png: .*40 x 40 = 1600 pixels; the limit is 1000"):
        load_mask(Sample(tmp_path / "img.png", 1, "x", small, "c", "test"), (4, 4), max_pixels=1000)
    eps = tmp_path / "mask.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n")
    with pytest.raises(DatasetError, match=r"mask\.png: not a readable mask image: not a readable image"):
        load_mask(Sample(tmp_path / "img.png", 1, "x", eps, "c", "test"), (4, 4))  # never handed to Ghostscript


# --------------------------------------------------------------------------- VisA


VISA_HEADER = "object,split,label,image,mask\n"


def _visa(root: Path, rows: list[str] | None = None, header: str = VISA_HEADER, csv_name: str = "1cls.csv") -> Path:
    for obj in ("candle", "pcb1"):
        for i in range(2):
            _image(root / obj / "Data/Images/Normal" / f"{i:03d}.JPG")
        _image(root / obj / "Data/Images/Anomaly/000.JPG", 200)
        _mask(root / obj / "Data/Masks/Anomaly/000.png")
    if rows is None:
        rows = []
        for obj in ("pcb1", "candle"):
            rows += [
                f"{obj},train,normal,{obj}/Data/Images/Normal/000.JPG,",
                f"{obj},test,normal,{obj}/Data/Images/Normal/001.JPG,",
                f"{obj},test,anomaly,{obj}/Data/Images/Anomaly/000.JPG,{obj}/Data/Masks/Anomaly/000.png",
            ]
    path = root / "split_csv" / csv_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n".join(rows) + "\n")
    return root


def test_read_visa(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa")
    categories = read_visa(root)
    assert [c.name for c in categories] == ["candle", "pcb1"]
    candle = categories[0]
    assert candle.root == root / "candle"
    assert [s.path.name for s in candle.train] == ["000.JPG"] and candle.train[0].split == "train"
    assert candle.test_labels == [0, 1]
    assert candle.test[1] == Sample(root / "candle/Data/Images/Anomaly/000.JPG", 1, "anomaly", root / "candle/Data/Masks/Anomaly/000.png", "candle", "test")
    assert candle.test[0].defect == "good" and candle.has_masks
    assert load_mask(candle.test[1]).sum() == 64
    assert [c.name for c in read_visa(root, categories=["pcb1"])] == ["pcb1"]
    with pytest.raises(DatasetError, match="unknown category 'fryum'.*available: candle, pcb1"):
        read_visa(root, categories=["fryum"])


def test_read_visa_other_csv(tmp_path: Path) -> None:
    root = _visa(tmp_path / "visa", csv_name="2cls_fewshot.csv")
    (category, _) = read_visa(root, split_csv=root / "split_csv" / "2cls_fewshot.csv")
    assert len(category.test) == 2


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("object,split,image\n", ["candle,train,candle/Data/Images/Normal/000.JPG"], "lacks column.*label, mask"),
        (VISA_HEADER, [], "no rows"),
        (VISA_HEADER, ["candle,val,normal,candle/Data/Images/Normal/000.JPG,"], "line 2: split must be"),
        (VISA_HEADER, ["candle,train,good,candle/Data/Images/Normal/000.JPG,"], "line 2: label must be"),
        (VISA_HEADER, ["candle,train,normal,candle/missing.JPG,"], r"missing\.JPG: image listed in .*line 2 not found"),
        (VISA_HEADER, ["candle,train,normal,candle/notes.txt,"], "not an image file"),
        (
            VISA_HEADER,
            ["candle,train,normal,candle/Data/Images/Normal/000.JPG,", "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/nomask.png"],
            r"nomask\.png: mask listed in .*line 3 not found",
        ),
        (VISA_HEADER, ["candle,test,normal,candle/Data/Images/Normal/000.JPG,"], "'candle' has no training images"),
        (VISA_HEADER, ["candle,train,normal,candle/Data/Images/Normal/000.JPG,"], "'candle' has no test images"),
        (
            VISA_HEADER,
            [
                "candle,train,normal,candle/Data/Images/Normal/000.JPG,",
                "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
                "candle,test,anomaly,candle/Data/Images/Normal/001.JPG,",
            ],
            r"001\.JPG: ground-truth mask missing",
        ),
    ],
)
def test_visa_errors(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    root = _visa(tmp_path / "visa", rows=rows, header=header)
    with pytest.raises(DatasetError, match=message):
        read_visa(root)


def test_visa_missing_root_and_csv(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="VisA dataset folder not found"):
        read_visa(tmp_path / "nowhere")
    (tmp_path / "visa").mkdir()
    with pytest.raises(DatasetError, match=r"1cls\.csv: VisA split CSV not found"):
        read_visa(tmp_path / "visa")


# --------------------------------------------------------------------------- plain folders


def _folder(root: Path) -> Path:
    for i in range(2):
        _image(root / "normal" / f"n{i}.png")
        _image(root / "train" / f"t{i}.png")
    _image(root / "abnormal" / "a0.png", 200)
    _image(root / "abnormal" / "dent" / "d0.png", 200)
    _mask(root / "masks" / "a0_mask.png")
    _mask(root / "masks" / "dent" / "d0.png")
    return root


def test_read_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    category = read_folder(root / "normal", root / "abnormal", root / "masks", name="parts", train_dir=root / "train")
    assert category.name == "parts" and category.root == root.resolve()
    assert [s.path.name for s in category.train] == ["t0.png", "t1.png"]
    assert [(s.path.name, s.label, s.defect) for s in category.test] == [
        ("n0.png", 0, "good"),
        ("n1.png", 0, "good"),
        ("a0.png", 1, "anomaly"),
        ("d0.png", 1, "dent"),
    ]
    assert category.test[2].mask_path == root / "masks" / "a0_mask.png"
    assert category.test[3].mask_path == root / "masks" / "dent" / "d0.png"
    assert category.has_masks and all(s.category == "parts" for s in category.test)


def test_read_folder_without_train_or_masks(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    category = read_folder(root / "normal", root / "abnormal")
    assert category.train == [] and not category.has_masks and len(category.test) == 4
    normals_only = read_folder(root / "normal")
    assert normals_only.test_labels == [0, 0] and normals_only.root == (root / "normal").resolve()


def test_folder_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    with pytest.raises(DatasetError, match="gone: folder of normal images not found"):
        read_folder(root / "gone")
    with pytest.raises(DatasetError, match="folder of anomalous images not found"):
        read_folder(root / "normal", root / "gone")
    with pytest.raises(DatasetError, match="mask folder not found"):
        read_folder(root / "normal", root / "abnormal", root / "gone")
    with pytest.raises(DatasetError, match="needs a folder of anomalous images"):
        read_folder(root / "normal", mask_dir=root / "masks")
    with pytest.raises(DatasetError, match="at least a folder"):
        read_folder(None)
    (root / "void").mkdir()
    with pytest.raises(DatasetError, match="void: no normal images"):
        read_folder(root / "void")
    with pytest.raises(DatasetError, match="void: no anomalous images"):
        read_folder(root / "normal", root / "void")
    with pytest.raises(DatasetError, match="void: no training images"):
        read_folder(root / "normal", train_dir=root / "void")
    (root / "masks" / "dent" / "d0.png").unlink()
    with pytest.raises(DatasetError, match=r"d0\.png: ground-truth mask missing.*d0_mask\.png"):
        read_folder(root / "normal", root / "abnormal", root / "masks")
