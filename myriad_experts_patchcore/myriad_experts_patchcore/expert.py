"""The PatchCore expert: orchestration of features, coreset, memory bank and scoring.

Fit: images are streamed through the backbone ``batch_size`` at a time into one
preallocated ``N x D`` patch-feature matrix; a greedy k-center coreset of it
becomes the memory bank. Predict: one backbone forward and one FAISS search per
batch, maps upsampled and blurred on the whole batch, then resized to each
image's own size.

Over 400 lines on purpose: it is the one class a user configures (fit, predict, save, load, the feature cache and the checks on each); the pure parts live in ``features``, ``coreset``, ``memory_bank`` and ``scoring``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from myriad.api import ConfigError, Expert, Mode, MyriadError, Prediction, WeightsError, cached, nearest_outside_group

from myriad_experts_patchcore.features import default_layers
from myriad_experts_patchcore.plugin import PatchCoreConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from myriad_experts_patchcore.features import PatchFeatureExtractor
    from myriad_experts_patchcore.memory_bank import MemoryBank
    from myriad_experts_patchcore.position import PositionBaseline

#: Keys of ``state_metadata`` that must match the config for a saved bank to be usable.
_FEATURE_KEYS = ("backbone", "layers", "image_size", "aggregation", "embed_dim")
#: Augmentations of few-shot references (identity excluded): numpy ops on H x W x 3 arrays.
_AUGMENT_OPS = {
    "flip": ("hflip", "vflip"),
    "rotate": ("rot90", "rot180", "rot270"),
    "flip_rotate": ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"),
}


def augment_image(image: "np.ndarray", op: str) -> "np.ndarray":
    """One flip / rotation of an ``H x W x 3`` image (the dihedral group of the square)."""
    import numpy as np

    ops = {
        "identity": lambda a: a,
        "hflip": lambda a: a[:, ::-1],
        "vflip": lambda a: a[::-1],
        "rot90": lambda a: np.rot90(a, 1),
        "rot180": lambda a: np.rot90(a, 2),
        "rot270": lambda a: np.rot90(a, 3),
        "transpose": lambda a: a.transpose(1, 0, 2),
        "antitranspose": lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    }
    return np.ascontiguousarray(ops[op](image))


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` CPU threads in torch and faiss inside the block (unchanged when None)."""
    if n is None:
        yield
        return
    import faiss
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        faiss.omp_set_num_threads(previous)


#: Fewest fitted images for held-out scores from a coreset bank (below: the host's k folds). Leaving an image's rows
#: out of a coreset leaves holes where it covered other images' patches, so held-out scores come out high; the holes
#: shrink with the image's share of the bank. Measured: at 200 normals leave-one-out thresholds sat at or below the
#: k-fold ones and flagged 0.1 % of 1,000 visible-set test normals (stated 0.5 %); at 16 they sat above the k-fold
#: ones in 3 of 5 default dev-set categories. A bank that keeps every patch (coreset_ratio 1, few-shot) is exact.
HELDOUT_MIN_IMAGES = 50

#: Rounds of ``search="certified"`` before an image is searched exactly in full (each round searches the windows
#: of the highest open positions exactly, one in the first round and twice as many in each next one).
CERTIFY_ROUNDS = 12

#: Share of the IVF lists probed for the held-out bounds of ``heldout_search="bounded"``.
HELDOUT_PROBED_SHARE = 1 / 8

#: Fewest fitted images (groups) for ``position_baseline="auto"`` to fit a per-position baseline (position.py).
POSITION_BASELINE_MIN_IMAGES = 20

#: Frozen backbones shared by experts of this process (calibration builds one expert per fold):
#: PatchCore's own group of the host's model cache, holding the three most recent.
_BACKBONE_GROUP = "patchcore-backbones"
_BACKBONE_CACHE_SIZE = 3


def _shared_backbone(name: str, layers: tuple[int, ...], weights: str | None, device: str, runtime: str = "torch") -> Any:
    """A :class:`~myriad.backbone.FeatureBackbone` with BatchNorm folded, built once per process.

    The models are frozen and only run under ``inference_mode``, so experts can share
    them; the key includes the weights file's size and modification time.
    """
    import os

    stamp = None
    if weights is not None and os.path.isfile(weights):
        info = os.stat(weights)
        stamp = (os.path.abspath(weights), info.st_size, info.st_mtime_ns)
    key = (name, tuple(layers), weights, stamp, device, runtime)
    return cached(key, lambda: _build_backbone(name, layers, weights, device, runtime), group=_BACKBONE_GROUP,
                  keep=_BACKBONE_CACHE_SIZE)


