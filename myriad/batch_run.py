"""One batch of a run: read the images, inspect them, write their overlays, make their rows.

Two stages, which a cluster may run on different workers: :func:`detect_paths` (read, the expert's
scores and maps) and :func:`answer_detected` (the LMM's verdict and answers, the findings, the
overlays, the rows); :func:`inspect_paths` runs both.

Shared by every engine (the single process of ``myriad inspect`` and the Ray actors of
``--engine ray``) so that both write the same rows. An image that cannot be read or inspected
becomes an *error row* (``image``, ``path``, ``error``) and the others go on. Nothing is printed
here: the caller shows rows (:func:`row_lines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

__all__ = ["DetectedPaths", "answer_detected", "detect_paths", "error_row", "inspect_paths", "row_lines"]


def error_row(path: Path, reason: str) -> dict[str, Any]:
    """The row of an image that could not be read or inspected."""
    message = reason if str(path) in reason else f"{path}: {reason}"
    return {"image": str(path), "path": str(Path(path).resolve()), "error": message}


def _result_row(path: Path, result: Any, overlay_name: str, folder: Path) -> dict[str, Any]:
    """Write an image's overlay (atomically, under a name fixed by its path) and return its row."""
    from PIL import Image

    from myriad.evaluation.overlay import overlay
    from myriad.io import atomic_path

    with atomic_path(folder / overlay_name) as tmp:
        Image.fromarray(overlay(result.pixels, result.overlay_map(), caption=result.caption())).save(tmp, format="PNG")
    return {**result.as_record(), "path": str(Path(path).resolve()), "overlay": overlay_name}


@dataclass
class DetectedPaths:
    """The expert's stage of a batch (:func:`detect_paths`): the paths in order, the error row of each image that
    could not be read or scored, and the others' :class:`~myriad.inspection.DetectedBatch` (named by path)."""

    paths: list[Path]
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    detected: Any = None

    def split(self) -> list["DetectedPaths"]:
        """One :class:`DetectedPaths` per image, in path order (to pass on image by image)."""
        from myriad.inspection import DetectedBatch

        found = {} if self.detected is None else {
            name: DetectedBatch([name], [pixels], [det], self.detected.expert_ms)
            for name, pixels, det in zip(self.detected.names, self.detected.pixels, self.detected.detections)
        }
        return [DetectedPaths([p], {str(p): self.errors[str(p)]} if str(p) in self.errors else {}, found.get(str(p)))
                for p in self.paths]

    @classmethod
    def join(cls, parts: Sequence["DetectedPaths"]) -> "DetectedPaths":
        """Several as one, in order (the inverse of :meth:`split`)."""
        out = cls([])
        for part in parts:
            out.paths.extend(part.paths)
            out.errors.update(part.errors)
            if part.detected is not None:
                out.detected = part.detected if out.detected is None else out.detected + part.detected
        return out


def detect_paths(inspector: Any, paths: Sequence[Path]) -> DetectedPaths:
    """Read ``paths`` and score them with the inspector's expert, as one batch when it can be; an image that cannot
    be read, or that fails the expert, becomes an error row and the others are scored one by one."""
    from myriad.errors import ImageError
    from myriad.images import load_image

    out = DetectedPaths([Path(p) for p in paths])
    readable: list[tuple[Path, Any]] = []
    for path in out.paths:
        try:
            readable.append((path, load_image(path)))
        except ImageError as exc:
            out.errors[str(path)] = error_row(path, str(exc))
    if not readable:
        return out
    try:
        out.detected = inspector.detect([image for _, image in readable], names=[str(p) for p, _ in readable])
        return out
    except ImageError as exc:
        if len(readable) == 1:
            out.errors[str(readable[0][0])] = error_row(readable[0][0], str(exc))
            return out
    for path, image in readable:  # isolate the image at fault; the others are scored
        try:
            one = inspector.detect([image], names=[str(path)])
        except ImageError as exc:
            out.errors[str(path)] = error_row(path, str(exc))
            continue
        out.detected = one if out.detected is None else out.detected + one
    return out


def answer_detected(
    inspector: Any, staged: DetectedPaths, overlay_names: Sequence[str], ask: str | None, folder: Path
) -> list[dict[str, Any]]:
    """The LMM's stage: the rows of a batch :func:`detect_paths` scored, in path order, each image's overlay written
    to ``folder / overlay_names[i]``."""
    rows = dict(staged.errors)
    names = {str(p): n for p, n in zip(staged.paths, overlay_names)}
    if staged.detected is not None:
        for name, result in zip(staged.detected.names, inspector.answer(staged.detected, ask=ask)):
            rows[name] = _result_row(Path(name), result, names[name], folder)
    return [rows[str(p)] for p in staged.paths]


def inspect_paths(
    inspector: Any, paths: Sequence[Path], overlay_names: Sequence[str], ask: str | None, folder: Path
) -> list[dict[str, Any]]:
    """The rows of ``paths``, in order: each image read, inspected (as one batch when it can be) and its overlay
    written to ``folder / overlay_names[i]``; an image that fails is an error row. Both stages in one process."""
    if ask is not None:
        from myriad.answers_text import check_question

        check_question(ask, "ask")
    return answer_detected(inspector, detect_paths(inspector, paths), overlay_names, ask, folder)


def row_lines(shown: str, row: dict[str, Any]) -> list[str]:
    """How a row is shown: ``good/001.png: NORMAL (expert score 0.21 [...], threshold 0.50) "answer"`` and the
    grounded answer under it; an error row is one ``warning:`` line."""
    if "error" in row:
        return [f"warning: {row['error']}"]
    from myriad.answers_text import degeneracy_reasons

    answer_text = row.get("answer") or ""
    withheld = degeneracy_reasons(answer_text) if answer_text else []
    answer = f" (Myriad's answer withheld: {', '.join(withheld)})" if withheld else (f' "{answer_text}"' if answer_text else "")
    members = row.get("members") or {}
    fired = " [" + ", ".join(f"{n} {m['score']:.2f}" for n, m in members.items()) + "]" if members else ""
    ruled = f" [{row['decision_before_rules']} before the rules; {row['rule']}]" if row.get("rule") else ""
    lines = [f"{shown}: {row['decision'].upper()}{ruled} (expert score {row['score']:.2f}{fired}, "
             f"threshold {row['threshold']:.2f}){answer}"]
    grounded = row.get("grounded_answer")
    if grounded and answer_text != grounded:
        lines.append(f"  from the map: {grounded}")
    return lines
