"""Image loading: odd modes become RGB uint8; bad files give errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from myriad.errors import ImageError
from myriad.images import as_rgb, check_batch, list_images, load_image, resize_map, to_tensor


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(np.full((6, 5), 77, np.uint8), "L"),
        lambda: Image.fromarray(np.full((6, 5, 4), [10, 20, 30, 255], np.uint8), "RGBA"),
        lambda: Image.fromarray(np.full((6, 5), 40000, np.uint16)),
        lambda: Image.fromarray(np.full((6, 5, 3), 9, np.uint8)).convert("P"),
        lambda: Image.fromarray(np.full((6, 5), 1, np.uint8) * 255).convert("1"),
    ],
    ids=["gray", "rgba", "16bit", "palette", "bilevel"],
)
def test_odd_modes_load_as_rgb_uint8(tmp_path, make):
    path = tmp_path / "img.png"
    make().save(path)
    arr = load_image(path)
    assert arr.shape == (6, 5, 3) and arr.dtype == np.uint8


def test_16bit_is_rescaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(path)
    assert load_image(path).min() == 255
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(path)
    assert 126 <= load_image(path).max() <= 129


def test_rgba_transparent_becomes_black(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(np.full((3, 3, 4), [255, 255, 255, 0], np.uint8), "RGBA").save(path)
    assert load_image(path).max() == 0


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError, match="broken.png"):
        load_image(bad)
    with pytest.raises(ImageError, match="missing.png: file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_truncated_jpeg_is_an_error(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path)


def test_huge_image_is_refused(tmp_path, monkeypatch):
    import myriad.images as images

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="too large"):
        load_image(path)


def test_as_rgb_and_check_batch():
    assert as_rgb(np.zeros((4, 4), np.float32)).shape == (4, 4, 3)
    assert as_rgb(np.ones((4, 4, 1), np.float64)).max() == 255
    with pytest.raises(ImageError, match="shape"):
        as_rgb(np.zeros((4, 4, 2)))
    with pytest.raises(ImageError, match="NaN"):
        as_rgb(np.full((2, 2, 3), np.nan))
    with pytest.raises(ImageError, match="empty"):
        check_batch([])


def test_list_images_skips_non_images(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]


def test_to_tensor_normalisations_and_crop():
    img = np.full((10, 20, 3), 255, np.uint8)
    half = to_tensor([img], (8, 16), normalisation="half")
    assert half.shape == (1, 3, 8, 16) and float(half.min()) == pytest.approx(1.0)
    cropped = to_tensor([img], 16, normalisation="imagenet", crop=8)
    assert cropped.shape == (1, 3, 8, 8)
    clip = to_tensor([np.zeros_like(img)], 4, normalisation="clip")
    assert float(clip[0, 0, 0, 0]) == pytest.approx(-0.48145466 / 0.26862954, rel=1e-5)


def test_resize_map():
    out = resize_map(np.ones((4, 4), np.float32), 9, 7)
    assert out.shape == (9, 7) and out.dtype == np.float32 and np.allclose(out, 1)
