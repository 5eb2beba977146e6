"""Buckets of the realistic dev set and metrics per bucket, so that a weakness cannot hide in a mean.

Every defective test image of a realistic dev set (``devset.json``) carries a size bucket,
a visibility bucket, a family (``local`` / ``texture-wide``) and a kind.
:func:`bucket_metrics` takes per-image scores (and, optionally, decisions) and computes,
for each bucket, image AUROC and accuracy of *that bucket's defective images against all
normal test images*: per category (scores of different categories need not share a scale),
then averaged over the categories that have the bucket. :func:`render_bucket_tables`
writes the result as Markdown.

Size buckets (defect area / image area): ``<0.1%``, ``0.1-1%``, ``1-5%``; texture-wide
kinds (full-image mask) are their own bucket ``texture-wide``.

Visibility buckets: local defects by :func:`~myriad.synthetic.realistic_defects.local_visibility`
(RMS change inside the mask / std of the surrounding texture): ``hard`` < 0.5 <= ``medium``
< 1.0 <= ``easy``. Texture-wide defects by
:func:`~myriad.synthetic.realistic_defects.global_visibility` (largest shift of a
whole-image statistic in units of its spread over normal images): ``hard`` < 2 <=
``medium`` < 4 <= ``easy``.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Iterable, Mapping, Sequence

__all__ = [
    "SIZE_BUCKETS",
    "VISIBILITY_BUCKETS",
    "LOCAL_VISIBILITY_THRESHOLDS",
    "GLOBAL_VISIBILITY_THRESHOLDS",
    "GROUPS",
    "size_bucket",
    "visibility_bucket",
    "bucket_metrics",
    "render_bucket_tables",
]

SIZE_BUCKETS = ("<0.1%", "0.1-1%", "1-5%", "texture-wide")
VISIBILITY_BUCKETS = ("hard", "medium", "easy")
#: (hard below, easy from) for local defects: RMS change / local texture std.
LOCAL_VISIBILITY_THRESHOLDS = (0.5, 1.0)
#: (hard below, easy from) for texture-wide defects: statistic shift / normal spread.
GLOBAL_VISIBILITY_THRESHOLDS = (2.0, 4.0)
#: Manifest fields the metrics are grouped by, in report order.
GROUPS = ("size_bucket", "visibility_bucket", "family", "kind")
_TITLES = {"size_bucket": "size", "visibility_bucket": "visibility", "family": "family", "kind": "kind"}


def size_bucket(area_fraction: float, is_global: bool) -> str:
    """Size bucket of a defect covering ``area_fraction`` of the image (texture-wide kinds: their own bucket)."""
    if is_global:
        return "texture-wide"
    if area_fraction < 0.001:
        return "<0.1%"
    if area_fraction < 0.01:
        return "0.1-1%"
    return "1-5%"


def visibility_bucket(value: float, is_global: bool) -> str:
    """``hard`` / ``medium`` / ``easy`` for a visibility ``value`` (thresholds differ for texture-wide kinds)."""
    low, high = GLOBAL_VISIBILITY_THRESHOLDS if is_global else LOCAL_VISIBILITY_THRESHOLDS
    if value < low:
        return "hard"
    if value < high:
        return "medium"
    return "easy"


def _suffix_index(files: Sequence[Mapping]) -> dict[tuple[str, ...], Mapping]:
    index: dict[tuple[str, ...], Mapping] = {}
    for record in files:
        if record.get("split") != "test":
            continue
        index[PurePath(str(record["image"])).parts[-4:]] = record
    return index


def _match(image: str, index: Mapping[tuple[str, ...], Mapping]) -> Mapping | None:
    parts = PurePath(str(image).replace("\\", "/")).parts
    return index.get(tuple(parts[-4:]))


def _auroc(defect_scores: list[float], normal_scores: list[float]) -> float | None:
    if not defect_scores or not normal_scores:
        return None
    from myriad.metrics import image_auroc

    labels = [1] * len(defect_scores) + [0] * len(normal_scores)
    return image_auroc(labels, defect_scores + normal_scores)


def bucket_metrics(predictions: Iterable[Mapping], manifest: Mapping, groups: Sequence[str] = GROUPS) -> dict:
    """Image AUROC and accuracy per bucket of a realistic dev set.

    ``predictions``: one mapping per test image with ``image`` (its path; matched to the
    manifest by its last four parts ``category/test/<defect>/<file>``), ``score`` (higher =
    more anomalous) and optionally ``decision`` (bool/0/1, True = anomalous) and ``label``
    (checked against the manifest). ``manifest``: the dev set's ``devset.json``. For each
    group in ``groups`` and each bucket: ``defective`` and ``normal`` counts,
    ``image_auroc`` (mean over categories of the bucket's defective vs all normal test
    images of that category; None when no category has both), ``image_auroc_by_category``,
    and ``accuracy`` over the bucket's defective plus those categories' normal images (None
    without decisions). Raises :class:`ValueError` naming the image for an unknown image,
    a label that disagrees with the manifest, a missing score or a repeated image.
    """
    files = manifest.get("files")
    if not isinstance(files, list):
        raise ValueError("manifest: no 'files' list (not a dev set manifest)")
    index = _suffix_index(files)
    normal: dict[str, list[tuple[float, bool | None]]] = {}
    defective: list[tuple[Mapping, float, bool | None]] = []
    seen: set[tuple[str, ...]] = set()
    for row in predictions:
        image = row.get("image")
        record = _match(str(image), index) if image is not None else None
        if record is None:
            raise ValueError(f"{image}: not a test image of this dev set's manifest")
        key = PurePath(str(record["image"])).parts[-4:]
        if key in seen:
            raise ValueError(f"{image}: listed twice in the predictions")
        seen.add(key)
        if row.get("score") is None:
            raise ValueError(f"{image}: prediction has no 'score'")
        score = float(row["score"])
        is_defect = record.get("defect") != "good"
        if "label" in row and row["label"] is not None and int(row["label"]) != int(is_defect):
            raise ValueError(f"{image}: label {row['label']} disagrees with the manifest ({record.get('defect')})")
        decision = None if row.get("decision") is None else bool(row["decision"])
        if is_defect:
            defective.append((record, score, decision))
        else:
            normal.setdefault(str(record["category"]), []).append((score, decision))

    result: dict = {"normal": sum(len(v) for v in normal.values()), "defective": len(defective), "groups": {}}
    for group in groups:
        buckets: dict[str, list[tuple[Mapping, float, bool | None]]] = {}
        for item in defective:
            buckets.setdefault(str(item[0].get(group)), []).append(item)
        result["groups"][group] = {name: _bucket(items, normal) for name, items in sorted(buckets.items(), key=lambda kv: _order(group, kv[0]))}
    return result


def _order(group: str, name: str) -> tuple[int, str]:
    known = {"size_bucket": SIZE_BUCKETS, "visibility_bucket": VISIBILITY_BUCKETS, "family": ("local", "texture-wide")}.get(group, ())
    return (known.index(name) if name in known else len(known), name)


def _bucket(items: list[tuple[Mapping, float, bool | None]], normal: Mapping[str, list[tuple[float, bool | None]]]) -> dict:
    by_category: dict[str, list[tuple[float, bool | None]]] = {}
    for record, score, decision in items:
        by_category.setdefault(str(record["category"]), []).append((score, decision))
    aurocs: dict[str, float] = {}
    correct = total = 0
    decided = True
    normals = 0
    for category, rows in sorted(by_category.items()):
        normal_rows = normal.get(category, [])
        normals += len(normal_rows)
        value = _auroc([s for s, _ in rows], [s for s, _ in normal_rows])
        if value is not None:
            aurocs[category] = value
        for _, decision in rows:
            decided &= decision is not None
            correct += int(bool(decision))
            total += 1
        for _, decision in normal_rows:
            decided &= decision is not None
            correct += int(decision is False)
            total += 1
    return {
        "defective": len(items),
        "normal": normals,
        "image_auroc": sum(aurocs.values()) / len(aurocs) if aurocs else None,
        "image_auroc_by_category": aurocs,
        "accuracy": correct / total if decided and total else None,
    }


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def render_bucket_tables(result: Mapping, title: str | None = None) -> str:
    """Markdown: one table per group (size, visibility, family, kind) from :func:`bucket_metrics`."""
    lines: list[str] = []
    if title:
        lines += [f"### {title}", ""]
    lines.append(f"{result.get('defective', 0)} defective and {result.get('normal', 0)} normal test images; "
                 "each bucket's defective images against all normal test images of their categories.")
    for group, buckets in result.get("groups", {}).items():
        lines += ["", f"| {_TITLES.get(group, group)} | defective | normal | image AUROC | accuracy |", "|---|---:|---:|---:|---:|"]
        for name, row in buckets.items():
            lines.append(f"| {name} | {row['defective']} | {row['normal']} | {_fmt(row['image_auroc'])} | {_fmt(row['accuracy'])} |")
    return "\n".join(lines) + "\n"
