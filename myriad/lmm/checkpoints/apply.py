"""Applying mapped tensors to a model part: shape and completeness checks, and the report of what was loaded.

:func:`apply_part` checks ``mapped.parts[part]`` against the model's part, refuses a
tensor the part lacks or a wrong shape (naming the file key and the config fields that
set the shape, from :mod:`myriad.lmm.parts`), loads the rest with ``MyriadLMM.load_part``
and records it in a :class:`LoadReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from myriad.errors import WeightsError
from myriad.lmm.checkpoints.keymaps import MappedState
from myriad.lmm.parts import full_key, get_part

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.model import MyriadLMM

__all__ = ["LoadReport", "apply_part", "expected_shapes", "not_a", "refuse_if_empty", "require_eva_backbone"]


@dataclass
class LoadReport:
    """What one loader did: model keys written, model keys not provided, file keys not used."""

    source: str
    layout: str
    parts: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every tensor of the parts this loader fills came from the file."""
        return not self.missing

    def summary(self, limit: int = 5) -> str:
        """A few readable lines (long key lists are cut to ``limit`` examples)."""

        def cut(keys: list[str]) -> str:
            more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = [f"{self.layout} <- {self.source}: {len(self.loaded)} tensor(s) into {', '.join(self.parts) or 'nothing'}"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {cut(self.missing)}")
        if self.unexpected:
            lines.append(f"  unused file keys ({len(self.unexpected)}): {cut(self.unexpected)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def expected_shapes(part_obj: Any) -> dict[str, tuple[int, ...]]:
    """The part's own keys and shapes (``{"query_tokens": shape}`` for the query tokens)."""
    import torch

    if isinstance(part_obj, torch.nn.Parameter):
        return {"query_tokens": tuple(part_obj.shape)}
    return {k: tuple(v.shape) for k, v in part_obj.state_dict().items()}


def _part_prefix(expected: Mapping[str, Any], probe: str) -> str:
    """The prefix the part puts before the mapper's keys (``vision_model.`` for the EVA backbone)."""
    for key in expected:
        if key.endswith(probe):
            return key[: len(key) - len(probe)]
    return ""


def _shape_fields(part: str) -> str:
    row = get_part(part)
    return row.shape_fields if row is not None else part


def apply_part(
    model: "MyriadLMM",
    report: LoadReport,
    mapped: MappedState,
    part: str,
    file: Path | str,
    *,
    require_all: bool,
    unknown: str = "raise",
    probe: str | None = None,
) -> list[str]:
    """Check ``mapped.parts[part]`` against the model's part, load it, record it; returns the part keys still missing."""
    tensors = mapped.parts.get(part, {})
    sources = mapped.sources.get(part, {})
    part_obj = model.parts().get(part)
    if part_obj is None:
        if tensors:
            report.unexpected += list(sources.values())
            report.notes.append(f"part {part!r} is switched off in this config; its {len(tensors)} tensor(s) are not loaded")
        return []
    expected = expected_shapes(part_obj)
    prefix = _part_prefix(expected, probe) if probe else ""
    state: dict[str, Any] = {}
    for key, tensor in tensors.items():
        target = prefix + key
        if target not in expected:
            if unknown == "raise":
                raise WeightsError(
                    f"{file}: {sources[key]!r} maps to {full_key(part, target)!r}, which this model does not have; "
                    f"the checkpoint's structure differs from the config (check {_shape_fields(part)})"
                )
            report.unexpected.append(sources[key])
            continue
        if tuple(tensor.shape) != expected[target]:
            raise WeightsError(
                f"{file}: {sources[key]!r} has shape {tuple(tensor.shape)} but {full_key(part, target)!r} "
                f"expects {expected[target]} (check {_shape_fields(part)})"
            )
        state[target] = tensor
    missing = [k for k in expected if k not in state]
    if missing and require_all:
        names = [full_key(part, k) for k in missing]
        raise WeightsError(
            f"{file}: {len(missing)} tensor(s) of part {part!r} are not in the checkpoint, e.g. {names[:4]}"
        )
    if state:
        model.load_part(part, state["query_tokens"] if part == "query_tokens" else state, strict=False)
        if part not in report.parts:
            report.parts.append(part)
        report.loaded += [full_key(part, k) for k in state]
    return missing


def not_a(file: Path | str, what: str, examples: str, state: Mapping[str, Any]) -> WeightsError:
    """The error for a file none of whose keys the layout knows (it names a few of each)."""
    found = ", ".join(repr(k) for k in list(state)[:5]) or "none"
    return WeightsError(
        f"{file}: does not look like {what}: none of its {len(state)} tensor(s) has a known key "
        f"(expected keys like {examples}; found {found})"
    )


def refuse_if_empty(mapped: MappedState, file: Path | str, what: str, examples: str, state: Mapping[str, Any]) -> None:
    """Raise :func:`not_a` when the key map found nothing it knows."""
    if len(mapped) == 0:
        raise not_a(file, what, examples, state)


def require_eva_backbone(model: "MyriadLMM", what: str) -> None:
    """Refuse EVA ViT weights for a model with another backbone (e.g. ``mini``'s Lite0)."""
    kind = model.config.vision.kind
    if kind != "eva_vit":
        raise WeightsError(f"{what} needs the EVA ViT backbone (vision.kind='eva_vit'); this model has {kind!r}")