def _build_backbone(name: str, layers: tuple[int, ...], weights: str | None, device: str, runtime: str = "torch") -> Any:
    import torch

    from myriad.api import FeatureBackbone

    from myriad_experts_patchcore.features import fold_batchnorm

    try:
        backbone = FeatureBackbone(name, out_indices=layers, weights=weights, device=device)
    except MyriadError:
        raise
    except (IndexError, ValueError, AssertionError, RuntimeError) as exc:
        raise ConfigError(f"backbone {name!r} cannot return stages layers={list(layers)}: {exc}") from exc
    probe = torch.zeros(1, 3, 64, 64, device=backbone.device)
    backbone.model = fold_batchnorm(backbone.model, check_input=probe)
    if backbone.device.type == "cpu":
        backbone.model = backbone.model.to(memory_format=torch.channels_last)
    backbone.use_runtime(runtime)
    return backbone


class PatchCoreExpert(Expert):
    """PatchCore (Roth et al. 2022): nearest-neighbour distance of patch features to a memory bank."""

    Config = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig) -> None:
        super().__init__(config, config.mode)
        self.config: PatchCoreConfig = config
        self.layers = tuple(config.layers) if config.layers else default_layers(config.backbone)
        self.bank: "MemoryBank | None" = None
        self.projection: "torch.Tensor | None" = None
        self.num_train_patches = 0
        self.grid: tuple[int, int] | None = None
        self._extractor: "PatchFeatureExtractor | None" = None
        #: index of the fitted image each bank row came from, and how many images were fitted
        #: (kept in memory for the held-out scores of :meth:`heldout_predictions`; not saved)
        self.bank_owner: "np.ndarray | None" = None
        self._fitted_images = 0
        #: per-position median and scale of held-out normal patch scores (None: scores are used raw)
        self.baseline: "PositionBaseline | None" = None
        #: the fit's held-out patch-score grids and the groups they were scored with (reused by
        #: :meth:`heldout_predictions`; kept in memory only)
        self._heldout_grids: "tuple[tuple[int, ...], np.ndarray] | None" = None

    # -- settings -------------------------------------------------------------------
    @property
    def coreset_ratio(self) -> float:
        """Fraction of patches kept: the config's, else 0.025 (one_class) or 1.0 (few_shot)."""
        if self.config.coreset_ratio is not None:
            return float(self.config.coreset_ratio)
        return 0.025 if self.mode is Mode.ONE_CLASS else 1.0

    @property
    def score_sigma(self) -> float:
        """The image score's smoothing in use: the config's, else 1 on position-baseline z-scores and 0 on raw ones."""
        if self.config.score_sigma is not None:
            return float(self.config.score_sigma)
        return 1.0 if self.baseline is not None else 0.0

    def wants_position_baseline(self, groups: int) -> bool:
        """Whether a fit on ``groups`` images (or photos) fits a per-position baseline (``auto``: one-class, without
        the paper's reweighting, on at least :data:`POSITION_BASELINE_MIN_IMAGES`)."""
        wanted = self.config.position_baseline
        if wanted == "auto":
            return self.mode is Mode.ONE_CLASS and not self.config.reweight and groups >= POSITION_BASELINE_MIN_IMAGES
        return wanted == "robust-z"

    @property
    def device(self) -> str:
        """The torch device in use (``auto`` resolves to cuda when available)."""
        import torch

        wanted = self.config.device
        if wanted == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={wanted!r} but no CUDA GPU is available to torch; use device='cpu' or 'auto'")
        return wanted

    @property
    def extractor(self) -> "PatchFeatureExtractor":
        """The backbone and patch aggregation, built (weights loaded) on first use."""
        if self._extractor is None:
            self._extractor = self._build_extractor()
        return self._extractor

    def _build_extractor(self) -> "PatchFeatureExtractor":
        from myriad_experts_patchcore.features import PatchFeatureExtractor

        cfg = self.config
        backbone = _shared_backbone(cfg.backbone, self.layers, cfg.weights, self.device, cfg.runtime)
        return PatchFeatureExtractor(backbone, cfg.image_size, cfg.aggregation, cfg.embed_dim)

    # -- features ---------------------------------------------------------------------
    def _grid_features(self, images: list["np.ndarray"]) -> "torch.Tensor":
        import torch

        extractor = self.extractor
        batch = extractor.preprocess(images)
        if extractor.backbone.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        try:
            if self._bfloat16:
                with torch.autocast(extractor.backbone.device.type, dtype=torch.bfloat16):
                    grid = extractor.grid_features(batch).float()
            else:
                grid = extractor.grid_features(batch)
        except RuntimeError as exc:
            raise MyriadError(
                f"backbone {self.config.backbone!r} (layers {list(self.layers)}) failed on a "
                f"{tuple(batch.shape)} batch at image_size={self.config.image_size}: {exc}"
            ) from exc
        self.grid = (int(grid.shape[-2]), int(grid.shape[-1]))
        return grid

    @property
    def _bfloat16(self) -> bool:
        """Whether the backbone runs in bfloat16 (``backbone_precision``; ``auto``: where the device computes it natively)."""
        wanted = self.config.backbone_precision
        if wanted == "auto":
            from myriad.api import native_bfloat16

            return native_bfloat16(self.device)
        return wanted == "bfloat16"

    def _feature_settings(self) -> tuple:
        """What the patch features of an image depend on (the key of the feature cache)."""
        import os

        cfg = self.config
        stamp = None
        if cfg.weights is not None and os.path.isfile(cfg.weights):
            info = os.stat(cfg.weights)
            stamp = (os.path.abspath(cfg.weights), info.st_size, info.st_mtime_ns)
        return (
            cfg.backbone, cfg.weights, stamp, tuple(self.layers), cfg.image_size, cfg.aggregation, cfg.embed_dim,
            self._bfloat16, cfg.runtime,
        )

    def _patch_rows(self, chunk: list["np.ndarray"], store: bool) -> tuple["np.ndarray", tuple[int, int]]:
        """``(B*h*w) x D`` patch rows of ``chunk`` and the grid, through the process's feature cache.

        Images whose features are cached are not run through the backbone; the others are, in one
        batch, and stored when ``store`` (fits store, predictions only read: see ``feature_cache``).
        """
        import numpy as np

        from myriad_experts_patchcore.feature_cache import CACHE
        from myriad_experts_patchcore.features import to_patch_rows

        limit = int(self.config.feature_cache_mb) * 2**20
        if limit <= 0:
            grid = self._grid_features(chunk)
            return to_patch_rows(grid), (int(grid.shape[-2]), int(grid.shape[-1]))

        def compute(missing: list["np.ndarray"]) -> list[tuple["np.ndarray", tuple[int, int]]]:
            grid = self._grid_features(missing)
            shape = (int(grid.shape[-2]), int(grid.shape[-1]))
            rows = to_patch_rows(grid).reshape(len(missing), shape[0] * shape[1], -1)
            return [(rows[j], shape) for j in range(len(missing))]

        found = CACHE.fetch(self._feature_settings(), chunk, compute, limit, store)
        shape = found[0][1]  # every image is resized to image_size: one grid for the settings key
        self.grid = shape
        return np.concatenate([hit[0] for hit in found], axis=0), shape

    def _fit_images(self, images: list["np.ndarray"]) -> list[tuple[int, str]]:
        """(image index, augmentation) pairs to put in the bank; checks ``k_shot``."""
        cfg = self.config
        count = len(images)
        if self.mode is Mode.FEW_SHOT:
            if cfg.k_shot is not None:
                if count < cfg.k_shot:
                    raise ConfigError(
                        f"k_shot={cfg.k_shot} but only {count} reference image(s) were given: pass at least "
                        f"{cfg.k_shot} normal images or lower k_shot"
                    )
                count = cfg.k_shot
            ops = ("identity", *_AUGMENT_OPS.get(cfg.augment, ()))
            return [(i, op) for i in range(count) for op in ops]
        if cfg.augment != "none":
            raise ConfigError(f"augment={cfg.augment!r} applies to mode='few_shot' only (mode is 'one_class')")
        return [(i, "identity") for i in range(count)]

    # -- fit ----------------------------------------------------------------------------
    def _fit(self, images: list["np.ndarray"]) -> None:
        import numpy as np

        from myriad_experts_patchcore.coreset import projection_matrix, select_coreset

        cfg = self.config
        items = self._fit_images(images)
        dtype = np.float16 if cfg.bank_dtype == "float16" else np.float32
        features: np.ndarray | None = None
        filled = per_image = 0
        with _cpu_threads(cfg.num_threads):
            with self.progress_stage("features", len(items), unit="img") as stage:
                for start in range(0, len(items), cfg.batch_size):
                    chunk = [augment_image(images[i], op) for i, op in items[start : start + cfg.batch_size]]
                    rows, _ = self._patch_rows(chunk, store=True)
                    if features is None:
                        per_image = rows.shape[0] // len(chunk)
                        features = self._allocate(len(items) * per_image, rows.shape[1], dtype)
                    features[filled : filled + len(rows)] = rows
                    filled += len(rows)
                    stage.advance(len(chunk))
                    del chunk, rows
            assert features is not None
            try:
                with self.progress_stage("coreset", unit="pt") as stage:
                    keep = select_coreset(
                        features,
                        ratio=self.coreset_ratio,
                        projection_dim=cfg.projection_dim,
                        seed=cfg.seed,
                        max_size=cfg.max_bank_size,
                        group_size=cfg.coreset_group_size,
                        rows_per_image=per_image,
                        progress=stage.report,
                    )
            except (MemoryError, RuntimeError) as exc:
                raise MyriadError(
                    f"coreset selection of {len(features)} patches failed ({exc}): lower coreset_ratio, "
                    "projection_dim or image_size, or fit on fewer images"
                ) from exc
            bank = features[keep]
            del features
            self.bank_owner = np.asarray([items[j][0] for j in np.asarray(keep) // per_image], dtype=np.int64)
            self._fitted_images = len(images)
            self.num_train_patches = filled
            if cfg.projection_dim and bank.shape[1] > cfg.projection_dim and len(keep) < filled:
                self.projection = projection_matrix(bank.shape[1], cfg.projection_dim, cfg.seed)
            else:
                self.projection = None
            self.bank = self._make_bank(bank)
        self._check_neighbours()
        self.baseline = None
        self._heldout_grids = None
        groups = self._fit_group_array(len(images))
        if self.wants_position_baseline(len(np.unique(groups))):
            self._fit_position_baseline(images, groups)

    def _fit_group_array(self, count: int) -> "np.ndarray":
        """The group of each fitted image: ``fit_groups`` when a wrapper set one that fits, else each its own."""
        import numpy as np

        groups = self.fit_groups
        if groups is not None and len(groups) == count:
            return np.asarray(groups, dtype=np.int64)
        return np.arange(count, dtype=np.int64)

    def _fit_position_baseline(self, images: list["np.ndarray"], groups: "np.ndarray") -> None:
        """Score every fitted image held out (without its group's bank rows) and fit the baseline on those grids."""
        from myriad_experts_patchcore.position import fit_position_baseline

        if self.config.reweight or self.mode is not Mode.ONE_CLASS:
            raise ConfigError(
                "position_baseline='robust-z' needs mode='one_class' and reweight=False (it is fitted on the "
                "normal images scored leave-one-out); use position_baseline='none' or 'auto'"
            )
        cfg = self.config
        bounded = cfg.heldout_search == "bounded" and cfg.num_neighbors == 1
        found = self._heldout_patch_grids(images, groups, bounded=bounded)
        if found is None:
            raise ConfigError(
                "position_baseline='robust-z': an image (or photo) owns nearly the whole memory bank, so it cannot "
                "be scored without its own patches; fit on more images or use position_baseline='none'"
            )
        grids, bounds = found
        self.baseline = fit_position_baseline(grids)
        if bounds is not None:
            grids = self._certified_heldout(images, groups, bounds)
        self._heldout_grids = (tuple(int(g) for g in groups), grids)

    def _heldout_patch_grids(
        self, images: list["np.ndarray"], groups: "np.ndarray", bounded: bool = False
    ) -> "tuple[np.ndarray, np.ndarray | None] | None":
        """``N x h x w`` raw patch scores of the fitted images, each against the bank without its group's rows,
        and, when ``bounded`` (``heldout_search="bounded"``), the ``N x P`` squared distances they came from: upper
        bounds from the IVF index (:data:`HELDOUT_PROBED_SHARE` of its lists), exact where it had none. None when
        a group owns nearly the whole bank."""
        import numpy as np

        from myriad_experts_patchcore.memory_bank import NO_NEIGHBOUR
        from myriad_experts_patchcore.scoring import patch_scores

        cfg = self.config
        assert self.bank is not None and self.bank_owner is not None
        owner_group = groups[self.bank_owner]
        out: list[np.ndarray] = []
        bounds: list[np.ndarray] | None = [] if bounded else None
        with _cpu_threads(cfg.num_threads):
            with self.progress_stage("held-out scores", len(images), unit="img") as stage:
                for start in range(0, len(images), cfg.batch_size):
                    chunk = images[start : start + cfg.batch_size]
                    rows, grid = self._patch_rows(chunk, store=False)
                    row_group = np.repeat(groups[start : start + len(chunk)], grid[0] * grid[1])
                    upper = None
                    if bounds is not None:
                        upper = self.bank.search_upper(rows, HELDOUT_PROBED_SHARE, outside=(row_group, owner_group))
                    if upper is None:
                        bounds = None
                        sq = nearest_outside_group(self.bank.search, rows, row_group, owner_group, cfg.num_neighbors)
                    else:
                        sq = upper[:, None]
                        empty = np.flatnonzero(upper >= NO_NEIGHBOUR)
                        if empty.size:  # no foreign vector among the probed candidates: search those exactly
                            sq[empty] = nearest_outside_group(self.bank.search, rows[empty], row_group[empty], owner_group, 1)
                    if sq is None:
                        return None
                    if bounds is not None:
                        bounds.append(sq[:, 0].reshape(len(chunk), -1).copy())
                    out.append(patch_scores(sq, cfg.distance).reshape(len(chunk), *grid))
                    stage.advance(len(chunk))
        return np.concatenate(out, axis=0), None if bounds is None else np.concatenate(bounds, axis=0)

    def _certified_heldout(self, images: list["np.ndarray"], groups: "np.ndarray", bounds: "np.ndarray") -> "np.ndarray":
        """The held-out grids from their bounds (:meth:`_heldout_patch_grids`), certified (:meth:`_certify`) against
        the fitted baseline: each held-out image's score equals the exact held-out search's."""
        import numpy as np

        from myriad_experts_patchcore.scoring import patch_scores

        cfg = self.config
        assert self.bank is not None and self.bank_owner is not None and self.grid is not None
        owner_group = groups[self.bank_owner]
        grid = self.grid
        per = grid[0] * grid[1]
        out: list[np.ndarray] = []
        with _cpu_threads(cfg.num_threads):
            for start in range(0, len(images), cfg.batch_size):
                chunk = images[start : start + cfg.batch_size]
                rows, grid = self._patch_rows(chunk, store=False)

                def exact(i: int, cells: "np.ndarray", start: int = start, rows: "np.ndarray" = rows) -> "np.ndarray":
                    group = np.full(len(cells), groups[start + i])
                    found = nearest_outside_group(self.bank.search, rows[i * per + cells], group, owner_group, 1)  # type: ignore[union-attr]
                    assert found is not None  # every row had a foreign neighbour in the bounded pass
                    return found[:, 0]

                sq = self._certify(bounds[start : start + len(chunk)].copy(), grid, exact)
                out.append(patch_scores(sq.reshape(-1, 1), cfg.distance).reshape(len(chunk), *grid))
        return np.concatenate(out, axis=0)

    @staticmethod
    def _allocate(rows: int, dim: int, dtype: Any) -> "np.ndarray":
        """The fit feature matrix, refused up front when it cannot fit in memory."""
        import numpy as np

        need = rows * dim * np.dtype(dtype).itemsize
        try:
            import psutil

            available = psutil.virtual_memory().available
        except ImportError:  # pragma: no cover - psutil is optional
            available = None
        # the coreset needs a float32 projection (<= 128 columns) on top of the features
        if available is not None and need + rows * 128 * 4 > 0.9 * available:
            raise MyriadError(
                f"fitting needs {need / 2**30:.1f} GiB for {rows} patch features of dimension {dim} but only "
                f"{available / 2**30:.1f} GiB is available: fit on fewer images, lower image_size, or set "
                "bank_dtype='float16'"
            )
        try:
            return np.empty((rows, dim), dtype=dtype)
        except MemoryError as exc:
            raise MyriadError(f"cannot allocate {need / 2**30:.1f} GiB for {rows} patch features") from exc

    def _make_bank(self, features: "np.ndarray") -> "MemoryBank":
        from myriad_experts_patchcore.memory_bank import MemoryBank

        cfg = self.config
        device = self.device
        return MemoryBank(
            features,
            index=cfg.index,
            dtype=cfg.bank_dtype,
            use_gpu=device.startswith("cuda"),
            gpu_device=int(device.partition(":")[2] or 0),
            ivf_lists=cfg.ivf_lists,
            pq_subquantizers=cfg.pq_subquantizers,
            ivf_probe=cfg.ivf_probe,
        )

    def _check_neighbours(self) -> None:
        assert self.bank is not None
        if self.config.num_neighbors > self.bank.size:
            raise ConfigError(
                f"num_neighbors={self.config.num_neighbors} is larger than the memory bank "
                f"({self.bank.size} patches): lower num_neighbors, raise coreset_ratio or fit on more images"
            )

    # -- predict ------------------------------------------------------------------------
    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        cfg = self.config
        assert self.bank is not None
        out: list[Prediction] = []
        with _cpu_threads(cfg.num_threads):
            for start in range(0, len(images), cfg.batch_size):
                chunk = images[start : start + cfg.batch_size]
                rows, grid = self._patch_rows(chunk, store=False)
                out += self._score(chunk, rows, grid)
        return out

    def heldout_predictions(
        self, images: list["np.ndarray"], groups: "Sequence[int] | None" = None
    ) -> list[Prediction] | None:
        """Each fitted image scored against the whole bank without the rows its group put there.

        One search per batch (features come from the fit's cache): the nearest ``num_neighbors``
        bank rows owned by another group. None when it cannot stand for a held-out score: a
        loaded bank (owners are not saved), other images than the fit's, the paper's
        reweighting, a coreset of fewer than :data:`HELDOUT_MIN_IMAGES` images, or a group that
        owns nearly the whole bank.
        """
        import numpy as np

        cfg = self.config
        if self.bank is None or self.bank_owner is None or cfg.reweight or len(images) != self._fitted_images:
            return None
        groups_array = np.arange(len(images)) if groups is None else np.asarray(groups, dtype=np.int64)
        if self.bank.size < self.num_train_patches and len(np.unique(groups_array)) < HELDOUT_MIN_IMAGES:
            return None  # a coreset of few images: leaving one out leaves holes (see HELDOUT_MIN_IMAGES)
        cached_grids = self._heldout_grids
        if cached_grids is not None and cached_grids[0] == tuple(int(g) for g in groups_array):
            grids = cached_grids[1]
        else:
            found = self._heldout_patch_grids(images, groups_array)
            if found is None:
                return None
            grids = found[0]
        out: list[Prediction] = []
        for start in range(0, len(images), cfg.batch_size):
            chunk = images[start : start + cfg.batch_size]
            out += self._grid_predictions(chunk, grids[start : start + len(chunk)])
        return out

    def _score(self, chunk: list["np.ndarray"], rows: "np.ndarray", grid: tuple[int, int]) -> list[Prediction]:
        assert self.bank is not None
        cfg = self.config
        if cfg.search == "certified" and cfg.num_neighbors == 1 and not cfg.reweight:
            upper = self.bank.search_upper(rows, cfg.certify_probed_share)
            if upper is not None:
                sq = self._certified(rows, upper.reshape(len(chunk), grid[0] * grid[1]), grid)
                return self._predictions(chunk, sq.reshape(-1, 1), grid)
        sq, nearest = self.bank.search(rows, cfg.num_neighbors)
        return self._predictions(chunk, sq, grid, rows=rows, nearest=nearest)

    def _certified(self, rows: "np.ndarray", sq: "np.ndarray", grid: tuple[int, int]) -> "np.ndarray":
        """``B x P`` squared distances, exact wherever an image's score can come from (``search="certified"``);
        ``sq`` holds upper bounds (:meth:`MemoryBank.search_upper`), see :meth:`_certify`."""
        per = grid[0] * grid[1]

        def exact(i: int, cells: "np.ndarray") -> "np.ndarray":
            return self.bank.search(rows[i * per + cells], 1)[0][:, 0]  # type: ignore[union-attr]

        return self._certify(sq, grid, exact, self.config.certify_level)

    def _certify(
        self,
        sq: "np.ndarray",
        grid: tuple[int, int],
        exact_search: "Callable[[int, np.ndarray], np.ndarray]",
        level: float | None = None,
    ) -> "np.ndarray":
        """Make ``sq`` (``B x P`` upper bounds of squared distances) exact wherever each image's score can come from.

        The image score is the largest smoothed patch score, and the baseline and the smoothing only ever raise a
        score with a patch's distance, so the smoothed grid of the bounds bounds the exact one everywhere.
        A position's value is exact once every patch its smoothing reaches is exact. Repeatedly: the best exact
        value is a lower bound of the image score; when no position whose value is still open has a bound above
        it, it is the image score; otherwise the patches under the highest such positions are searched exactly
        (``exact_search(image, cells)``; one window in the first round, twice as many each next round) and the
        grid is smoothed again. After :data:`CERTIFY_ROUNDS` rounds the image is searched exactly in full. With a
        position baseline and a ``level``, every patch the smoothing of a position whose bound reads at least
        ``level`` reaches is searched exactly too.
        """
        import numpy as np
        from scipy.ndimage import binary_dilation, minimum_filter

        from myriad_experts_patchcore.memory_bank import NO_NEIGHBOUR
        from myriad_experts_patchcore.scoring import gaussian_kernel1d

        h, w = grid
        per = h * w
        exact = np.zeros(sq.shape, dtype=bool)
        sigma = self.score_sigma
        radius = (gaussian_kernel1d(sigma).numel() - 1) // 2 if sigma > 0 else 0

        def settle(i: int, cells: "np.ndarray") -> None:
            need = cells[~exact[i, cells]]
            if need.size:
                sq[i, need] = exact_search(i, need)
                exact[i, need] = True

        window = np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool)
        for i in range(len(sq)):
            settle(i, np.flatnonzero(sq[i] >= NO_NEIGHBOUR))  # the probed lists were empty: no bound to use
            if 2 * radius + 1 >= min(h, w):  # the smoothing reaches (reflects over) the whole grid
                settle(i, np.arange(per))
            widths = 1
            for _ in range(CERTIFY_ROUNDS):
                smoothed = self._smoothed(sq[i].reshape(1, h, w))[0].numpy()
                # a position's smoothed value is exact when every patch its window reaches is exact
                known = minimum_filter(exact[i].reshape(h, w), footprint=window, mode="nearest")
                best = float(smoothed[known].max()) if known.any() else -np.inf
                open_ = np.flatnonzero(~known.ravel() & (smoothed.ravel() > best))
                if not open_.size:  # no position whose value is open can exceed the best exact one
                    break
                # the windows of the highest open positions, twice as many each round
                top = open_[np.argsort(smoothed.ravel()[open_])[::-1][:widths]]
                mask = np.zeros(per, dtype=bool)
                mask[top] = True
                settle(i, np.flatnonzero(binary_dilation(mask.reshape(h, w), window) if radius else mask))
                widths *= 2
            else:
                settle(i, np.arange(per))
            if self.baseline is not None and level is not None:
                # the map too: exact wherever its bound reads at or above the level (every patch the smoothing
                # of such a position reaches), so below the level it reads at most the level
                hot = self._smoothed(sq[i].reshape(1, h, w))[0].numpy() >= level
                if radius and hot.any():
                    hot = binary_dilation(hot, window)
                settle(i, np.flatnonzero(hot.ravel()))
        return sq

    def _smoothed(self, grids: "np.ndarray") -> "torch.Tensor":
        """``B x h x w`` squared distances -> the smoothed scores whose maximum is the image score."""
        from myriad_experts_patchcore.scoring import patch_scores

        return self._smooth_scores(patch_scores(grids.reshape(-1, 1), self.config.distance).reshape(grids.shape))

    def _smooth_scores(self, scores: "np.ndarray") -> "torch.Tensor":
        """``B x h x w`` raw patch scores -> against the position baseline, smoothed by ``score_sigma``."""
        import numpy as np
        import torch

        from myriad_experts_patchcore.scoring import gaussian_blur

        if self.baseline is not None:
            scores = self.baseline.apply(scores)
        smoothed = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        return gaussian_blur(smoothed, self.score_sigma) if self.score_sigma > 0 else smoothed

    def _predictions(
        self,
        chunk: list["np.ndarray"],
        sq: "np.ndarray",
        grid: tuple[int, int],
        rows: "np.ndarray | None" = None,
        nearest: "np.ndarray | None" = None,
    ) -> list[Prediction]:
        """Maps and image scores of ``chunk`` from its patches' squared neighbour distances."""
        from myriad_experts_patchcore.scoring import patch_scores

        cfg = self.config
        b = len(chunk)
        scores = patch_scores(sq, cfg.distance).reshape(b, grid[0] * grid[1])
        if cfg.reweight and rows is not None and nearest is not None:
            weights = self._reweight(rows, scores, nearest[:, 0])
            return self._grid_predictions(chunk, scores.reshape(b, *grid), weights)
        return self._grid_predictions(chunk, scores.reshape(b, *grid))

    def _grid_predictions(
        self, chunk: list["np.ndarray"], grids: "np.ndarray", weights: "np.ndarray | None" = None
    ) -> list[Prediction]:
        """Maps and image scores of ``chunk`` from its ``B x h x w`` raw patch scores (the baseline applied here)."""
        from myriad_experts_patchcore.scoring import anomaly_maps

        cfg = self.config
        if self.baseline is not None:
            if tuple(grids.shape[1:]) != self.baseline.grid:
                raise MyriadError(
                    f"patch grid {tuple(grids.shape[1:])} differs from the position baseline's {self.baseline.grid}"
                )
        # the map is drawn from the same smoothed scores, so its peak is the image score the calibration judges
        patch_scores = self._smooth_scores(grids)
        image_scores = patch_scores.flatten(1).max(dim=1).values.numpy()
        if weights is not None:
            image_scores = image_scores * weights
        maps = anomaly_maps(patch_scores, [img.shape[:2] for img in chunk], cfg.image_size, cfg.blur_sigma)
        return [Prediction(anomaly_map=m, score=float(s)) for m, s in zip(maps, image_scores)]

    def _reweight(self, rows: "np.ndarray", scores: "np.ndarray", nearest: "np.ndarray") -> "np.ndarray":
        """Per-image weight ``1 - softmax(distances to N_b(m*))[0]`` of the worst patch (see scoring)."""
        import numpy as np

        from myriad_experts_patchcore.scoring import reweight_factors

        assert self.bank is not None
        b, per_image = scores.shape
        support_size = min(self.config.reweight_neighbors, self.bank.size)
        if support_size < 2:
            return np.ones(b, dtype=np.float32)
        worst = scores.argmax(axis=1) + np.arange(b) * per_image  # row of each image's worst patch
        m_star = nearest[worst]  # its nearest bank entry
        _, support = self.bank.search(self.bank.vectors(m_star), support_size)
        support[:, 0] = m_star  # m* first even if an exact duplicate ranked before it
        vectors = self.bank.vectors(support.reshape(-1)).reshape(b, support_size, -1)
        return reweight_factors(rows[worst], vectors)

    # -- state ----------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Any]:
        import torch

        if self.bank is None:
            return {}
        tensors: dict[str, Any] = {"bank": torch.from_numpy(self.bank.features)}
        if self.projection is not None:
            tensors["coreset_projection"] = self.projection  # provenance: how the bank was selected
        if self.baseline is not None:
            tensors["position_median"] = torch.from_numpy(self.baseline.median)
            tensors["position_scale"] = torch.from_numpy(self.baseline.scale)
        return tensors

    def _feature_facts(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "backbone": cfg.backbone,
            "layers": list(self.layers),
            "image_size": cfg.image_size,
            "aggregation": cfg.aggregation,
            "embed_dim": cfg.embed_dim if cfg.aggregation == "pool" else None,
        }

    def state_metadata(self) -> dict[str, Any]:
        if self.bank is None:
            return {}
        return {
            **self._feature_facts(),
            "feature_dim": self.bank.dim,
            "bank_size": self.bank.size,
            "bank_dtype": self.bank.dtype,
            "train_patches": self.num_train_patches,
            "grid": list(self.grid) if self.grid else None,
            "coreset_ratio": self.coreset_ratio,
            "position_baseline": self.baseline is not None,
            "score_sigma": self.score_sigma,
        }

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        import numpy as np

        if "bank" not in tensors:
            raise WeightsError(f"saved PatchCore state has no 'bank' tensor (found {sorted(tensors)})")
        mine = self._feature_facts()
        theirs = {key: metadata.get(key) for key in _FEATURE_KEYS}
        if mine != theirs:
            differ = [k for k in _FEATURE_KEYS if mine[k] != theirs[k]]
            raise WeightsError(
                "memory bank was built with "
                + ", ".join(f"{k}={theirs[k]!r}" for k in differ)
                + " but this expert is configured with "
                + ", ".join(f"{k}={mine[k]!r}" for k in differ)
                + f" (backbone {theirs['backbone']!r} vs {mine['backbone']!r}); refit, or use the saved config"
            )
        bank = tensors["bank"].float().numpy() if hasattr(tensors["bank"], "numpy") else np.asarray(tensors["bank"])
        if bank.ndim != 2 or bank.shape[1] != metadata.get("feature_dim", bank.shape[1]):
            raise WeightsError(f"saved bank has shape {tuple(bank.shape)}, metadata says feature_dim={metadata.get('feature_dim')}")
        projection = tensors.get("coreset_projection")
        self.projection = projection.float() if projection is not None else None
        self.num_train_patches = int(metadata.get("train_patches", 0))
        grid = metadata.get("grid")
        self.grid = (int(grid[0]), int(grid[1])) if grid else None
        self.bank = self._make_bank(bank)
        self._check_neighbours()
        self.baseline = self._loaded_baseline(tensors)
        if "score_sigma" not in metadata and self.score_sigma != 0:
            # saved before score_sigma was recorded: its calibration was set on the raw maximum
            self.config = self.config.model_copy(update={"score_sigma": 0.0})
        self._heldout_grids = None
        self.fitted = True

    def _loaded_baseline(self, tensors: dict[str, Any]) -> "PositionBaseline | None":
        """The saved position baseline (None when the state has none: saved without one, or by an older release)."""
        import numpy as np

        from myriad_experts_patchcore.position import PositionBaseline

        parts = [tensors.get("position_median"), tensors.get("position_scale")]
        if parts[0] is None and parts[1] is None:
            return None
        if parts[0] is None or parts[1] is None:
            raise WeightsError("saved PatchCore state holds only one of position_median / position_scale")
        median, scale = (p.float().numpy() if hasattr(p, "numpy") else np.asarray(p, np.float32) for p in parts)
        if median.ndim != 2 or median.shape != scale.shape or not (scale > 0).all():
            raise WeightsError(
                f"saved position baseline is malformed: median {tuple(median.shape)}, scale {tuple(scale.shape)} "
                "(both h x w, scale > 0)"
            )
        if self.grid is not None and tuple(median.shape) != tuple(self.grid):
            raise WeightsError(f"saved position baseline is {tuple(median.shape)} but the bank's grid is {self.grid}")
        return PositionBaseline(median=median, scale=scale)


__all__ = ["PatchCoreExpert", "augment_image"]
