"""The training loop of ``myriad train``: half normal / half synthetic batches, answers-only loss.

Deterministic and resumable: each step's data, route and dropout come from
``(seed, step)`` alone, so a run resumed from a checkpoint follows the same loss curve.
Distributed data-parallel through ``torchrun`` (DDP, gloo on CPU / nccl on GPU): each
rank takes its share of the step's (normal, synthetic) pairs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from myriad.training.config import TrainConfig

ROUTES = {"tpg": (False, True), "vpg_tpg": (True, True), "vpg": (True, False)}  # route -> (use_vpg, use_tpg)
FINAL_WEIGHTS = "trainable.safetensors"


@dataclass
class TrainResult:
    """What a run produced."""

    steps: int
    losses: list[float] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    weights: Path | None = None
    seconds: float = 0.0


def build_model(config: TrainConfig) -> Any:
    """The model named by the config's preset, with real frozen weights for ``mini``."""
    from myriad.lmm.model import MyriadLMM

    if config.preset == "mini":
        from myriad.lmm.config import mini_config

        return MyriadLMM.mini(mini_config(**config.model))
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(config.seed)
    return MyriadLMM(tiny_paper_config(len(tokenizer), **config.model), tokenizer)


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MYRIAD_DIST_BACKEND") != "gloo" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _step_plan(
    config: TrainConfig, step: int, num_categories: int, route_probs: dict[str, float]
) -> tuple[str, list[tuple[int, int, int, bool]]]:
    """The step's route and its (category, image index, map source, ask location) pairs, reproducible
    from (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    names = list(route_probs)
    probs = np.array([route_probs[n] for n in names], dtype=np.float64)
    route = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    pairs = [
        (int(rng.integers(num_categories)), int(rng.integers(config.data.images_per_category)))
        for _ in range(config.batch_size)
    ]
    sources = [0] * len(pairs)
    if len(config.map_sources) > 1:  # drawn after the pairs: single-source runs keep their plans
        weights = np.array([s.weight for s in config.map_sources], dtype=np.float64)
        sources = [int(k) for k in rng.choice(len(weights), size=len(pairs), p=weights / weights.sum())]
    locate = [False] * len(pairs)
    if config.location_fraction > 0:  # drawn last: runs without it keep their plans
        locate = [bool(x) for x in rng.random(len(pairs)) < config.location_fraction]
    return route, [(c, i, k, q) for (c, i), k, q in zip(pairs, sources, locate)]


def seen_items(
    items: list[Any], answer_maps: torch.Tensor, below: float, unseen: bool = True, alarmed: bool = False
) -> list[bool]:
    """Which training items to keep: with ``unseen``, an anomalous item only where its calibrated map
    (``B x 1 x S x S``) reaches ``below`` somewhere (the expert shows it); with ``alarmed``, a normal item only
    where its map stays below ``below`` everywhere (the expert calls it normal). Other items are kept."""
    shown = [float(p) >= below for p in answer_maps.flatten(1).amax(dim=1)]
    return [
        (shown_k or not unseen) if it.anomalous else (not shown_k or not alarmed)
        for it, shown_k in zip(items, shown)
    ]


def set_phase_parts(model: Any, parts: list[str] | None) -> None:
    """Train only ``parts`` (all the model's trainable parts when None); the rest get no gradient."""
    for name, part in model.parts().items():
        if part is not None and name in model.config.trainable:
            part.requires_grad_(parts is None or name in parts)


def train(
    config: TrainConfig,
    resume: bool = True,
    progress: bool = True,
    model: Any = None,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    force: bool = False,
) -> TrainResult:
    """Train the trainable parts of Myriad; returns the loss curve and the final weights' path.

    ``stop_after`` ends the run after that many steps in this call (tests use it to
    simulate an interruption); the checkpoint written then lets a later call resume.
    Resuming refuses a checkpoint saved under another config (a one-line ``ConfigError``
    listing what differs) unless ``force``. Temporary files an interrupted save left in the
    checkpoint and output folders are deleted first.
    """
    from tqdm.auto import tqdm

    from myriad.training.answers import LOCATION_QUESTION, answer_for
    from myriad.training.checkpoint import (
        check_same_run,
        load_latest,
        remove_stale_temporaries,
        restore_optimizer,
        save_checkpoint,
    )
    from myriad.training.data import TrainingPool
    from myriad.training.maps import MapMixture
    from myriad.training.optim import named_trainable, param_groups, schedule, set_lr

    if config.threads:
        torch.set_num_threads(config.threads)
    rank, world = _distributed()
    if config.batch_size % (world * config.grad_accum):
        from myriad.errors import ConfigError

        raise ConfigError(
            f"batch_size {config.batch_size} must be divisible by world size {world} x grad_accum {config.grad_accum}"
        )
    device = torch.device(config.device)
    output = Path(config.output_dir)
    ckpt_dir = output / "checkpoints"
    checkpoint = load_latest(ckpt_dir) if resume else None
    if checkpoint is not None:  # before any model is built or map computed: a refusal costs nothing
        check_same_run(checkpoint, json.loads(config.model_dump_json()), ckpt_dir, force=force)
    if rank == 0:
        remove_stale_temporaries(ckpt_dir)
        remove_stale_temporaries(output)
    torch.manual_seed(config.seed)
    model = model if model is not None else build_model(config)
    model.to(device)
    if config.init_from is not None:
        from myriad.io import load_tensors

        model.load_trainable_state_dict(load_tensors(config.init_from))
    model.train()

    pool = TrainingPool(config.data, config.seed)
    cache_dir = (config.cache_dir or output / "map-cache") if config.maps == "cache" else None
    maps = MapMixture(pool, config.expert, config.sources(), map_size=model.config.prompt_generators.map_size, cache_dir=cache_dir)
    if rank == 0:
        maps.prepare(progress=progress)
    if world > 1:
        torch.distributed.barrier()

    result = TrainResult(steps=0)
    start = 0
    if checkpoint is not None:
        model.load_trainable_state_dict(checkpoint.model_state)
    # The optimizer is built after loading: loading may replace parameter objects.
    named = named_trainable(model)
    param_names = {id(p): n for n, p in named}
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.phases[0].lr, betas=config.betas)
    if checkpoint is not None:
        restore_optimizer(optimizer, checkpoint.optim_state, param_names)
        start = checkpoint.step
        result.losses = list(checkpoint.meta.get("losses", []))[:start]
        result.routes = list(checkpoint.meta.get("routes", []))[:start]

    engine = model
    if world > 1:
        engine = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    use_amp = config.amp and device.type == "cuda"
    total = config.total_steps
    end = total if stop_after is None else min(total, start + stop_after)
    bar = tqdm(range(start, end), initial=start, total=total, desc="train", unit="step", disable=not progress or rank != 0)
    began = time.perf_counter()
    samples = 0
    active_phase = -1
    for step in bar:
        phase_index, lr = schedule(step, config.phases)
        set_lr(optimizer, lr)
        if phase_index != active_phase:
            # Frozen parts keep grad None, so AdamW leaves them (and their state) untouched.
            set_phase_parts(model, config.phases[phase_index].parts)
            active_phase = phase_index
        route, pairs = _step_plan(config, step, len(pool.categories), config.phases[phase_index].routes)
        use_vpg, use_tpg = ROUTES[route]
        mine = pairs[rank::world]
        micro = len(mine) // config.grad_accum
        torch.manual_seed(config.seed * 1_000_003 + step)
        step_loss = torch.zeros((), device=device)
        for m in range(config.grad_accum):
            chunk = mine[m * micro : (m + 1) * micro]
            items = [pool.item(c, i, anomalous) for c, i, _, _ in chunk for anomalous in (False, True)]
            item_sources = [k for _, _, k, _ in chunk for _ in (False, True)]
            answer_maps = maps.maps(items, item_sources)
            rates = maps.false_alarm_rates(item_sources, len(items))
            locate = [q for _, _, _, q in chunk for _ in (False, True)]
            if config.unseen_anomalies == "skip" or config.alarmed_normals == "skip":
                keep = seen_items(items, answer_maps, config.unseen_below, config.unseen_anomalies == "skip",
                                  config.alarmed_normals == "skip")
                items = [it for it, k in zip(items, keep) if k]
                answer_maps = answer_maps[torch.as_tensor(keep)]
                locate = [q for q, k in zip(locate, keep) if k]
                rates = [r for r, k in zip(rates, keep) if k]
            pixels = model.preprocess([it.image for it in items]).to(device)
            answer_maps = answer_maps.to(device)
            answers = [answer_for(it.anomalous, it.mask, q) for it, q in zip(items, locate)]
            instructions = [LOCATION_QUESTION if q else model.config.question for q in locate] if any(locate) else None
            sync = world > 1 and m < config.grad_accum - 1
            context = engine.no_sync() if sync else _null()
            with context, torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = engine(
                    pixels,
                    answer_maps,
                    answers,
                    instructions,
                    use_vpg=use_vpg,
                    use_tpg=use_tpg,
                    decision_weight=config.decision_weight,
                    false_alarm_rates=rates,  # read only by a TPG built with tpg_rate_film
                ).loss / config.grad_accum
                loss.backward()
            step_loss += loss.detach()
            samples += len(items) * world
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for _, p in named if p.grad is not None], config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if world > 1:
            torch.distributed.all_reduce(step_loss)
            step_loss /= world
        value = float(step_loss)
        result.losses.append(value)
        result.routes.append(route)
        if on_step is not None:
            on_step(step, value)
        elapsed = time.perf_counter() - began
        bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}", img_s=f"{samples / max(elapsed, 1e-9):.2f}")
        done = step + 1
        if rank == 0 and (done % config.checkpoint_every == 0 or done == end):
            meta = {"losses": result.losses, "routes": result.routes, "config": json.loads(config.model_dump_json())}
            save_checkpoint(ckpt_dir, done, model.trainable_state_dict(), optimizer, param_names, meta, config.keep_checkpoints)
    bar.close()
    set_phase_parts(model, None)
    result.steps = len(result.losses)
    result.seconds = time.perf_counter() - began
    if rank == 0 and result.steps == total:
        from myriad.io import save_tensors

        result.weights = output / FINAL_WEIGHTS
        save_tensors(
            {k: v.detach().float() if v.dtype == torch.bfloat16 else v for k, v in model.trainable_state_dict().items()},
            result.weights,
            metadata={
                "preset": config.preset,
                "steps": str(total),
                "expert": config.expert,
                # The exact model config, so loaders rebuild the architecture/template trained.
                "myriad_config": model.config.model_dump_json(),
            },
        )
        from myriad.training.curves import plot_losses

        plot_losses(result.losses, result.routes, output / "loss.png")
    if world > 1:
        torch.distributed.barrier()
    return result


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
