"""The AnomalyGPT expert: ImageBind-Huge patch tokens against text prompts or against normal patches.

- ``one_class``: AnomalyGPT's trained image decoder (4 x Linear(1280 -> 1024), one per
  tapped block 8/16/24/32) maps each patch token into the joint space; per layer
  ``softmax(100 * <token, [normal, abnormal] text>)`` (bilinear to 224 first, as the
  reference) gives the abnormal probability; the four layer maps are averaged. The
  decoder was trained by AnomalyGPT on the training split (normal images plus synthetic
  anomalies); ``fit`` here only validates the normal images (they serve the host's
  calibration) and retrains nothing.
- ``few_shot``: the raw block outputs of k normal images form a memory; per layer each
  query patch's maximum cosine similarity over all k x 256 memory patches; averaged over
  layers; map = 1 - similarity. Works with any backbone, including the embedded
  EfficientNet-Lite0 (stages 2 and 3), which needs no download.

Image score: the map's maximum. Maps come back at each input's resolution (the input is
resized to 224 x 224, without ImageBind's center crop, so the map covers the whole image).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

from myriad.api import ConfigError, Expert, Mode, Prediction, WeightsError, cached, file_stamp
from myriad_experts_anomalygpt.plugin import IMAGEBIND, AnomalyGPTConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from torch import nn

PROMPT_NORMAL = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage")
PROMPT_ABNORMAL = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
PROMPT_TEMPLATES = ("a photo of a {}.", "a photo of the {}.")
DEFAULT_CLASS = "object"

IMAGEBIND_HINT = (
    "download imagebind_huge.pth (https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth, 4.5 GB) "
    "and set imagebind_weights=PATH"
)
DECODER_HINT = (
    "download AnomalyGPT's delta checkpoint pytorch_model.pt (https://huggingface.co/FantasticGNU/AnomalyGPT, "
    "folder train_mvtec/, train_visa/ or train_supervised/) and set decoder_weights=PATH"
)


def prompt_sentences(class_name: str) -> tuple[list[str], list[str]]:
    """AnomalyGPT's 7 normal and 5 abnormal states x 2 templates for ``class_name`` (14 and 10 sentences)."""
    name = class_name.replace("_", " ")
    normal = [t.format(s.format(name)) for s in PROMPT_NORMAL for t in PROMPT_TEMPLATES]
    abnormal = [t.format(s.format(name)) for s in PROMPT_ABNORMAL for t in PROMPT_TEMPLATES]
    return normal, abnormal


