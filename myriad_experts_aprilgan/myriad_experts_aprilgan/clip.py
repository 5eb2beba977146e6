"""CLIP for AprilGAN: open_clip models from local files, run off their native size, and the prompt ensemble.

- :func:`load_clip`: an open_clip ``CLIP`` of the named architecture (built in code, no
  download) with weights loaded strictly from OpenAI's TorchScript ``.pt`` (its tensors
  only) or an open_clip state dict; the positional embedding is resized bicubically to the
  run size (24 x 24 -> 37 x 37 for ViT-L-14-336 at 518 px). The tapped block outputs come
  from :func:`myriad.vit_taps.vit_tokens`, on whatever device the model lives.
- :func:`encode_prompts`: 7 normal x 5 abnormal states x 35 templates, each embedding
  L2-normalised, averaged per state group and renormalised -> ``E x 2``.
- :func:`load_adapters`: the released ``{'trainable_linearlayer': {'fc.N.weight', 'fc.N.bias'}}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from myriad.api import (  # resize_positional_embedding is also imported from here by benchmarks/experts
    ConfigError,
    WeightsError,
    load_state_dict_strict,
    load_torch_checkpoint,
    resize_positional_embedding,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

PROMPT_NORMAL = ("{}", "flawless {}", "perfect {}", "unblemished {}", "{} without flaw", "{} without defect", "{} without damage")
PROMPT_ABNORMAL = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
PROMPT_TEMPLATES = (
    "a bad photo of a {}.", "a low resolution photo of the {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a bright photo of a {}.", "a dark photo of the {}.", "a photo of my {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a photo of one {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "a low resolution photo of a {}.", "a photo of a large {}.", "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a photo of the small {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "a dark photo of a {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
)  # fmt: skip

CLIP_HINT = (
    "download OpenAI's ViT-L-14-336px.pt (the file the `clip` package fetches for 'ViT-L/14@336px') or "
    "open_clip's weights for ViT-L-14-336 / openai, and set clip_weights=PATH"
)
ADAPTER_HINT = (
    "download AprilGAN's mvtec_pretrained.pth (use it on VisA) or visa_pretrained.pth (use it on MVTec) from the "
    "VAND-APRIL-GAN release, or train your own with myriad_experts_aprilgan.train.train_adapters, "
    "and set adapter_weights=PATH"
)
_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def prompt_sentences(class_name: str) -> tuple[list[str], list[str]]:
    """The 245 normal and 175 abnormal sentences for ``class_name`` (underscores become spaces)."""
    name = class_name.replace("_", " ")
    normal = [t.format(s.format(name)) for s in PROMPT_NORMAL for t in PROMPT_TEMPLATES]
    abnormal = [t.format(s.format(name)) for s in PROMPT_ABNORMAL for t in PROMPT_TEMPLATES]
    return normal, abnormal


def load_clip(
    arch: str, weights: str | None, image_size: int, quick_gelu: bool = True, architecture: dict[str, Any] | None = None
) -> "nn.Module":
    """An open_clip CLIP (vision + text) with strictly loaded local weights, positional embedding resized."""
    import open_clip
    import torch

    cfg = architecture or open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"open_clip has no architecture {arch!r} (e.g. ViT-L-14-336, ViT-B-16)")
    vision_cfg = cfg["vision_cfg"]
    if vision_cfg.get("timm_model_name") or isinstance(vision_cfg.get("layers"), (list, tuple)):
        raise ConfigError(f"{arch} is not a plain ViT; AprilGAN taps ViT blocks")
    if weights is None:
        raise WeightsError(f"aprilgan needs the CLIP weights of {arch}: {CLIP_HINT}")
    patch = int(vision_cfg["patch_size"])
    if image_size % patch:
        raise ConfigError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    model = open_clip.model.CLIP(cfg["embed_dim"], vision_cfg, cfg["text_cfg"], quick_gelu=quick_gelu)
    raw = load_torch_checkpoint(
        weights, what="CLIP weights", hint=CLIP_HINT, torchscript=True, tensors_only=True, strip_prefix="module."
    )
    state = {k: v for k, v in raw.items() if k not in _OPENAI_EXTRAS}  # OpenAI files carry the sizes as extra entries
    load_state_dict_strict(model, state, str(weights), "CLIP checkpoint")
    visual = model.visual
    with torch.no_grad():
        resized = resize_positional_embedding(visual.positional_embedding.data, image_size // patch)
    visual.positional_embedding = torch.nn.Parameter(resized, requires_grad=False)
    return model.eval().requires_grad_(False)


def encode_prompts(model: "nn.Module", class_name: str, batch: int = 64) -> "torch.Tensor":
    """``E x 2`` text features (columns: normal, abnormal) of AprilGAN's prompt ensemble."""
    import torch
    import torch.nn.functional as F
    from open_clip.tokenizer import tokenize

    device = next(model.parameters()).device
    columns = []
    for sentences in prompt_sentences(class_name):
        tokens = tokenize(sentences)
        with torch.inference_mode():
            emb = torch.cat([model.encode_text(tokens[i : i + batch].to(device)).float() for i in range(0, len(tokens), batch)])
        columns.append(F.normalize(F.normalize(emb, dim=-1).mean(dim=0), dim=-1))
    return torch.stack(columns, dim=1)


def build_adapters(width: int, embed_dim: int, count: int) -> "nn.Module":
    """AprilGAN's ``LinearLayer`` for ViTs: ``fc`` = one Linear(width -> embed_dim) per tapped block."""
    from torch import nn

    module = nn.Module()
    module.fc = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(count)])
    return module


def load_adapters(path: str, width: int, embed_dim: int, count: int) -> "nn.Module":
    """The released adapters (``{'trainable_linearlayer': state_dict}``), loaded strictly."""
    state = load_torch_checkpoint(path, what="AprilGAN adapter checkpoint", hint=ADAPTER_HINT, torchscript=True)
    inner = state.get("trainable_linearlayer")
    if not isinstance(inner, dict):
        raise WeightsError(f"{path}: no 'trainable_linearlayer' entry: not an AprilGAN adapter checkpoint ({ADAPTER_HINT})")
    module = build_adapters(width, embed_dim, count)
    load_state_dict_strict(module, dict(inner), path, "adapter checkpoint")
    return module.eval().requires_grad_(False)
