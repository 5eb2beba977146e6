"""Native-resolution scoring: large images are cut into overlapping tiles and the maps stitched back.

An expert resizes what it is given to its input size (512 px for PatchCore); a
2048 px photo squashed to that loses every defect smaller than about eight
pixels. :class:`TiledExpert` wraps any non-transductive expert so that it fits on
the tiles of the normal images and scores each test image tile by tile, at the
photo's own resolution:

- tiles are ``tile x tile`` pixels laid every ``stride`` pixels, the last row and
  column flush with the border (:func:`tile_boxes`), so every pixel is covered;
- the map is the average of the overlapping tile maps (:func:`stitch`), at the
  image's full resolution; the image score is the maximum tile score (a defect
  anywhere makes the image anomalous);
- every image of a run must have the normal images' size (the tile grid is fixed
  at fit time) and be at least one tile large.

:func:`plan_tiling` decides when tiling applies (``tile="auto"``: images whose
shorter side exceeds ``AUTO_FACTOR x`` the default tile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from myriad.errors import ConfigError, ImageError
from myriad.experts import Expert, Prediction

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Tile side in pixels used by ``tile="auto"``: the size the realistic benchmark's crops have (PatchCore enlarges
#: each tile to its 512 px input, as it does a 256 px photo, so small and large images are seen at the same zoom).
DEFAULT_TILE = 256
#: ``tile="auto"`` tiles images whose shorter side is more than this many default tiles.
AUTO_FACTOR = 1.5
#: Default overlap between neighbouring tiles, as a fraction of the tile.
DEFAULT_OVERLAP = 0.25


@dataclass(frozen=True)
class Tiling:
    """Tiles of ``tile`` pixels every ``stride`` pixels, for images of ``height x width``."""

    tile: int
    stride: int
    height: int
    width: int

    @property
    def boxes(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every tile, row by row."""
        return tile_boxes(self.height, self.width, self.tile, self.stride)

    def to_dict(self) -> dict[str, int]:
        """JSON form (saved with a detector)."""
        return {"tile": self.tile, "stride": self.stride, "height": self.height, "width": self.width}


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def tile_boxes(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of ``tile``-pixel tiles every ``stride`` pixels covering an image (last ones flush)."""
    if tile < 1 or stride < 1 or stride > tile:
        raise ConfigError(f"tiling needs 1 <= stride <= tile, got tile={tile}, stride={stride}")
    if height < tile or width < tile:
        raise ImageError(f"a {height} x {width} image is smaller than one {tile} x {tile} tile")
    return [(top, left) for top in _starts(height, tile, stride) for left in _starts(width, tile, stride)]


def split_tiles(image: "np.ndarray", tiling: Tiling) -> list["np.ndarray"]:
    """The tiles of one ``H x W x 3`` image (contiguous copies), in :attr:`Tiling.boxes` order."""
    import numpy as np

    t = tiling.tile
    return [np.ascontiguousarray(image[top : top + t, left : left + t]) for top, left in tiling.boxes]


def stitch(tile_maps: Sequence["np.ndarray"], tiling: Tiling) -> "np.ndarray":
    """Average overlapping ``tile x tile`` maps back into one ``H x W`` float32 map."""
    import numpy as np

    total = np.zeros((tiling.height, tiling.width), dtype=np.float64)
    count = np.zeros_like(total)
    t = tiling.tile
    for (top, left), tile_map in zip(tiling.boxes, tile_maps, strict=True):
        total[top : top + t, left : left + t] += tile_map
        count[top : top + t, left : left + t] += 1.0
    return (total / count).astype(np.float32)


def plan_tiling(
    shape: tuple[int, int], tile: int | str | None = "auto", overlap: float = DEFAULT_OVERLAP
) -> Tiling | None:
    """The tiling for images of ``shape`` (H, W): None (no tiling) or a :class:`Tiling`.

    ``tile``: ``"auto"`` (tile :data:`DEFAULT_TILE` when the shorter side exceeds
    :data:`AUTO_FACTOR` tiles), an int (always tile with that side), or None (never).
    """
    height, width = int(shape[0]), int(shape[1])
    if tile is None or tile == "none":
        return None
    if tile == "auto":
        if min(height, width) <= AUTO_FACTOR * DEFAULT_TILE:
            return None
        tile = DEFAULT_TILE
    if not isinstance(tile, int) or isinstance(tile, bool) or tile < 32:
        raise ConfigError(f"tile must be 'auto', 'none' or a side of at least 32 pixels, got {tile!r}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"tile overlap must be in [0, 1), got {overlap}")
    if height < tile or width < tile:
        raise ImageError(f"a {height} x {width} image is smaller than one {tile} x {tile} tile: lower --tile")
    stride = max(1, int(round(tile * (1.0 - overlap))))
    return Tiling(tile=tile, stride=stride, height=height, width=width)


def check_size(images: Sequence["np.ndarray"], tiling: Tiling, what: str = "image") -> None:
    """Refuse images whose size differs from the tiling's (the grid is fixed at fit time)."""
    for index, image in enumerate(images):
        if image.shape[:2] != (tiling.height, tiling.width):
            error = ImageError(
                f"{what} {index} is {image.shape[0]} x {image.shape[1]} but tiled scoring was fitted on "
                f"{tiling.height} x {tiling.width} images: give images of one size in a run"
            )
            error.index = index  # type: ignore[attr-defined]  # lets callers that know file names name it
            raise error


class TiledExpert(Expert):
    """Any non-transductive expert run tile by tile at native resolution (see the module docstring)."""

    def __init__(self, inner: Expert, tiling: Tiling) -> None:
        if inner.transductive:
            raise ConfigError(
                f"{type(inner).__name__} is transductive (it scores a batch jointly); tiled scoring does not apply to it"
            )
        super().__init__(inner.config, inner.mode)
        self.inner = inner
        self.tiling = tiling

    @property
    def needs_fit(self) -> bool:
        """As the wrapped expert."""
        return self.inner.needs_fit

    def _fit(self, images: list["np.ndarray"]) -> None:
        check_size(images, self.tiling, "normal image")
        self.inner.fit_groups = self._tile_groups(range(len(images)))
        try:
            self.inner.fit([tile for image in images for tile in split_tiles(image, self.tiling)])
        finally:
            self.inner.fit_groups = None  # a hint for this fit only

    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        check_size(images, self.tiling)
        per_image = len(self.tiling.boxes)
        tiles = [tile for image in images for tile in split_tiles(image, self.tiling)]
        preds = self.inner.predict(tiles)
        return [self._stitched(preds[i * per_image : (i + 1) * per_image]) for i in range(len(images))]

    def heldout_predictions(
        self, images: list["np.ndarray"], groups: Sequence[int] | None = None
    ) -> list[Prediction] | None:
        """The wrapped expert's held-out scores of every tile, each photo's tiles one group, stitched."""
        check_size(images, self.tiling, "normal image")
        per_image = len(self.tiling.boxes)
        tiles = [tile for image in images for tile in split_tiles(image, self.tiling)]
        preds = self.inner.heldout_predictions(tiles, self._tile_groups(range(len(images)) if groups is None else groups))
        if preds is None:
            return None
        return [self._stitched(preds[i * per_image : (i + 1) * per_image]) for i in range(len(images))]

    def _tile_groups(self, groups: Sequence[int]) -> list[int]:
        """Each photo's group repeated for every one of its tiles (tiles of one photo are one group)."""
        per_image = len(self.tiling.boxes)
        return [g for g in groups for _ in range(per_image)]

    def _stitched(self, chunk: list[Prediction]) -> Prediction:
        """One image's prediction from its tiles' (map stitched, score the largest tile score)."""
        return Prediction(anomaly_map=stitch([p.anomaly_map for p in chunk], self.tiling),
                          score=float(max(p.score for p in chunk)))

    def state_tensors(self) -> dict[str, Any]:
        """The wrapped expert's tensors."""
        return self.inner.state_tensors()

    def state_metadata(self) -> dict[str, Any]:
        """The wrapped expert's metadata."""
        return self.inner.state_metadata()
