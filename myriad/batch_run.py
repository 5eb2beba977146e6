"""One batch of a run: read the images, inspect them, write their overlays, make their rows.

Shared by every engine (the single process of ``myriad inspect`` and the Ray actors of
``--engine ray``) so that both write the same rows. An image that cannot be read or inspected
becomes an *error row* (``image``, ``path``, ``error``) and the others go on. Nothing is printed
here: the caller shows rows (:func:`row_lines`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = ["error_row", "inspect_paths", "row_lines"]


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


def _inspect_readable(inspector: Any, readable: list[tuple[Path, Any]], ask: str | None, rows: dict) -> list[tuple[Path, Any]]:
    """``(path, result)`` of each readable image: the batch at once, or one by one when an image fails it."""
    from myriad.errors import ImageError

    if not readable:
        return []
    try:
        results = inspector.inspect([image for _, image in readable], ask=ask, names=[str(p) for p, _ in readable])
        return list(zip([p for p, _ in readable], results))
    except ImageError as exc:
        if len(readable) == 1:
            rows[readable[0][0]] = error_row(readable[0][0], str(exc))
            return []
    out = []
    for path, image in readable:  # isolate the image at fault; the others are inspected
        try:
            out.append((path, inspector.inspect([image], ask=ask, names=[str(path)])[0]))
        except ImageError as exc:
            rows[path] = error_row(path, str(exc))
    return out


def inspect_paths(
    inspector: Any, paths: Sequence[Path], overlay_names: Sequence[str], ask: str | None, folder: Path
) -> list[dict[str, Any]]:
    """The rows of ``paths``, in order: each image read, inspected (as one batch when it can be) and its overlay
    written to ``folder / overlay_names[i]``; an image that fails is an error row."""
    from myriad.errors import ImageError
    from myriad.images import load_image

    rows: dict[Path, dict[str, Any]] = {}
    readable: list[tuple[Path, Any]] = []
    for path in paths:
        try:
            readable.append((path, load_image(path)))
        except ImageError as exc:
            rows[path] = error_row(path, str(exc))
    names = dict(zip(paths, overlay_names))
    for path, result in _inspect_readable(inspector, readable, ask, rows):
        rows[path] = _result_row(path, result, names[path], folder)
    return [rows[p] for p in paths]


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
