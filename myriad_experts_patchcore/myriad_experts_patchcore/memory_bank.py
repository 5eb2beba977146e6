"""The memory bank: FAISS nearest-neighbour search over the coreset patch features.

Distances: every FAISS L2 index returns **squared** Euclidean distances. The
original PatchCore (amazon-science/patchcore-inspection) scores patches with those
squared distances as they come (``mean`` over the k nearest, no square root);
anomalib takes the square root. :class:`MemoryBank.search` returns squared
distances; the expert's ``distance`` setting decides whether scores use them as
they are (``squared``, the default, as the original) or their square root
(``euclidean``, as anomalib).

Index kinds:

- ``flat``: exact search (``IndexFlatL2``; ``GpuIndexFlatL2`` when the installed
  faiss has GPU support and a GPU is asked for and present);
- ``ivfpq``: approximate search for very large banks (inverted lists + product
  quantisation, as the original's ``ApproximateFaissNN``); needs a bank of at least
  :data:`IVFPQ_MIN_BANK` vectors to train, smaller banks use ``flat`` with a warning.

``dtype="float16"`` keeps the bank in half precision (FAISS fp16 scalar quantiser
on CPU, ``useFloat16`` on GPU): half the memory, slower exact search on CPU.

:meth:`MemoryBank.search_upper` answers from an IVF-Flat index beside the exact one (built on
first use): each distance is to *a* bank vector, so never below the exact nearest one. The
expert's ``search="certified"`` uses these upper bounds to search exactly only the patches
that can hold an image's score (see the expert).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal

from myriad.api import ConfigError, MyriadError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

IndexKind = Literal["flat", "ivfpq"]
BankDtype = Literal["float32", "float16"]

#: Smallest bank trained as IVF-PQ (FAISS wants ~39 training points per list and 256 per PQ code).
IVFPQ_MIN_BANK = 10_000
#: Smallest bank given the IVF-Flat index of :meth:`MemoryBank.search_upper` (smaller exact searches are cheap).
UPPER_MIN_BANK = 4096
#: Bank vectors per inverted list of that index, and the share of lists probed (measured on the default bank,
#: ``benchmarks/results/patchcore_search.md``: 256 lists, 8 probed).
UPPER_VECTORS_PER_LIST = 80
UPPER_PROBED_SHARE = 1 / 32
#: Nearest candidates of the probed lists read for a bound outside the query's own group.
OUTSIDE_CANDIDATES = 8
#: Distance FAISS reports when the probed lists held no vector (an upper bound with no information).
NO_NEIGHBOUR = 1e30


def faiss_has_gpu() -> bool:
    """Whether the installed faiss was built with GPU support and sees a GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


