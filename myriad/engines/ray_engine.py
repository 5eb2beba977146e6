"""``myriad inspect --engine ray``: the same batch run on a Ray cluster, using every node it has.

A Ray Data pipeline of four stages:

1. **read**: the list of images, in blocks of ``--batch-size``;
2. **expert actors** (each loads the fitted profile once): read the images and score them
   (:func:`myriad.batch_run.detect_paths`);
3. **Myriad actors** (each loads the profile's verdict and rules, and the LMM, once; one per GPU
   with ``--device cuda``): the verdict, the answers, the findings, the overlays and the rows
   (:func:`myriad.batch_run.answer_detected`). With ``--lmm none`` there is no LMM to hold, and the
   expert actors make the rows themselves;
4. **write**: each block's rows to its own file, named by the sha256 of its image paths and
   written atomically (:func:`myriad.run_results.write_block`), so a retried task replaces its
   file and never adds a row; the driver merges the files into the results when the run ends
   (:meth:`myriad.run_results.ResultsWriter.merge_blocks`), and ``--resume`` merges those of a
   run killed before that.

Rows and decisions are those of one process: both stages are the functions the single-process
run calls. The rows also stream back to the driver, which only shows them and moves the progress
bar. An actor that dies mid-batch is restarted by Ray and its batch redone; overlays have names
fixed by their image path and are written atomically, so a redone batch replaces them.

Ray is an optional extra (``pip install 'myriad-iad[ray]'``): nothing imports it until this
engine runs. Orchestration only.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from myriad.errors import MissingExtraError, MyriadError

__all__ = ["ActorPlan", "RaySettings", "plan_actors", "run_ray"]


def _inspector(profile: str, settings: dict[str, Any], lmm: Any) -> Any:
    """An inspector over the fitted ``profile`` (with the LMM ``lmm``; None: the expert alone) and the run's rules."""
    from myriad.inspection import Inspector
    from myriad.profiles import load_profile

    loaded = load_profile(profile)
    inspector = Inspector(
        loaded.expert, lmm=lmm, device=settings["device"], precision=settings["precision"],
        answers=settings["answers"], verdict=settings["verdict"],
    ).use_profile(loaded)
    if settings.get("rules") is not None:
        from myriad.acceptance import AcceptanceRules

        inspector.set_rules(AcceptanceRules.model_validate(settings["rules"]))
    return inspector


class _ExpertActor:
    """Stage 2: the profile's expert loaded once, then batch after batch of paths to detections (or, when the run
    has no LMM, straight to rows)."""

    def __init__(self, profile: str, settings: dict[str, Any], folder: str, rows: bool, pause_s: float = 0.0) -> None:
        self.inspector = _inspector(profile, settings, settings["lmm"] if rows else None)
        self.rows, self.ask, self.folder, self.pause_s = rows, settings.get("ask"), Path(folder), pause_s

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from myriad.batch_run import detect_paths, inspect_paths

        if self.pause_s:
            time.sleep(self.pause_s)
        paths = [Path(str(p)) for p in batch["path"]]
        if self.rows:
            rows = inspect_paths(self.inspector, paths, [str(n) for n in batch["overlay"]], self.ask, self.folder)
            return _rows_batch(batch, rows)
        staged = detect_paths(self.inspector, paths).split()  # scored as one batch, passed on image by image
        return {"path": batch["path"], "overlay": batch["overlay"],
                "staged": np.asarray([pickle.dumps(one) for one in staged], dtype=object)}


class _MyriadActor:
    """Stage 3: the profile's verdict and rules and the LMM loaded once, then detections to rows."""

    def __init__(self, profile: str, settings: dict[str, Any], folder: str) -> None:
        self.inspector = _inspector(profile, settings, settings["lmm"])
        self.ask, self.folder = settings.get("ask"), Path(folder)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from myriad.batch_run import DetectedPaths, answer_detected

        # each image's detections, pickled by this run's own expert actors; answered as one batch
        staged = DetectedPaths.join([pickle.loads(blob) for blob in batch["staged"]])  # noqa: S301
        rows = answer_detected(self.inspector, staged, [str(n) for n in batch["overlay"]], self.ask, self.folder)
        return _rows_batch(batch, rows)


def _rows_batch(batch: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A Ray batch of rows (as JSON), one per image of ``batch``, in its order."""
    import numpy as np

    return {"path": np.asarray([str(p) for p in batch["path"]], dtype=object),
            "row": np.asarray([json.dumps(r) for r in rows], dtype=object)}


def _write_block(batch: dict[str, Any], blocks: str) -> dict[str, Any]:
    """Stage 4: a block's rows to their own file (:func:`myriad.run_results.write_block`); passed on for the driver."""
    from myriad.run_results import write_block

    write_block(Path(blocks), [json.loads(r) for r in batch["row"]])
    return batch


class RaySettings:
    """Where and how wide: ``address`` (None: this machine, or ``RAY_ADDRESS``), actors and their resources."""

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                 batch_size: int = 8, pause_s: float = 0.0) -> None:
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.batch_size = batch_size
        #: seconds each actor waits before a batch (0; tests use it to kill a worker mid-run)
        self.pause_s = pause_s


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(f"--engine ray needs Ray ({exc.name} is missing): pip install 'myriad-iad[ray]'") from None
    return ray


#: Seconds to wait for a TCP answer from ``--address`` before giving up (Ray itself retries for minutes).
PROBE_TIMEOUT_S = 5.0


