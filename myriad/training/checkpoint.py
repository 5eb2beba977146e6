"""Training checkpoints: trainable weights + optimizer state, safetensors, written atomically.

A checkpoint ``step-000100`` is two files, ``.safetensors`` (tensors: the trainable
parameters under ``model.``, AdamW moments under ``optim.``) and ``.json`` (step,
phase, losses so far, config hash). ``latest.json`` names the newest complete one and
is written last, so an interrupted save never becomes the resume point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from myriad.errors import WeightsError
from myriad.io import atomic_write_text, load_tensors, save_tensors

LATEST = "latest.json"


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
