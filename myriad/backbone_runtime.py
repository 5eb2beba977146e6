"""Frozen CNN backbones run on an inference runtime (OpenVINO or ONNX Runtime), with torch as the reference.

A :class:`~myriad.backbone.FeatureBackbone` on the CPU can hand its forward pass to a runtime made for
inference: the frozen model is exported once to ONNX into the cache folder (``$MYRIAD_CACHE/backbones``,
default ``~/.cache/myriad/backbones``; the file name holds a digest of the weights, stages and export
settings, written atomically), loaded by the runtime, and checked against torch on a probe batch before it
is used. Any failure (runtime not installed, export or load failed, an exported file that does not match
the model, outputs that differ from torch's beyond :data:`PARITY_TOLERANCE`) leaves the backbone on torch
and says so in one :class:`BackboneRuntimeWarning` line: never a silent difference in scores.

Runtimes (``runtime=``): ``"auto"`` (the default: OpenVINO if installed, else ONNX Runtime if installed,
else torch), ``"openvino"``, ``"onnxruntime"``, ``"torch"``. Measured on 2 cores of an AMD EPYC (Lite0,
512 px, batch 8): see ``benchmarks/results/speed.md``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.errors import ConfigError, MyriadWarning

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import nn

#: Accepted values of ``runtime``.
RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
#: Runtimes ``"auto"`` tries, in order (the first one installed is used).
AUTO_ORDER = ("openvino", "onnxruntime")
#: Largest difference allowed between a runtime's and torch's features on the probe batch, relative to the
#: largest torch feature (measured: OpenVINO 0, ONNX Runtime 2e-6).
PARITY_TOLERANCE = 1e-4
#: ONNX opset of the export.
OPSET = 17
#: Layout of the exported outputs (part of the cache key).
LAYOUT = "nhwc"


class BackboneRuntimeWarning(MyriadWarning, RuntimeWarning):
    """A backbone stays on torch (the reason is the message, one line)."""


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a :class:`ConfigError`."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    return runtime


def installed_runtimes() -> list[str]:
    """The inference runtimes importable here (a cheap check: nothing is imported)."""
    return [name for name in AUTO_ORDER if importlib.util.find_spec(name) is not None]  # each is its package's name


def resolve_runtime(runtime: str) -> str:
    """The runtime to use for ``runtime``: ``auto`` -> the first installed (else ``torch``); a named runtime that is
    not installed -> ``torch``, with a warning naming the extra to install."""
    check_runtime(runtime)
    installed = installed_runtimes()
    if runtime == "auto":
        return installed[0] if installed else "torch"
    if runtime != "torch" and runtime not in installed:
        _warn(f"runtime {runtime!r} is not installed (pip install 'myriad-iad[{runtime}]'); the backbone runs on torch")
        return "torch"
    return runtime


def cache_folder() -> Path:
    """``$MYRIAD_CACHE/backbones`` (default ``~/.cache/myriad/backbones``)."""
    root = os.environ.get("MYRIAD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "myriad") / "backbones"


def model_digest(model: "nn.Module", facts: dict[str, Any]) -> str:
    """sha256 of the model's tensors (names, shapes, bytes), ``facts`` and the export settings."""
    import torch

    digest = hashlib.sha256(json.dumps({**facts, "opset": OPSET, "torch": torch.__version__, "layout": LAYOUT},
                                       sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _export(model: "nn.Module", outputs: int, path: Path) -> None:
    """Write ``model`` (``B x 3 x H x W`` -> ``outputs`` maps; batch and sides dynamic) to ``path`` atomically."""
    import torch

    class Tupled(torch.nn.Module):
        def __init__(self, inner: "nn.Module") -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: "torch.Tensor") -> tuple["torch.Tensor", ...]:
            # channels last (B x h x w x C): torch reads them back as channels-last NCHW without a copy, the
            # layout its pooling and the patch rows are fastest on
            return tuple(f.permute(0, 2, 3, 1) for f in self.inner(x))

    names = [f"stage{i}" for i in range(outputs)]
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, **{n: {0: "batch", 1: f"h{i}", 2: f"w{i}"} for i, n in enumerate(names)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Tupled(model).eval(), (torch.zeros(1, 3, 64, 64),), str(tmp), input_names=["images"],
                              output_names=names, dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class RuntimeRunner:
    """An exported backbone loaded by OpenVINO or ONNX Runtime: ``B x 3 x H x W`` float32 -> the stage maps,
    each ``B x h x w x C`` (channels last)."""

    def __init__(self, path: Path, runtime: str, threads: int) -> None:
        self.path = Path(path)
        self.runtime = runtime
        self._lock = threading.Lock()
        if runtime == "openvino":
            import openvino as ov

            core = ov.Core()
            self._compiled = core.compile_model(str(self.path), "CPU", {
                "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            })
            self._request = self._compiled.create_infer_request()
        elif runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        else:
            raise ConfigError(f"runtime {runtime!r}: expected openvino or onnxruntime")

    def __call__(self, batch: "np.ndarray") -> list["np.ndarray"]:
        """The stage maps (``B x h x w x C``) of a contiguous float32 ``B x 3 x H x W`` array."""
        if self.runtime == "onnxruntime":
            return list(self._session.run(None, {"images": batch}))
        with self._lock:  # one infer request, reused; its outputs are copied before the next run
            results = self._request.infer({0: batch})
            return [results[output].copy() for output in self._compiled.outputs]


def _warn(message: str) -> None:
    warnings.warn(message, BackboneRuntimeWarning, stacklevel=3)


def parity_error(model: "nn.Module", runner: RuntimeRunner, shape: Sequence[int] = (2, 3, 72, 104)) -> float:
    """The largest difference between the runner's and torch's maps on a fixed random batch, relative to the
    largest torch value (inf where the shapes differ)."""
    import numpy as np
    import torch

    probe = torch.rand(tuple(shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        reference = [t.float().numpy() for t in model(probe)]
    candidate = [m.transpose(0, 3, 1, 2) for m in runner(np.ascontiguousarray(probe.numpy()))]
    if len(reference) != len(candidate) or any(a.shape != b.shape for a, b in zip(reference, candidate)):
        return float("inf")
    scale = max(float(np.abs(a).max()) for a in reference) or 1.0
    return max(float(np.abs(a - b).max()) for a, b in zip(reference, candidate)) / scale


def accelerate(model: "nn.Module", runtime: str, facts: dict[str, Any], threads: int | None = None,
               folder: Path | None = None) -> RuntimeRunner | None:
    """A runner for the frozen ``model`` on ``runtime`` (see the module doc), or None: stay on torch.

    ``facts`` name what the model is (backbone, stages) for the cache key. The exported file is reused
    when its name and its side file's digest match; a runner whose outputs differ from torch's beyond
    :data:`PARITY_TOLERANCE` is refused (one warning line) and the export is made again once.
    """
    import torch

    chosen = resolve_runtime(runtime)
    if chosen == "torch":
        return None
    digest = model_digest(model, facts)
    folder = folder or cache_folder()
    path = folder / f"{facts.get('backbone', 'backbone')}-{digest[:16]}.onnx"
    side = path.with_suffix(".json")
    outputs = int(facts.get("outputs", 1))
    threads = int(threads or torch.get_num_threads())
    for attempt in range(2):
        try:
            stored = json.loads(side.read_text()) if side.is_file() else {}
            reused = not attempt and path.is_file() and stored.get("digest") == digest
            if not reused:
                _export(model, outputs, path)
                tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps({**facts, "digest": digest, "opset": OPSET, "torch": torch.__version__}, indent=1))
                os.replace(tmp, side)
            runner = RuntimeRunner(path, chosen, threads)
            error = parity_error(model, runner)
        except Exception as exc:  # noqa: BLE001 - any export or runtime failure means: stay on torch, say why
            _warn(f"{path}: backbone export for {chosen} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                  "the backbone runs on torch")
            return None
        if error <= PARITY_TOLERANCE:
            return runner
        if not reused:
            _warn(f"{path}: {chosen}'s features differ from torch's by {error:.2e} (relative; allowed "
                  f"{PARITY_TOLERANCE:.0e}); the backbone runs on torch")
            return None
        _warn(f"{path}: the exported file's features do not match the model (difference {error:.2e}); exported again")
    return None
