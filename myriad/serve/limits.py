"""Request limits and per-request temporary files.

Every upload is copied, in chunks and under a byte limit, into a temporary directory that
belongs to one request and is deleted when the request ends; its header is checked against the
dimension limits (and the format against :data:`myriad.images.IMAGE_FORMATS`) before any pixel
is decoded. The whole body is also capped while it streams in
(:class:`myriad.serve.security.SecurityMiddleware`). Questions, conversations and answers are
bounded too, so that no request holds the model lock for long. Errors name the file and the limit.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from myriad.errors import ImageError
from myriad.serve.errors import BadImageError, TooLargeError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

_CHUNK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Limits:
    """What one request may upload."""

    #: bytes per uploaded file
    max_upload_bytes: int = 20 * 1024 * 1024
    #: normal images per uploaded profile (one request)
    max_files: int = 64
    #: normal images per profile read from a server-side folder (the operator's data; a bound on memory)
    max_folder_images: int = 10_000
    #: pixels per image side
    max_side: int = 4096
    #: pixels per image (width x height)
    max_pixels: int = 4096 * 4096
    #: smallest accepted side, in pixels
    min_side: int = 8
    #: a whole request body, whatever the files add up to
    max_body_bytes: int = 256 * 1024 * 1024
    #: characters of a question (``ask=`` of an inspection, a follow-up)
    max_question_chars: int = 500
    #: follow-up questions per session
    max_turns: int = 8
    #: new tokens per answer
    max_new_tokens: int = 64
    #: seconds of decoding per answer (the answer is cut there)
    max_generation_s: float = 20.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_files", "max_folder_images", "max_side", "max_pixels", "min_side", "max_body_bytes",
                     "max_question_chars", "max_turns", "max_new_tokens", "max_generation_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")

    @property
    def max_request_bytes(self) -> int:
        """A whole request body: every file at its limit plus 1 MiB for the form fields, at most ``max_body_bytes``."""
        return min(self.max_upload_bytes * self.max_files + (1 << 20), self.max_body_bytes)


def human_bytes(count: int) -> str:
    """``count`` bytes in a short human unit (``512 B``, ``1.5 KiB``, ``20 MiB``)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" or value == int(value) else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def display_name(name: str | None, index: int = 0) -> str:
    """The name an upload is reported under: its base name (printable, at most 100 characters), or ``upload-<index>``."""
    base = "".join(c for c in Path((name or "").replace("\0", "")).name if c.isprintable()).strip()
    return clip(base, 100) if base else f"upload-{index}"


def clip(text: str, length: int = 80) -> str:
    """``text`` cut to ``length`` characters (with ``...``), so errors never echo a huge input back."""
    return text if len(text) <= length else text[: length - 3] + "..."


def safe_filename(name: str | None, index: int) -> str:
    """A file name for an upload that cannot escape its folder or collide with another upload."""
    base = _UNSAFE.sub("_", display_name(name, index)).strip("._") or "upload"
    return f"{index:03d}-{base[:100]}"


@contextlib.contextmanager
def request_tempdir() -> Iterator[Path]:
    """A fresh temporary directory for one request, removed (with everything in it) at exit."""
    with tempfile.TemporaryDirectory(prefix="myriad-serve-") as folder:
        yield Path(folder)


def save_upload(stream: BinaryIO, name: str | None, folder: Path, index: int, limits: Limits) -> Path:
    """Copy an uploaded file into ``folder`` under the byte limit; returns its path.

    Raises :class:`TooLargeError` (HTTP 413) naming the file once the limit is passed.
    """
    shown = display_name(name, index)
    path = folder / safe_filename(name, index)
    written = 0
    with open(path, "wb") as out:
        while chunk := stream.read(_CHUNK):
            written += len(chunk)
            if written > limits.max_upload_bytes:
                raise TooLargeError(
                    f"{shown}: the upload is larger than the limit of {human_bytes(limits.max_upload_bytes)} per file"
                )
            out.write(chunk)
    if written == 0:
        raise BadImageError(f"{shown}: the upload is empty")
    return path


def check_file_size(path: Path, name: str, limits: Limits) -> None:
    """Refuse a file on disk (a server-side folder, a page upload) over the byte limit."""
    size = path.stat().st_size
    if size > limits.max_upload_bytes:
        raise TooLargeError(
            f"{name}: {human_bytes(size)} is larger than the limit of {human_bytes(limits.max_upload_bytes)} per file"
        )


def check_count(count: int, what: str, limits: Limits) -> None:
    """Refuse more than ``max_files`` images in one request (HTTP 413)."""
    if count > limits.max_files:
        raise TooLargeError(f"{count} {what}: the limit is {limits.max_files} images per request")


def load_checked_image(path: Path, name: str, limits: Limits) -> "np.ndarray":
    """Read ``path`` as RGB uint8 after checking its format and dimensions from the header.

    Raises :class:`BadImageError` (HTTP 422) naming ``name`` when the file is not a readable
    image of an accepted format or its size is outside the limits; no pixel is decoded before.
    """
    from myriad.images import load_image, read_image_size

    def named(exc: ImageError) -> BadImageError:
        return BadImageError(str(exc).replace(str(path), name))

    try:
        width, height = read_image_size(path, max_pixels=limits.max_pixels)
    except ImageError as exc:
        raise named(exc) from None
    if max(width, height) > limits.max_side:
        raise BadImageError(f"{name}: the image is {width} x {height} pixels; the limit is {limits.max_side} pixels per side")
    if min(width, height) < limits.min_side:
        raise BadImageError(f"{name}: the image is {width} x {height} pixels; each side needs at least {limits.min_side}")
    try:
        return load_image(path, max_pixels=limits.max_pixels)
    except ImageError as exc:
        raise named(exc) from None
