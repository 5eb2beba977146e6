"""``myriad inspect --engine ray``: the same batch run on a Ray cluster, using every node it has.

Ray Data reads the list of images, an actor pool inspects them (each actor loads the fitted
profile, and the LMM, once), and the rows stream back to the driver, which writes them with
the same :class:`~myriad.run_results.ResultsWriter` as the single-process run. Every actor runs
:func:`myriad.batch_run.inspect_paths`, so rows and decisions are those of one process.

Exactly once: an actor that dies mid-batch is restarted by Ray and its batch redone; overlays
have names fixed by their image path and are written atomically, so a redone batch replaces
them; the driver keeps the first row of each image (by ``path``) and drops a repeat, and the
results file is appended per delivered batch, so ``--resume`` works as in one process.

Ray is an optional extra (``pip install 'myriad-iad[ray]'``): nothing imports it until this
engine runs. Orchestration only.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from myriad.errors import MissingExtraError, MyriadError

__all__ = ["RaySettings", "run_ray"]


class _InspectActor:
    """One Ray actor: a fitted profile (and the LMM) loaded once, then batch after batch of paths to rows."""

    def __init__(self, profile: str, settings: dict[str, Any], folder: str, pause_s: float = 0.0) -> None:
        from myriad.inspection import Inspector
        from myriad.profiles import load_profile

        loaded = load_profile(profile)
        self.inspector = Inspector(
            loaded.expert, lmm=settings["lmm"], device=settings["device"], precision=settings["precision"],
            answers=settings["answers"], verdict=settings["verdict"],
        ).use_profile(loaded)
        if settings.get("rules") is not None:
            from myriad.acceptance import AcceptanceRules

            self.inspector.set_rules(AcceptanceRules.model_validate(settings["rules"]))
        self.ask = settings.get("ask")
        self.folder = Path(folder)
        self.pause_s = pause_s

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from myriad.batch_run import inspect_paths

        if self.pause_s:
            time.sleep(self.pause_s)
        paths = [Path(str(p)) for p in batch["path"]]
        rows = inspect_paths(self.inspector, paths, [str(n) for n in batch["overlay"]], self.ask, self.folder)
        return {"path": np.asarray([str(p) for p in batch["path"]], dtype=object),
                "row": np.asarray([json.dumps(r) for r in rows], dtype=object)}


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


def run_ray(
    items: Sequence[tuple[Path, str]],
    profile: Path,
    settings: dict[str, Any],
    folder: Path,
    on_rows: Callable[[list[dict[str, Any]]], None],
    ray_settings: RaySettings | None = None,
) -> dict[str, Any]:
    """Inspect ``items`` (path, overlay name) with the fitted ``profile`` on Ray; ``on_rows`` gets each delivered
    batch's rows (the caller writes them). ``settings``: ``lmm``, ``device``, ``precision``, ``answers``,
    ``verdict``, ``ask``, ``rules`` (as JSON). Returns what ran: actors, CPUs and GPUs of the cluster, seconds."""
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
        # one actor per CPU (measured: 2 one-thread actors beat one 2-thread process on 2 cores, benchmarks/results/
        # scale.md); an actor pool that takes every CPU starves the read tasks, so the actors share all but half a CPU
        workers = rs.workers or (int(gpus) if use_gpu else max(1, math.floor(cpus / rs.cpus_per_worker)))
        cpus_per_worker = rs.cpus_per_worker
        if not use_gpu and workers * cpus_per_worker > cpus - 0.5:
            cpus_per_worker = max(0.05, (cpus - 0.5) / workers)
        started = time.perf_counter()
        if items:
            dataset = ray.data.from_items(
                [{"path": str(p), "overlay": name} for p, name in items],
                override_num_blocks=max(1, math.ceil(len(items) / rs.batch_size)),
            )
            rows = dataset.map_batches(
                _InspectActor,
                fn_constructor_kwargs={"profile": str(Path(profile).resolve()), "settings": settings,
                                       "folder": str(Path(folder).resolve()), "pause_s": rs.pause_s},
                batch_size=rs.batch_size,
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=cpus_per_worker,
                num_gpus=1 if use_gpu else 0,
            )
            for batch in rows.iter_batches(batch_size=None, batch_format="numpy"):
                on_rows([json.loads(r) for r in batch["row"]])
        return {"workers": workers, "cpus": cpus, "gpus": gpus, "cpus_per_worker": cpus_per_worker,
                "seconds": time.perf_counter() - started}
    finally:
        if started_here:
            ray.shutdown()
