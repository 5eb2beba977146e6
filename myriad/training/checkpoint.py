"""Training checkpoints: trainable weights + optimizer state, safetensors, written atomically.

A checkpoint ``step-000100`` is two files, ``.safetensors`` (tensors: the trainable
parameters under ``model.``, AdamW moments under ``optim.``) and ``.json`` (step,
phase, losses so far, the run's config). ``latest.json`` names the newest complete one and
is written last, so an interrupted save never becomes the resume point.

A save killed half-way leaves a hidden ``.NAME.XXXX.tmp`` file (see
:func:`myriad.io.atomic_path`); :func:`remove_stale_temporaries` deletes them when the next
run starts. A run resumes only with the config it was started with, apart from
:data:`RUN_LOCAL_FIELDS` (:func:`config_differences`; ``myriad train --force`` overrides).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from myriad.errors import ConfigError, WeightsError
from myriad.io import atomic_write_text, load_tensors, save_tensors

LATEST = "latest.json"

#: config fields that may change between a run and its resumption (where and how fast it runs, not what it learns)
RUN_LOCAL_FIELDS = frozenset({"output_dir", "cache_dir", "maps", "device", "threads", "checkpoint_every", "keep_checkpoints"})


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the ``.NAME.XXXX.tmp`` files an interrupted atomic write left in ``directory``; returns them."""
    if not directory.is_dir():
        return []
    removed = []
    for path in directory.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp") and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}{index}."))
        out[f"{prefix}len"] = len(value)
        return out
    return {prefix[:-1]: value}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field: saved -> current"`` for every setting (dotted path) that differs, ignoring :data:`RUN_LOCAL_FIELDS`."""
    keep = lambda d: {k: v for k, v in d.items() if k not in RUN_LOCAL_FIELDS}  # noqa: E731
    old, new = _flatten(keep(saved)), _flatten(keep(current))
    missing = object()
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            show = lambda v: "(unset)" if v is missing else json.dumps(v)  # noqa: E731
            diffs.append(f"{key}: {show(a)} -> {show(b)}")
    return diffs


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    step: int
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out = {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        for key, value in state.items():
            out[f"optim.{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def save_checkpoint(
    directory: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    param_names: dict[int, str],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``step-NNNNNN.{safetensors,json}`` then point ``latest.json`` at it; prune old ones."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"step-{step:06d}"
    tensors = {f"model.{k}": v for k, v in model_state.items()}
    tensors.update(_optimizer_tensors(optimizer, param_names))
    save_tensors(tensors, directory / f"{stem}.safetensors")
    atomic_write_text(directory / f"{stem}.json", json.dumps({**meta, "step": step}, indent=2))
    atomic_write_text(directory / LATEST, json.dumps({"checkpoint": stem, "step": step}))
    existing = sorted(directory.glob("step-*.json"))
    for old in existing[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".safetensors").unlink(missing_ok=True)
    return directory / f"{stem}.safetensors"


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``directory``, or None."""
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    stem = json.loads(pointer.read_text())["checkpoint"]
    meta_path = directory / f"{stem}.json"
    if not meta_path.is_file():
        raise WeightsError(f"{meta_path}: named by {pointer} but missing")
    tensors = load_tensors(directory / f"{stem}.safetensors")
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k[len("optim.") :]: v for k, v in tensors.items() if k.startswith("optim.")}
    meta = json.loads(meta_path.read_text())
    return Checkpoint(int(meta["step"]), model_state, optim_state, meta)


def check_same_run(checkpoint: Checkpoint, current: dict[str, Any], directory: Path, force: bool = False) -> None:
    """Refuse (one-line :class:`~myriad.errors.ConfigError`) to resume ``checkpoint`` under another config unless ``force``."""
    saved = checkpoint.meta.get("config")
    if force or not isinstance(saved, dict):
        return
    diffs = config_differences(saved, current)
    if not diffs:
        return
    shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
    raise ConfigError(
        f"{directory}: the checkpoint at step {checkpoint.step} belongs to a run with another config ({shown}); "
        "pass --force to resume it with this config anyway, or --no-resume to start over"
    )


def restore_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor], param_names: dict[int, str]) -> None:
    """Put AdamW moments saved by :func:`save_checkpoint` back into ``optimizer``."""
    by_name: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, field = key.rpartition(".")
        by_name.setdefault(name, {})[field] = value
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = by_name.get(param_names[id(param)])
            if state is None:
                continue
            optimizer.state[param] = {k: v.to(param.device) if k != "step" else v for k, v in state.items()}
