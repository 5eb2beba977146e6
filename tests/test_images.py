"""Image loading: odd modes become RGB uint8; bad files give errors naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from myriad.errors import ImageError
from myriad.images import IMAGE_FORMATS, as_rgb, check_batch, list_images, load_image, read_image_size, resize_map, to_tensor


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


def test_pixel_cap_is_checked_from_the_header_before_decoding(tmp_path):
    from serve.crafted import png_header

    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(16500, 16500))  # 33 KB declaring 272 M pixels
    assert path.stat().st_size < 40_000
    with pytest.raises(ImageError, match=r"bomb.png: image too large.*limit is 67108864 pixels"):
        load_image(path)
    medium = tmp_path / "medium.png"
    medium.write_bytes(png_header(9000, 8000))  # above our limit, below Pillow's own
    with pytest.raises(ImageError, match=r"medium.png: image too large: 9000 x 8000 = 72000000 pixels"):
        load_image(medium)
    with pytest.raises(ImageError, match="image too large"):
        read_image_size(path)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(small)
    assert read_image_size(small) == (20, 10) and load_image(small).shape == (10, 20, 3)
    with pytest.raises(ImageError, match="limit is 100 pixels"):
        load_image(small, max_pixels=100)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillow_global_limit_is_never_touched_even_under_threads(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from serve.crafted import png_header

    sentinel = 123_456_789
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", sentinel)
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(ok)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(12000, 12000))
    seen = set()

    def one(path):
        seen.add(Image.MAX_IMAGE_PIXELS)
        try:
            return load_image(path).shape
        except ImageError:
            return "refused"
        finally:
            seen.add(Image.MAX_IMAGE_PIXELS)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, [ok, bomb] * 20))
    assert results == [(32, 32, 3), "refused"] * 20
    assert seen == {sentinel} and Image.MAX_IMAGE_PIXELS == sentinel


@pytest.mark.parametrize("name", ["drawing.eps", "drawing.png"])
def test_only_documented_raster_formats_are_opened(tmp_path, name, monkeypatch):
    from PIL import EpsImagePlugin

    from serve.crafted import eps_file

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    path = tmp_path / name
    path.write_bytes(eps_file())
    with pytest.raises(ImageError, match=f"{name}: not a readable image .*accepted: PNG, JPEG, BMP, TIFF, WEBP"):
        load_image(path)
    assert calls == []
    assert set(IMAGE_FORMATS) == {"PNG", "JPEG", "BMP", "TIFF", "WEBP"}
