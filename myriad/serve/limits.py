"""Request limits and per-request temporary files.

Every upload is copied, in chunks and under a byte limit, into a temporary directory that
belongs to one request and is deleted when the request ends; its header is checked against the
dimension limits (and the format against :data:`myriad.images.IMAGE_FORMATS`) before any pixel
is decoded, and the pixels of all images of one request against a budget (:class:`PixelBudget`):
a small compressed upload cannot make the server decode gigabytes. Each file is opened once and
decoded from that open file (:func:`decode_checked_image`); files of a server-side folder are
opened without blocking and refused unless they are regular files (:func:`open_regular_file`).
The body of each route is capped while it streams in (:mod:`myriad.serve.bodies`). Questions,
conversations and answers are bounded too, so that no request holds the model lock for long.
Errors name the file and the limit.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

from myriad.errors import ImageError
from myriad.serve.errors import BadImageError, ForbiddenError, TooLargeError

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
    #: decoded pixels of all the images of one request (uploads or a server-side folder) together
    max_request_pixels: int = 4096 * 4096
    #: characters of a question (``ask=`` of an inspection, a follow-up)
    max_question_chars: int = 500
    #: follow-up questions per session
    max_turns: int = 8
    #: new tokens per answer
    max_new_tokens: int = 64
    #: seconds of decoding per answer (the answer is cut there)
    max_generation_s: float = 20.0
    #: seconds the server waits for the next piece of a request body before answering 408
    body_timeout_s: float = 30.0
    #: seconds a whole request body may take to arrive (408 past it, however steadily it trickles)
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_files", "max_folder_images", "max_side", "max_pixels", "min_side", "max_body_bytes",
                     "max_request_pixels", "max_question_chars", "max_turns", "max_new_tokens", "max_generation_s",
                     "body_timeout_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")

    @property
    def max_request_bytes(self) -> int:
        """A whole request body: every file at its limit plus 1 MiB for the form fields, at most ``max_body_bytes``."""
        return min(self.max_upload_bytes * self.max_files + (1 << 20), self.max_body_bytes)

    @property
    def max_one_image_request_bytes(self) -> int:
        """A request of one image (an inspection): the file's limit plus :data:`FORM_ALLOWANCE`, at most ``max_body_bytes``."""
        return min(self.max_upload_bytes + FORM_ALLOWANCE, self.max_body_bytes)


#: Bytes a multipart body may hold beyond its files: form fields, part headers and boundaries.
FORM_ALLOWANCE = 64 * 1024


class PixelBudget:
    """The decoded pixels of one request, counted image by image against ``limits.max_request_pixels``.

    Each image is counted from its header, before it is decoded: past the budget the request is
    refused (413) naming the image and the limit, with at most the budget's pixels decoded so far.
    Not shared between threads (one per request).
    """

    def __init__(self, limits: "Limits") -> None:
        self.limit = limits.max_request_pixels
        self.used = 0

    def take(self, width: int, height: int, name: str) -> None:
        """Count a ``width x height`` image, or raise :class:`TooLargeError` when it would pass the budget."""
        if self.used + width * height > self.limit:
            raise TooLargeError(
                f"{name}: {width} x {height} pixels would bring this request to {self.used + width * height} decoded "
                f"pixels; the limit is {self.limit} pixels per request (--max-request-pixels)"
            )
        self.used += width * height


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


def check_count(count: int, what: str, limits: Limits) -> None:
    """Refuse more than ``max_files`` images in one request (HTTP 413)."""
    if count > limits.max_files:
        raise TooLargeError(f"{count} {what}: the limit is {limits.max_files} images per request")


def open_regular_file(path: Path, name: str, limits: Limits) -> BinaryIO:
    """Open ``path`` once for reading, without blocking and without following a last-component link, and refuse
    (before reading a byte) anything but a regular file within the byte limit.

    A FIFO, device or socket swapped in for an image cannot hang the request: the open does not
    block and the check is made on the opened file (``fstat``), never on the name again.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ForbiddenError(f"{name}: cannot be opened as a file under the server's data root ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadImageError(f"{name}: not a regular file")
        if info.st_size > limits.max_upload_bytes:
            raise TooLargeError(
                f"{name}: {human_bytes(info.st_size)} is larger than the limit of {human_bytes(limits.max_upload_bytes)} per file"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


#: Longest image error a client is sent (the file's name, what is wrong, and Pillow's words, cut).
IMAGE_ERROR_CHARS = 300


def load_checked_image(path: Path, name: str, limits: Limits, budget: PixelBudget | None = None) -> "np.ndarray":
    """Open ``path`` (a file of this request's own temporary folder) once and decode it with :func:`decode_checked_image`."""
    with open(path, "rb") as stream:
        return decode_checked_image(stream, name, limits, budget)


def decode_checked_image(stream: BinaryIO, name: str, limits: Limits, budget: PixelBudget | None = None) -> "np.ndarray":
    """Read an open image file as RGB uint8 after checking its format and dimensions from the header.

    Raises :class:`BadImageError` (HTTP 422) naming ``name`` when the file is not a readable
    image of an accepted format or its size is outside the limits, and :class:`TooLargeError`
    (413) when its pixels would pass the request's ``budget``; no pixel is decoded before.
    """
    from myriad.images import decode_rgb, open_checked

    try:
        with open_checked(stream, limits.max_pixels, name) as img:
            width, height = img.size
            if max(width, height) > limits.max_side:
                raise BadImageError(f"{name}: the image is {width} x {height} pixels; the limit is {limits.max_side} pixels per side")
            if min(width, height) < limits.min_side:
                raise BadImageError(f"{name}: the image is {width} x {height} pixels; each side needs at least {limits.min_side}")
            if budget is not None:
                budget.take(width, height, name)
            return decode_rgb(img, name)
    except ImageError as exc:  # Pillow's own words may be long: the client gets them cut
        raise BadImageError(clip(str(exc), IMAGE_ERROR_CHARS)) from None
