"""The AprilGAN expert (VAND 2023 challenge winner): CLIP patch tokens through trained linear adapters.

- ``zero_shot``: for each tapped block (6/12/18/24 of ViT-L-14-336 at 518 px) the adapted,
  L2-normalised patch tokens are compared with the normal/abnormal prompt features
  (``100 * <token, text>``), upsampled bilinearly (align_corners=True) to the run size,
  soft-maxed, and the abnormal probabilities of the four layers are SUMMED (no blur). Image
  score: ``softmax(100 * <CLIP image embedding, text>)[abnormal]``.
- ``few_shot``: a memory of the raw tokens of k normal images at the same blocks; per layer
  each patch's ``min(1 - cos)`` over the memory, upsampled and summed, is ADDED to the
  zero-shot map. Image score: ``0.5 * (text probability + map maximum / number of summed
  layer maps)``. (The reference min-max normalises the map maxima over a class's whole test
  set, which makes a score depend on the other images; dividing by the map's nominal range
  keeps every score a function of its own image. The host's calibration rescales anyway.)
  The memory branch also runs alone (``zero_shot_branch=False``) on any backbone, e.g. the
  embedded EfficientNet-Lite0 (``few_shot_backbone='efficientnet_lite0'``); its score is then
  the map maximum.

Maps are returned at each input's resolution (inputs are resized to the run size without
the center crop of CLIP's preprocessing, so a map covers the whole image).
"""

from __future__ import annotations

import json
import warnings
from typing import TYPE_CHECKING, Any

from myriad.api import ConfigError, Expert, Mode, Prediction, WeightsError, cached, file_stamp
from myriad_experts_aprilgan.plugin import CLIP, AprilGANConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from torch import nn

DEFAULT_CLASS = "object"
CNN_LAYERS = (2, 3)


