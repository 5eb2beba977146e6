"""Expert maps for training items: a frozen, calibrated expert per category.

Each category gets a calibrated detector (one expert, or a fusion such as
``patchcore+global``: :func:`myriad.fusion.make_detector`) fitted on its held-apart
references (few-shot) or on its references as a small training set (one-class).
Maps are the *calibrated* maps (the documented [0, 1] scale, threshold 0.5) resized
to the VPG input size, so the LMM never depends on an expert's raw scale.

``mode="cache"`` computes every item's map once and stores it as safetensors under a
key hashed from everything that changes maps (expert name and config, data config,
seed, map size, Myriad version): another expert never reuses stale maps.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from myriad.training.data import Item, TrainingPool


def references_used(pool: TrainingPool, shots: int | None) -> int:
    """How many held-apart references a source's expert fits on: the first ``shots`` (None: all of them)."""
    return pool.data.reference_shots if shots is None else min(shots, pool.data.reference_shots)


def cache_key(pool: TrainingPool, expert: str, expert_config: dict, map_size: int, shots: int | None = None) -> str:
    """Hash of every setting that changes the maps (``shots``: references the expert fits on)."""
    from myriad import __version__
    from myriad.fusion import is_fused, member_configs
    from myriad.plugins import get_expert_info

    members = {}
    for name, config in member_configs(expert, expert_config).items():
        info = get_expert_info(name)
        members[name] = {
            "distribution": info.distribution,
            "expert_version": info.version,
            "config": info.config.model_validate(config).model_dump(mode="json"),
        }
    if is_fused(expert):
        described = {"members": members}
    else:  # one expert: its description at the top level
        described = next(iter(members.values()))
    # The maps depend on the references the expert fits on (the first ``shots`` of a fixed sequence), not on
    # how many the data config holds: raising ``reference_shots`` for one source keeps the others' caches.
    data = pool.data.model_dump(mode="json")
    data.pop("reference_shots")
    if not data.get("visible_fraction"):  # added later: recipes without it keep their caches
        data.pop("visible_fraction", None)
    payload = {
        "expert": expert,
        **described,
        "data": data,
        "seed": pool.seed,
        "painted_fraction": pool.painted_fraction,
        "map_size": map_size,
        "myriad": __version__,
        "shots": references_used(pool, shots),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class ExpertMaps:
    """Calibrated expert maps of training items, online or from a safetensors cache."""

    def __init__(
        self,
        pool: TrainingPool,
        expert: str,
        expert_config: dict,
        map_size: int = 224,
        cache_dir: Path | None = None,
        batch_size: int = 16,
        shots: int | None = None,
    ) -> None:
        self.pool = pool
        self.expert = expert
        self.expert_config = dict(expert_config)
        self.map_size = map_size
        self.batch_size = batch_size
        self.shots = shots
        self.cache_dir = None
        if cache_dir is not None:
            self.cache_dir = Path(cache_dir) / cache_key(pool, expert, expert_config, map_size, shots)
        self._detectors: dict[int, Any] = {}
        self._cached: dict[int, dict[str, Any]] = {}

    @property
    def false_alarm_rate(self) -> float:
        """The expected share of normal images this source's expert flags, as ``Detector.false_alarm_rate``
        gives it after fitting on the source's references: ``1 / (n + 1)`` per member for the paper's
        threshold over ``n`` held-out references (one reference: its mirror images, counted as 1),
        combined over a fusion's members (computed from the config: cached maps need no fitted expert)."""
        from myriad.calibration import combined_false_alarm_rate, paper_false_alarm_rate
        from myriad.fusion import member_names

        n = references_used(self.pool, self.shots)
        rate = combined_false_alarm_rate([paper_false_alarm_rate(n)] * len(member_names(self.expert)))
        assert rate is not None
        return rate

    def detector(self, category: int) -> Any:
        """The calibrated detector of a category (fitted on first use)."""
        if category not in self._detectors:
            from myriad.fusion import make_detector

            detector = make_detector(self.expert, self.expert_config)
            detector.fit(self.pool.references(category)[: references_used(self.pool, self.shots)])
            self._detectors[category] = detector
        return self._detectors[category]

    def _compute(self, category: int, images: Sequence[np.ndarray]) -> np.ndarray:
        from myriad.images import resize_map

        out = []
        for start in range(0, len(images), self.batch_size):
            for det in self.detector(category).detect(list(images[start : start + self.batch_size])):
                out.append(resize_map(det.anomaly_map, self.map_size, self.map_size))
        return np.stack(out).astype(np.float16)

    def _category_cache(self, category: int) -> dict[str, Any]:
        if category in self._cached:
            return self._cached[category]
        from myriad.io import atomic_write_text, load_tensors, save_tensors

        assert self.cache_dir is not None
        path = self.cache_dir / f"{self.pool.categories[category].name}.safetensors"
        if path.is_file():
            tensors = load_tensors(path)
        else:
            n = self.pool.data.images_per_category
            normal = [self.pool.item(category, i, False).image for i in range(n)]
            anomalous = [self.pool.item(category, i, True).image for i in range(n)]
            tensors = {"normal": self._compute(category, normal), "anomalous": self._compute(category, anomalous)}
            save_tensors(tensors, path)
            key = {"expert": self.expert, "config": self.expert_config, "shots": self.shots}
            atomic_write_text(self.cache_dir / "key.json", json.dumps(key, indent=2))
            tensors = load_tensors(path)
        self._cached[category] = tensors
        return tensors

    def prepare(self, progress: bool = True, label: str = "expert maps") -> None:
        """Fill the cache for every category up front (with a progress bar)."""
        if self.cache_dir is None:
            return
        from tqdm.auto import tqdm

        for c in tqdm(range(len(self.pool.categories)), desc=label, unit="category", disable=not progress):
            self._category_cache(c)

    def maps(self, items: Sequence[Item]) -> "Any":
        """``B x 1 x S x S`` float32 tensor of calibrated maps for ``items``."""
        import torch

        rows = []
        for item in items:
            if self.cache_dir is not None:
                cached = self._category_cache(item.category)["anomalous" if item.anomalous else "normal"]
                rows.append(cached[item.index].float())
            else:
                rows.append(torch.from_numpy(self._compute(item.category, [item.image])[0]).float())
        return torch.stack(rows)[:, None]


class MapMixture:
    """Maps from several sources (:class:`~myriad.training.config.MapSource`); each item names its source."""

    def __init__(
        self, pool: TrainingPool, expert: str, sources: Sequence[Any], map_size: int = 224, cache_dir: Path | None = None
    ) -> None:
        if not sources:
            raise ValueError("a map mixture needs at least one source")
        self.sources = list(sources)
        self.members = [
            ExpertMaps(pool, getattr(s, "expert", None) or expert, s.expert_config, map_size=map_size,
                       cache_dir=cache_dir, shots=s.shots)
            for s in self.sources
        ]

    def prepare(self, progress: bool = True) -> None:
        """Fill every source's cache (one progress bar per source)."""
        for n, (source, member) in enumerate(zip(self.sources, self.members)):
            shots = "all" if source.shots is None else source.shots
            label = ("expert maps" if len(self.members) == 1
                     else f"expert maps {n + 1}/{len(self.members)} ({member.expert}, shots={shots})")
            member.prepare(progress=progress, label=label)

    def false_alarm_rates(self, sources: Sequence[int] | None, count: int) -> list[float]:
        """Each item's expected false-alarm rate of its source's expert (:attr:`ExpertMaps.false_alarm_rate`)."""
        if sources is None:
            return [self.members[0].false_alarm_rate] * count
        return [self.members[s].false_alarm_rate for s in sources]

    def maps(self, items: Sequence[Item], sources: Sequence[int] | None = None) -> "Any":
        """``B x 1 x S x S`` maps of ``items``; ``sources[k]`` picks item k's source (default: the first)."""
        import torch

        if sources is None:
            return self.members[0].maps(items)
        if len(sources) != len(items):
            raise ValueError(f"{len(items)} items but {len(sources)} source indices")
        return torch.cat([self.members[s].maps([item]) for item, s in zip(items, sources)])