def encode_prompts(text_tower: "nn.Module", class_name: str, context_length: int) -> "torch.Tensor":
    """``2 x E`` unit vectors: the mean of the normalised normal (row 0) and abnormal (row 1) prompt embeddings."""
    import torch
    import torch.nn.functional as F
    from open_clip.tokenizer import tokenize

    device = next(text_tower.parameters()).device
    rows = []
    for sentences in prompt_sentences(class_name):
        tokens = tokenize(sentences, context_length=context_length).to(device)
        with torch.inference_mode():
            emb = F.normalize(text_tower(tokens).float(), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


class ImageDecoder:
    """AnomalyGPT's ``image_decoder``: one Linear per tapped layer (keys ``image_decoder.fc.N.{weight,bias}``)."""

    @staticmethod
    def build(width: int, dim: int, layers: int) -> "nn.Module":
        from torch import nn

        module = nn.Module()
        module.fc = nn.ModuleList([nn.Linear(width, dim) for _ in range(layers)])
        return module

    @classmethod
    def load(cls, path: str, width: int, dim: int, layers: int) -> "nn.Module":
        from myriad.api import load_state_dict_strict
        from myriad_experts_anomalygpt.imagebind import read_checkpoint

        state = read_checkpoint(path, "AnomalyGPT checkpoint", DECODER_HINT)
        decoder_state = {k[len("image_decoder.") :]: v for k, v in state.items() if k.startswith("image_decoder.")}
        if not decoder_state:
            raise WeightsError(f"{path}: no 'image_decoder.*' keys: not AnomalyGPT's pytorch_model.pt")
        module = cls.build(width, dim, layers)
        load_state_dict_strict(module, decoder_state, path, "AnomalyGPT image decoder")
        return module


class AnomalyGPTExpert(Expert):
    """AnomalyGPT's vision expert (``one_class``: decoder + prompts; ``few_shot``: patch memory)."""

    Config = AnomalyGPTConfig

    def __init__(self, config: AnomalyGPTConfig) -> None:
        super().__init__(config, config.mode)
        if self.mode is Mode.ONE_CLASS and config.architecture.embed_dim != config.architecture.decoder_dim:
            raise ConfigError(
                f"the decoder's output ({config.architecture.decoder_dim}) must match the text embedding "
                f"({config.architecture.embed_dim})"
            )
        if self.mode is Mode.ONE_CLASS and config.backbone != IMAGEBIND:
            raise ConfigError(
                f"anomalygpt one_class needs backbone 'imagebind' (its decoder is trained on ImageBind tokens), "
                f"got {config.backbone!r}; use mode few_shot for other backbones"
            )
        self.memory: list["torch.Tensor"] | None = None
        self._vision: "nn.Module | None" = None
        self._cnn: Any = None
        self._decoder: "nn.Module | None" = None
        self._text: "torch.Tensor | None" = None
        self._warned = False

    # -- settings ------------------------------------------------------------------
    @property
    def uses_imagebind(self) -> bool:
        """Whether the backbone is ImageBind's vision tower (else a timm CNN)."""
        return self.config.backbone == IMAGEBIND

    @property
    def image_size(self) -> int:
        """Square input size (224 by default, ImageBind's)."""
        return int(self.config.image_size or self.config.architecture.image_size)

    @property
    def layers(self) -> list[int]:
        """ImageBind: 1-indexed blocks; CNN: stage indices."""
        if self.config.layers is not None:
            return list(self.config.layers)
        if self.uses_imagebind:
            depth = self.config.architecture.layers
            return sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75, 1.0)})  # 8/16/24/32 for 32 blocks
        return [2, 3]

    @property
    def class_name(self) -> str:
        """The product name used in the prompts; ``object`` (with a warning) when none is configured."""
        name = (self.config.class_name or "").strip()
        if not name:
            if not self._warned:
                warnings.warn(
                    "anomalygpt: no class_name configured; the prompts use 'object' "
                    "(set class_name, e.g. 'bottle', for the product's own prompts)",
                    UserWarning,
                    stacklevel=3,
                )
                self._warned = True
            return DEFAULT_CLASS
        return name

    # -- models (built on first use) ------------------------------------------------------
    def _imagebind(self) -> "nn.Module":
        import torch

        from myriad_experts_anomalygpt.imagebind import load_imagebind

        if self._vision is None:
            cfg = self.config
            if cfg.imagebind_weights is None:
                raise WeightsError(f"anomalygpt with backbone 'imagebind' needs imagebind_huge.pth: {IMAGEBIND_HINT}")
            want_text = self.mode is Mode.ONE_CLASS and cfg.text_features is None
            if self.image_size % cfg.architecture.patch_size:
                raise ConfigError(f"image_size {self.image_size} is not a multiple of patch {cfg.architecture.patch_size}")
            if self.image_size != cfg.architecture.image_size:
                raise ConfigError(
                    f"ImageBind runs at {cfg.architecture.image_size} px (its positional embedding); got image_size "
                    f"{self.image_size}"
                )
            depth = cfg.architecture.layers
            if any(not 1 <= layer <= depth for layer in self.layers):
                raise ConfigError(f"ImageBind has {depth} blocks (1-indexed); layers {self.layers} are out of range")
            class_name = self.class_name if want_text else None
            device = torch.device(cfg.device)

            def build() -> tuple["nn.Module", "torch.Tensor | None"]:
                vision, text = load_imagebind(cfg.imagebind_weights, cfg.architecture, text=want_text)  # type: ignore[arg-type]
                prompts = None
                if text is not None:  # encode the prompts once, then let the 1 GB text tower go
                    text = text.to(device).eval().requires_grad_(False)
                    prompts = encode_prompts(text, class_name, cfg.architecture.context_length)  # type: ignore[arg-type]
                return vision.to(device).eval().requires_grad_(False), prompts

            key = ("imagebind", file_stamp(cfg.imagebind_weights), cfg.architecture.model_dump_json(), cfg.device, class_name)
            self._vision, prompts = cached(key, build)
            if prompts is not None:
                self._text = prompts
        return self._vision

    def _backbone_cnn(self) -> Any:
        from myriad.api import FeatureBackbone

        if self._cnn is None:
            cfg = self.config
            key = ("cnn", cfg.backbone, tuple(self.layers), file_stamp(cfg.backbone_weights), cfg.device)
            try:
                self._cnn = cached(
                    key, lambda: FeatureBackbone(cfg.backbone, self.layers, weights=cfg.backbone_weights, device=cfg.device)
                )
            except (IndexError, AssertionError) as exc:
                raise ConfigError(f"backbone {self.config.backbone!r} has no stages {self.layers}: {exc}") from exc
        return self._cnn

    def text_features(self) -> "torch.Tensor":
        """``2 x E`` prompt features (normal, abnormal) for the configured class name."""
        import torch

        from myriad.api import load_tensors

        if self._text is None:
            cfg = self.config
            if cfg.text_features is not None:
                table = load_tensors(cfg.text_features)
                key = self.class_name.replace("_", " ")
                if key not in table:
                    raise WeightsError(
                        f"{cfg.text_features}: no prompt features for class {key!r} (it has {sorted(table)}); "
                        "write them with myriad_experts_anomalygpt.expert.export_text_features"
                    )
                feats = table[key].float()
                if feats.shape != (2, cfg.architecture.decoder_dim):
                    raise WeightsError(
                        f"{cfg.text_features}: {key!r} has shape {tuple(feats.shape)}, expected "
                        f"(2, {cfg.architecture.decoder_dim})"
                    )
                self._text = torch.nn.functional.normalize(feats, dim=-1).to(cfg.device)
            else:
                self._imagebind()
        assert self._text is not None
        return self._text

    def decoder(self) -> "nn.Module":
        """AnomalyGPT's image decoder from ``decoder_weights``."""
        import torch

        if self._decoder is None:
            cfg = self.config
            if cfg.decoder_weights is None:
                raise WeightsError(f"anomalygpt one_class needs AnomalyGPT's pytorch_model.pt: {DECODER_HINT}")
            module = ImageDecoder.load(cfg.decoder_weights, cfg.architecture.width, cfg.architecture.decoder_dim, len(self.layers))
            self._decoder = module.to(torch.device(cfg.device)).eval().requires_grad_(False)
        return self._decoder

    # -- features ---------------------------------------------------------------------
    def patch_features(self, images: Sequence["np.ndarray"], rotations: bool = False) -> tuple[list["torch.Tensor"], list[tuple[int, int]]]:
        """Per tapped layer, ``B x L x C`` patch features (raw block outputs without CLS / CNN stage maps)."""
        import torch

        from myriad.api import to_tensor

        size = self.image_size
        normalisation = "clip" if self.uses_imagebind else self._backbone_cnn().normalisation
        per_layer: list[list[torch.Tensor]] = []
        grids: list[tuple[int, int]] = []
        for start in range(0, len(images), 8):
            x = to_tensor(images[start : start + 8], size, normalisation, interpolation="bicubic")
            if rotations:
                x = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
            x = x.to(self.config.device)
            if self.uses_imagebind:
                from myriad_experts_anomalygpt.imagebind import vision_taps

                with torch.inference_mode():
                    taps = vision_taps(self._imagebind(), x, [layer - 1 for layer in self.layers])
                side = size // self.config.architecture.patch_size
                feats = [t[:, 1:] for t in taps]
                grids = [(side, side)] * len(feats)
            else:
                maps = self._backbone_cnn()(x)
                grids = [tuple(int(s) for s in m.shape[-2:]) for m in maps]  # type: ignore[misc]
                feats = [m.flatten(2).transpose(1, 2) for m in maps]
            if not per_layer:
                per_layer = [[] for _ in feats]
            for store, f in zip(per_layer, feats):
                store.append(f.float())
        return [torch.cat(store) for store in per_layer], grids

    # -- the expert contract ---------------------------------------------------------------
    def _fit(self, images: list["np.ndarray"]) -> None:
        import torch.nn.functional as F

        if self.mode is Mode.ONE_CLASS:
            self.decoder()  # fail early on missing weights; the trained decoder is used as released
            self.text_features()
            return
        feats, _ = self.patch_features(images, rotations=self.config.rotate_references)
        self.memory = [F.normalize(f.reshape(-1, f.shape[-1]), dim=-1).contiguous() for f in feats]

    def _few_shot_maps(self, images: list["np.ndarray"]) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        assert self.memory is not None
        feats, grids = self.patch_features(images)
        finest = max(grids, key=lambda g: g[0] * g[1])
        sims = []
        for f, memory, grid in zip(feats, self.memory, grids):
            q = F.normalize(f, dim=-1)
            best = torch.cat([(part @ memory.T).amax(dim=-1) for part in q.split(4)])  # B x L
            sim = best.reshape(-1, 1, *grid)
            if grid != finest:
                sim = F.interpolate(sim, size=finest, mode="bilinear", align_corners=True)
            sims.append(sim)
        return 1.0 - torch.stack(sims).mean(dim=0)[:, 0]  # B x h x w

    def _one_class_maps(self, images: list["np.ndarray"]) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        text = self.text_features()
        decoder = self.decoder()
        feats, grids = self.patch_features(images)
        size = self.image_size
        maps = []
        with torch.inference_mode():
            for fc, f, grid in zip(decoder.fc, feats, grids):
                tokens = F.normalize(fc(f), dim=-1)
                logits = (100.0 * tokens @ text.T).transpose(1, 2).reshape(-1, 2, *grid)
                logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True)
                maps.append(torch.softmax(logits, dim=1)[:, 1])
        return torch.stack(maps).mean(dim=0)  # B x 224 x 224

    def _predict(self, images: list["np.ndarray"]) -> list[Prediction]:
        import numpy as np
        import torch.nn.functional as F

        maps = self._few_shot_maps(images) if self.mode is Mode.FEW_SHOT else self._one_class_maps(images)
        maps = maps.float().cpu()
        out = []
        for image, m in zip(images, maps):
            h, w = image.shape[:2]
            full = F.interpolate(m[None, None], size=(h, w), mode="bilinear", align_corners=True)[0, 0]
            out.append(Prediction(anomaly_map=full.numpy().astype(np.float32), score=float(m.max())))
        return out

    # -- state ---------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Any]:
        if self.memory is None:
            return {}
        return {f"memory.{i}": m for i, m in enumerate(self.memory)}

    def state_metadata(self) -> dict[str, Any]:
        return {"backbone": self.config.backbone, "layers": self.layers, "image_size": self.image_size}

    def load_state_tensors(self, tensors: dict[str, Any], metadata: dict[str, Any]) -> None:
        if self.mode is Mode.ONE_CLASS:
            super().load_state_tensors(tensors, metadata)
            return
        saved = {k: metadata.get(k) for k in ("backbone", "layers", "image_size")}
        mine = self.state_metadata()
        if saved != mine:
            raise WeightsError(f"saved memory was built with {saved}, this config gives {mine}")
        names = [f"memory.{i}" for i in range(len(self.layers))]
        if sorted(tensors) != sorted(names):
            raise WeightsError(f"saved memory has tensors {sorted(tensors)}, expected {names}")
        self.memory = [tensors[n].float().to(self.config.device) for n in names]


def export_text_features(config: AnomalyGPTConfig | dict, class_names: Sequence[str], path: str) -> None:
    """Encode the prompts of ``class_names`` with ImageBind's text tower and save them for ``text_features=``.

    The file maps each class name (underscores as spaces) to a ``2 x 1024`` tensor
    (normal, abnormal), so later runs need not load the 1 GB text tower.
    """
    import torch

    from myriad.api import save_tensors
    from myriad_experts_anomalygpt.imagebind import load_imagebind

    cfg = AnomalyGPTConfig.model_validate(config) if isinstance(config, dict) else config
    if cfg.imagebind_weights is None:
        raise WeightsError(f"exporting prompt features needs imagebind_huge.pth: {IMAGEBIND_HINT}")
    _, text = load_imagebind(cfg.imagebind_weights, cfg.architecture, text=True)
    assert text is not None
    text = text.to(torch.device(cfg.device)).eval()
    table = {name.replace("_", " "): encode_prompts(text, name, cfg.architecture.context_length) for name in class_names}
    save_tensors(table, path)


__all__ = ["AnomalyGPTExpert", "export_text_features", "prompt_sentences"]