class MemoryBank:
    """Patch features of normal images, searchable by squared L2 distance."""

    def __init__(
        self,
        features: "np.ndarray",
        index: IndexKind = "flat",
        dtype: BankDtype = "float32",
        use_gpu: bool = False,
        gpu_device: int = 0,
        ivf_lists: int = 1024,
        pq_subquantizers: int = 64,
        ivf_probe: int = 16,
    ) -> None:
        import numpy as np

        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise MyriadError(f"memory bank needs a non-empty N x D feature matrix, got shape {features.shape}")
        if not np.isfinite(features).all():
            raise MyriadError("memory bank features contain NaN or infinity (check the backbone weights)")
        self.dtype: BankDtype = dtype
        self.features = np.ascontiguousarray(features, dtype=np.float16 if dtype == "float16" else np.float32)
        self.requested_kind: IndexKind = index
        self.kind: IndexKind = index
        self.use_gpu = bool(use_gpu) and faiss_has_gpu()
        self.gpu_device = int(gpu_device)
        self.ivf_lists = int(ivf_lists)
        self.pq_subquantizers = int(pq_subquantizers)
        self.ivf_probe = int(ivf_probe)
        self._index = self._build()
        self._upper: object | None = None

    # -- construction -------------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of vectors in the bank."""
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension."""
        return int(self.features.shape[1])

    def vectors(self, rows: "np.ndarray | None" = None) -> "np.ndarray":
        """Bank rows as float32 (all rows when ``rows`` is None)."""
        import numpy as np

        data = self.features if rows is None else self.features[rows]
        return np.ascontiguousarray(data, dtype=np.float32)

    def _build(self) -> object:
        import faiss

        d = self.dim
        try:
            if self.kind == "ivfpq" and self.size < IVFPQ_MIN_BANK:
                warnings.warn(
                    f"index='ivfpq' needs at least {IVFPQ_MIN_BANK} bank vectors to train, the bank has "
                    f"{self.size}: using exact index='flat' instead",
                    stacklevel=3,
                )
                self.kind = "flat"
            if self.kind == "ivfpq":
                lists = max(1, min(self.ivf_lists, self.size // 39))
                m = _largest_divisor_at_most(d, self.pq_subquantizers)
                index = faiss.IndexIVFPQ(faiss.IndexFlatL2(d), d, lists, m, 8)
                index.nprobe = max(1, min(self.ivf_probe, lists))
                if self.use_gpu:
                    options = faiss.GpuClonerOptions()
                    options.useFloat16 = self.dtype == "float16"
                    index = faiss.index_cpu_to_gpu(self._gpu_resources(), self.gpu_device, index, options)
                index.train(self.vectors())
            elif self.use_gpu:
                config = faiss.GpuIndexFlatConfig()
                config.device = self.gpu_device
                config.useFloat16 = self.dtype == "float16"
                index = faiss.GpuIndexFlatL2(self._gpu_resources(), d, config)
            elif self.dtype == "float16":
                index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
            else:
                index = faiss.IndexFlatL2(d)
            self._add(index)
        except MemoryError as exc:
            raise MyriadError(
                f"not enough memory for a memory bank of {self.size} x {d} ({self.dtype}): lower "
                "coreset_ratio or set max_bank_size / bank_dtype='float16'"
            ) from exc
        except RuntimeError as exc:  # faiss reports its errors as RuntimeError
            raise MyriadError(f"faiss could not build the {self.kind!r} index ({self.size} x {d}): {exc}") from exc
        return index

    def _add(self, index: object, chunk: int = 262_144) -> None:
        for start in range(0, self.size, chunk):
            index.add(self.vectors(slice(start, start + chunk)))  # type: ignore[attr-defined]

    def _gpu_resources(self) -> object:
        import faiss

        if not hasattr(self, "_resources"):
            self._resources = faiss.StandardGpuResources()
        return self._resources

    # -- search ---------------------------------------------------------------------
    def search_upper(
        self,
        queries: "np.ndarray",
        probed_share: float = UPPER_PROBED_SHARE,
        outside: "tuple[np.ndarray, np.ndarray] | None" = None,
    ) -> "np.ndarray | None":
        """Upper bounds of each query's squared distance to its nearest bank vector (``Q`` float32; at least
        :data:`NO_NEIGHBOUR` where the probed lists were empty), from an IVF-Flat index built on first use; None
        where it would not pay: a GPU or float16 bank, an approximate index, or under :data:`UPPER_MIN_BANK`.

        ``probed_share`` of the lists is searched. ``outside = (query_group, owner_group)``: bounds to the nearest
        vector owned by another group (``owner_group[j]`` put bank row ``j`` there), from the
        :data:`OUTSIDE_CANDIDATES` nearest of the probed lists (:data:`NO_NEIGHBOUR` where all are the query's own).
        """
        import numpy as np

        if self.use_gpu or self.dtype != "float32" or self.kind != "flat" or self.size < UPPER_MIN_BANK:
            return None
        import faiss

        if self._upper is None:
            lists = max(1, min(self.ivf_lists, self.size // UPPER_VECTORS_PER_LIST))
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.dim), self.dim, lists)
            index.train(self.vectors())
            self._add(index)
            self._upper = index
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        index = self._upper
        params = faiss.SearchParametersIVF(nprobe=max(1, min(index.nlist, round(index.nlist * probed_share))))  # type: ignore[attr-defined]
        k = 1 if outside is None else min(OUTSIDE_CANDIDATES, self.size)
        distances, indices = index.search(queries, k, params=params)  # type: ignore[attr-defined]
        valid = indices >= 0
        if outside is not None:
            query_group, owner_group = outside
            owner = np.where(valid, np.asarray(owner_group)[np.maximum(indices, 0)], -1)
            valid &= owner != np.asarray(query_group)[:, None]
        distances = np.where(valid, np.maximum(distances, 0.0), np.float32(NO_NEIGHBOUR))
        return distances.min(axis=1).astype(np.float32, copy=False)

    def search(self, queries: "np.ndarray", k: int = 1) -> tuple["np.ndarray", "np.ndarray"]:
        """Squared L2 distances and bank indices of the ``k`` nearest bank vectors of each query.

        ``queries`` is ``Q x D``; returns ``Q x k`` float32 and ``Q x k`` int64, nearest
        first. ``k`` larger than the bank is an error naming the setting.
        """
        import numpy as np

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MyriadError(f"queries must be Q x {self.dim}, got shape {queries.shape}")
        if not 1 <= k <= self.size:
            raise ConfigError(
                f"num_neighbors={k} is larger than the memory bank ({self.size} patches): lower num_neighbors "
                "or fit on more images / a higher coreset_ratio"
            )
        try:
            distances, indices = self._index.search(queries, k)  # type: ignore[attr-defined]
        except RuntimeError as exc:
            raise MyriadError(f"faiss search failed ({len(queries)} queries, k={k}): {exc}") from exc
        np.maximum(distances, 0.0, out=distances)  # approximate indexes can go slightly negative
        return distances, indices.astype(np.int64, copy=False)