class AprilGANExpert(Expert):
    """AprilGAN: zero-shot adapters + prompts; few-shot adds a patch memory."""

    Config = AprilGANConfig

    def __init__(self, config: AprilGANConfig) -> None:
        super().__init__(config, config.mode)
        if self.mode is Mode.ZERO_SHOT and not config.zero_shot_branch:
            raise ConfigError("aprilgan zero_shot needs its zero-shot branch (zero_shot_branch=True)")
        self.memory: list["torch.Tensor"] | None = None
        self._clip: "nn.Module | None" = None
        self._adapters: "nn.Module | None" = None
        self._cnn: Any = None
        self._text: dict[str, "torch.Tensor"] = {}
        self._warned = False

    # -- settings ---------------------------------------------------------------------
    @property
    def zero_shot_branch(self) -> bool:
        """Whether the adapter + prompt map is computed."""
        return self.mode is Mode.ZERO_SHOT or self.config.zero_shot_branch

    @property
    def memory_on_clip(self) -> bool:
        """Whether the few-shot memory holds CLIP tokens (else CNN features)."""
        return self.config.few_shot_backbone == CLIP

    @property
    def needs_clip(self) -> bool:
        """Whether CLIP runs at all."""
        return self.zero_shot_branch or (self.mode is Mode.FEW_SHOT and self.memory_on_clip)

    @property
    def image_size(self) -> int:
        """Square run size: 518 with CLIP, 224 for a CNN alone."""
        return int(self.config.image_size or (518 if self.needs_clip else 224))

    @property
    def few_shot_layers(self) -> list[int]:
        """CLIP blocks (1-indexed) or CNN stages of the memory."""
        if self.config.few_shot_layers is not None:
            return list(self.config.few_shot_layers)
        return list(self.config.layers) if self.memory_on_clip else list(CNN_LAYERS)

    @property
    def class_name(self) -> str:
        """The product name in the prompts; ``object`` (with a warning) when none is configured."""
        name = (self.config.class_name or "").strip()
        if not name:
            if not self._warned:
                warnings.warn(
                    "aprilgan: no class_name configured; the prompts use 'object' "
                    "(set class_name, e.g. 'bottle', for the product's own prompts)",
                    UserWarning,
                    stacklevel=3,
                )
                self._warned = True
            return DEFAULT_CLASS
        return name

    # -- models (built on first use) ------------------------------------------------------
    def clip(self) -> "nn.Module":
        """The CLIP model (vision + text) at the run size."""
        import torch

        from myriad_experts_aprilgan.clip import load_clip

        if self._clip is None:
            cfg = self.config
            key = (
                "clip", cfg.arch, file_stamp(cfg.clip_weights), self.image_size, cfg.quick_gelu,
                json.dumps(cfg.architecture, sort_keys=True), cfg.device,
            )  # fmt: skip
            model = cached(
                key,
                lambda: load_clip(cfg.arch, cfg.clip_weights, self.image_size, cfg.quick_gelu, cfg.architecture).to(
                    torch.device(cfg.device)
                ),
            )
            depth = len(model.visual.transformer.resblocks)
            wanted = list(cfg.layers) + (self.few_shot_layers if self.memory_on_clip else [])
            bad = [layer for layer in wanted if not 1 <= layer <= depth]
            if bad:
                raise ConfigError(f"{cfg.arch} has {depth} blocks (1-indexed); layers {bad} are out of range")
            self._clip = model
        return self._clip

    def adapters(self) -> "nn.Module":
        """The four trained linear adapters."""
        import torch

        from myriad_experts_aprilgan.clip import ADAPTER_HINT, load_adapters

        if self._adapters is None:
            cfg = self.config
            if cfg.adapter_weights is None:
                raise WeightsError(f"aprilgan's zero-shot branch needs trained adapters: {ADAPTER_HINT}")
            visual = self.clip().visual
            width, embed = visual.conv1.weight.shape[0], visual.proj.shape[1]
            self._adapters = load_adapters(cfg.adapter_weights, width, embed, len(cfg.layers)).to(torch.device(cfg.device))
        return self._adapters

    def set_adapters(self, module: "nn.Module") -> None:
        """Use adapters trained in-process (see :func:`myriad_experts_aprilgan.train.train_adapters`)."""
        self._adapters = module.eval().requires_grad_(False)

    def text_features(self, class_name: str | None = None) -> "torch.Tensor":
        """``E x 2`` prompt features (normal, abnormal) of ``class_name`` (default: the configured one)."""
        from myriad_experts_aprilgan.clip import encode_prompts

        name = (class_name or self.class_name).replace("_", " ")
        if name not in self._text:
            model = self.clip()
            shared = model.__dict__.setdefault("_myriad_prompt_features", {})  # shared by experts of this model
            if name not in shared:
                shared[name] = encode_prompts(model, name)
            self._text[name] = shared[name]
        return self._text[name]

    def cnn(self) -> Any:
        """The timm CNN of a CNN memory."""
        from myriad.api import FeatureBackbone

        if self._cnn is None:
            cfg = self.config
            key = ("cnn", cfg.few_shot_backbone, tuple(self.few_shot_layers), file_stamp(cfg.few_shot_backbone_weights), cfg.device)
            try:
                self._cnn = cached(
                    key,
                    lambda: FeatureBackbone(
                        cfg.few_shot_backbone, self.few_shot_layers, weights=cfg.few_shot_backbone_weights, device=cfg.device
                    ),
                )
            except (IndexError, AssertionError) as exc:
                raise ConfigError(f"backbone {cfg.few_shot_backbone!r} has no stages {self.few_shot_layers}: {exc}") from exc
        return self._cnn

    # -- features ---------------------------------------------------------------------------
    def features(self, images: list["np.ndarray"], zero_shot: bool, memory: bool) -> dict[str, Any]:
        """CLIP tokens of the adapter layers (``zs``), memory features (``fs`` + ``grids``), image embeddings."""
        import torch

        from myriad.api import to_tensor, vit_tokens

        cfg, size = self.config, self.image_size
        out: dict[str, Any] = {"zs": None, "fs": None, "grids": None, "pooled": None}
        device = torch.device(cfg.device)
        clip_taps: list[int] = []
        if zero_shot:
            clip_taps += [layer - 1 for layer in cfg.layers]
        if memory and self.memory_on_clip:
            clip_taps += [layer - 1 for layer in self.few_shot_layers]
        if clip_taps:
            taps = sorted(set(clip_taps))
            x = to_tensor(images, size, "clip", interpolation="bicubic").to(device)
            with torch.inference_mode():
                tokens, pooled = vit_tokens(self.clip().visual, x, taps)
            by_tap = {t: tok[:, 1:].float() for t, tok in zip(taps, tokens)}
            side = size // int(self.clip().visual.patch_size[0])
            if zero_shot:
                out["zs"] = [by_tap[layer - 1] for layer in cfg.layers]
                out["pooled"] = pooled.float()
            if memory and self.memory_on_clip:
                out["fs"] = [by_tap[layer - 1] for layer in self.few_shot_layers]
                out["grids"] = [(side, side)] * len(self.few_shot_layers)
        if memory and not self.memory_on_clip:
            cnn = self.cnn()
            maps = cnn(to_tensor(images, size, cnn.normalisation, interpolation="bicubic"))
            out["fs"] = [m.float().flatten(2).transpose(1, 2) for m in maps]
            out["grids"] = [tuple(int(s) for s in m.shape[-2:]) for m in maps]
        return out

    def zero_shot_maps(self, tokens: list["torch.Tensor"], text: "torch.Tensor") -> "torch.Tensor":
        """Sum over layers of the abnormal probability, ``B x S x S``."""
        import math

        import torch
        import torch.nn.functional as F

        size = self.image_size
        total = None
        with torch.inference_mode():
            for fc, tok in zip(self.adapters().fc, tokens):
                adapted = F.normalize(fc(tok), dim=-1)
                logits = 100.0 * adapted @ text  # B x L x 2
                side = math.isqrt(logits.shape[1])
                logits = logits.transpose(1, 2).reshape(-1, 2, side, side)
                logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
                prob = torch.softmax(logits, dim=1)[:, 1]
                total = prob if total is None else total + prob
        assert total is not None
        return total

    def memory_maps(self, feats: list["torch.Tensor"], grids: list[tuple[int, int]]) -> "torch.Tensor":
        """Sum over layers of ``min(1 - cos)`` to the memory, ``B x S x S``."""
        import torch
        import torch.nn.functional as F

        assert self.memory is not None
        size = self.image_size
        total = None
        for feat, memory, grid in zip(feats, self.memory, grids):
            q = F.normalize(feat, dim=-1)
            best = torch.cat([(part @ memory.T).amax(dim=-1) for part in q.split(2)])
            dist = (1.0 - best).reshape(-1, 1, *grid)
            dist = F.interpolate(dist, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
            total = dist if total is None else total + dist
        assert total is not None
        return total

    # -- the expert contract ---------------------------------------------------------------------
    def _fit(self, images: list["np.ndarray"]) -> None:
        import torch
        import torch.nn.functional as F

        parts: list[list[torch.Tensor]] = []
        for start in range(0, len(images), self.config.batch_size):
            fs = self.features(images[start : start + self.config.batch_size], zero_shot=False, memory=True)["fs"]
            parts = parts or [[] for _ in fs]
            for store, f in zip(parts, fs):
                store.append(f.reshape(-1, f.shape[-1]))
        self.memory = [F.normalize(torch.cat(store), dim=-1).contiguous() for store in parts]
        if self.zero_shot_branch:  # fail at fit, not at the first predict, when weights are missing
            self.adapters()
            self.text_features()

    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        import numpy as np
        import torch

        from myriad.api import resize_map

        few_shot = self.mode is Mode.FEW_SHOT
        zero_shot = self.zero_shot_branch
        n_maps = (len(self.config.layers) if zero_shot else 0) + (len(self.few_shot_layers) if few_shot else 0)
        out = []
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start : start + self.config.batch_size]
            feats = self.features(chunk, zero_shot=zero_shot, memory=few_shot)
            total = torch.zeros(len(chunk), self.image_size, self.image_size)
            text_prob = None
            if zero_shot:
                text = self.text_features()
                total += self.zero_shot_maps(feats["zs"], text).cpu()
                image = torch.nn.functional.normalize(feats["pooled"], dim=-1)
                text_prob = torch.softmax(100.0 * image @ text, dim=-1)[:, 1].cpu()
            if few_shot:
                total += self.memory_maps(feats["fs"], feats["grids"]).cpu()
            for i, image_array in enumerate(chunk):
                peak = float(total[i].max())
                if not few_shot:
                    score = float(text_prob[i])  # type: ignore[index]
                elif text_prob is not None:
                    score = 0.5 * (float(text_prob[i]) + peak / n_maps)
                else:
                    score = peak
                anomaly_map = resize_map(total[i].numpy(), *image_array.shape[:2]).astype(np.float32)
                out.append(Prediction(anomaly_map=anomaly_map, score=score))
        return out

    # -- state ---------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Any]:
        return {} if self.memory is None else {f"memory.{i}": m for i, m in enumerate(self.memory)}

    def state_metadata(self) -> dict[str, Any]:
        return {
            "few_shot_backbone": self.config.few_shot_backbone,
            "few_shot_layers": self.few_shot_layers,
            "image_size": self.image_size,
        }

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        if self.mode is Mode.ZERO_SHOT:
            super().load_state_tensors(tensors, metadata)
            return
        saved = {k: metadata.get(k) for k in ("few_shot_backbone", "few_shot_layers", "image_size")}
        if saved != self.state_metadata():
            raise WeightsError(f"saved memory was built with {saved}, this config gives {self.state_metadata()}")
        names = [f"memory.{i}" for i in range(len(self.few_shot_layers))]
        if sorted(tensors) != sorted(names):
            raise WeightsError(f"saved memory has tensors {sorted(tensors)}, expected {names}")
        self.memory = [tensors[n].float().to(self.config.device) for n in names]
