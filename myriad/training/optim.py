"""Optimiser pieces: AdamW parameter groups and the per-step cosine schedule."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from myriad.training.config import Phase

_NO_DECAY_HINTS = ("bias", "norm", "layernorm", "ln_vision", "layer_norm")


def named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters with their names, in a stable order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight decay on matrices; none on biases, norms and 1-d parameters."""
    decay, no_decay = [], []
    for name, param in named_trainable(model):
        lowered = name.lower()
        if param.ndim <= 1 or any(h in lowered for h in _NO_DECAY_HINTS):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def schedule(step: int, phases: Sequence[Phase]) -> tuple[int, float]:
    """(phase index, learning rate) at global ``step``: linear warm-up, then cosine to ``min_lr`` per phase."""
    start = 0
    for index, phase in enumerate(phases):
        if step < start + phase.steps:
            local = step - start
            if local < phase.warmup_steps:
                return index, phase.lr * (local + 1) / phase.warmup_steps
            span = max(1, phase.steps - phase.warmup_steps)
            progress = (local - phase.warmup_steps) / span
            return index, phase.min_lr + 0.5 * (phase.lr - phase.min_lr) * (1 + math.cos(math.pi * progress))
        start += phase.steps
    last = phases[-1]
    return len(phases) - 1, last.min_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