def probe_address(address: str) -> None:
    """Refuse in one line, within :data:`PROBE_TIMEOUT_S`, an ``--address`` (``HOST:PORT`` or ``ray://HOST:PORT``)
    where nothing answers; ``auto`` and ``local`` are Ray's own and are not probed."""
    import socket

    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise MyriadError(f"--address {address}: give HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise MyriadError(f"--address {address}: no Ray cluster answers at {host}:{port} ({exc.strerror or exc})") from None


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or start one here); True when this call started Ray (and must stop it)."""
    if ray.is_initialized():
        return False
    if address:
        probe_address(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=True)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        where = f"--address {address}" if address else "a local Ray cluster"
        raise MyriadError(f"{where}: cannot connect ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return True


@dataclass(frozen=True)
class ActorPlan:
    """How many actors of each stage and the CPUs each holds (every actor the same share): ``myriad`` is 0 when the
    run has no LMM (the expert actors make the rows); ``myriad_gpus`` is each Myriad actor's GPU."""

    experts: int
    myriad: int
    cpus_per_actor: float
    myriad_gpus: float = 0.0


def plan_actors(cpus: float, gpus: float, use_gpu: bool, has_lmm: bool, workers: int | None = None,
                cpus_per_worker: float = 1.0) -> ActorPlan:
    """The actor pools for a cluster of ``cpus`` CPUs and ``gpus`` GPUs.

    One actor per CPU (measured: two one-thread actors beat one two-thread process on 2 cores,
    ``benchmarks/results/scale.md``), split between the stages when there is an LMM (the expert and the
    LMM take about the same time per image on a CPU); with ``--device cuda`` one Myriad actor per GPU and the
    expert actors on the CPUs. ``workers`` fixes the actors of each stage. An actor pool that takes every CPU
    starves Ray's read and write tasks, so the actors share all but half a CPU.
    """

    def share(actors: int) -> float:
        return min(cpus_per_worker, max(0.05, (cpus - 0.5) / actors))

    if not has_lmm:
        experts = workers or (max(1, int(gpus)) if use_gpu else max(1, math.floor(cpus / cpus_per_worker)))
        return ActorPlan(experts, 0, cpus_per_worker if use_gpu else share(experts))
    if use_gpu:
        myriad = workers or max(1, int(gpus))
        experts = workers or max(1, math.floor(max(cpus - myriad, 1.0) / cpus_per_worker))
        return ActorPlan(experts, myriad, share(experts + myriad), 1.0)
    total = max(2, math.floor(cpus / cpus_per_worker))
    experts = workers or math.ceil(total / 2)
    myriad = workers or max(1, total - experts)
    return ActorPlan(experts, myriad, share(experts + myriad))


def run_ray(
    items: Sequence[tuple[Path, str]],
    profile: Path,
    settings: dict[str, Any],
    folder: Path,
    blocks: Path,
    on_rows: Callable[[list[dict[str, Any]]], None],
    ray_settings: RaySettings | None = None,
) -> dict[str, Any]:
    """Inspect ``items`` (path, overlay name) with the fitted ``profile`` on Ray (see the module docstring): overlays
    into ``folder``, each block's rows into a file under ``blocks`` (the caller merges them:
    :meth:`myriad.run_results.ResultsWriter.merge_blocks`); ``on_rows`` gets each delivered block's rows to show.
    ``settings``: ``lmm``, ``device``, ``precision``, ``answers``, ``verdict``, ``ask``, ``rules`` (as JSON).
    Returns what ran: actors per stage, CPUs and GPUs of the cluster, seconds."""
    ray = _import_ray()
    rs = ray_settings or RaySettings()
    started_here = _connect(ray, rs.address)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1.0)), float(resources.get("GPU", 0.0))
        use_gpu = str(settings.get("device", "cpu")).startswith("cuda")
        if use_gpu and gpus < 1:
            raise MyriadError("--device cuda: the Ray cluster has no GPU")
        has_lmm = settings.get("lmm") not in (None, "none")
        plan = plan_actors(cpus, gpus, use_gpu, has_lmm, rs.workers, rs.cpus_per_worker)
        started = time.perf_counter()
        if items:
            common = {"profile": str(Path(profile).resolve()), "settings": settings, "folder": str(Path(folder).resolve())}
            dataset = ray.data.from_items(
                [{"path": str(p), "overlay": name} for p, name in items],
                override_num_blocks=max(1, math.ceil(len(items) / rs.batch_size)),
            )
            staged = dataset.map_batches(
                _ExpertActor, fn_constructor_kwargs={**common, "rows": not has_lmm, "pause_s": rs.pause_s},
                batch_size=rs.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.experts),
                num_cpus=plan.cpus_per_actor, num_gpus=1 if use_gpu and not has_lmm else 0,
            )
            rows = staged if not has_lmm else staged.map_batches(
                _MyriadActor, fn_constructor_kwargs=common, batch_size=rs.batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=plan.myriad), num_cpus=plan.cpus_per_actor,
                num_gpus=plan.myriad_gpus,
            )
            written = rows.map_batches(_write_block, fn_kwargs={"blocks": str(Path(blocks).resolve())},
                                       batch_size=None, batch_format="numpy", num_cpus=0.1)
            for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
                on_rows([json.loads(r) for r in batch["row"]])
        return {"experts": plan.experts, "myriad": plan.myriad, "cpus": cpus, "gpus": gpus,
                "cpus_per_actor": plan.cpus_per_actor, "seconds": time.perf_counter() - started}
    finally:
        if started_here:
            ray.shutdown()
