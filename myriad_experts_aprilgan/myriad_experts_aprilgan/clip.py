"""CLIP for AprilGAN: open_clip models from local files, run off their native size, and the prompt ensemble.

- :func:`load_clip`: an open_clip ``CLIP`` of the named architecture (built in code, no
  download) with weights loaded strictly from OpenAI's TorchScript ``.pt`` (its tensors
  only) or an open_clip state dict; the positional embedding is resized bicubically to the
  run size (24 x 24 -> 37 x 37 for ViT-L-14-336 at 518 px).
- :func:`image_tokens`: raw outputs of the tapped blocks (before ``ln_post``) and the
  projected image embedding, on whatever device the model lives (nothing hard-codes CUDA).
- :func:`encode_prompts`: 7 normal x 5 abnormal states x 35 templates, each embedding
  L2-normalised, averaged per state group and renormalised -> ``E x 2``.
- :func:`load_adapters`: the released ``{'trainable_linearlayer': {'fc.N.weight', 'fc.N.bias'}}``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.errors import ConfigError, WeightsError

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


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: str | Path, what: str, hint: str) -> dict[str, Any]:
    """Tensors of a local checkpoint: TorchScript (OpenAI's .pt, via ``torch.jit.load``) or weights_only pickle."""
    import torch

    from myriad.io import load_torch_checkpoint

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: {what} not found; {hint}")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                state: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:  # noqa: BLE001 - torch raises many types here
            raise WeightsError(f"{path}: unreadable TorchScript archive: {exc}") from exc
    else:
        state = load_torch_checkpoint(path)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def strict_load(module: "nn.Module", state: dict[str, "torch.Tensor"], source: str, what: str) -> None:
    """``load_state_dict(strict=True)`` with one error listing missing, unexpected and misshaped keys."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        detail = [f"{len(missing)} missing (e.g. {missing[:3]})", f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"]
        if shapes:
            k = shapes[0]
            detail.append(f"{len(shapes)} misshaped (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
        raise WeightsError(f"{source}: the {what} does not match the architecture: " + ", ".join(detail))
    module.load_state_dict(state, strict=True)


def resize_positional_embedding(pos: "torch.Tensor", grid: int) -> "torch.Tensor":
    """Bicubically resize a ``(1 + g*g) x C`` positional embedding to ``1 + grid*grid`` (CLS entry kept)."""
    import torch
    import torch.nn.functional as F

    side = math.isqrt(pos.shape[0] - 1)
    if side * side != pos.shape[0] - 1:
        raise WeightsError(f"positional embedding of {pos.shape[0] - 1} patches is not a square grid")
    if side == grid:
        return pos
    body = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    body = F.interpolate(body, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], body.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)])


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
    raw = read_state_dict(weights, "CLIP weights", CLIP_HINT)
    state = {}
    for key, value in raw.items():
        key = key[7:] if key.startswith("module.") else key
        if key in _OPENAI_EXTRAS or not isinstance(value, torch.Tensor):
            continue  # OpenAI files carry the sizes as extra entries
        state[key] = value
    strict_load(model, state, str(weights), "CLIP checkpoint")
    visual = model.visual
    with torch.no_grad():
        resized = resize_positional_embedding(visual.positional_embedding.data, image_size // patch)
    visual.positional_embedding = torch.nn.Parameter(resized, requires_grad=False)
    return model.eval().requires_grad_(False)


def image_tokens(model: "nn.Module", x: "torch.Tensor", taps: Sequence[int]) -> tuple[list["torch.Tensor"], "torch.Tensor"]:
    """Raw outputs (``B x (1 + L) x W``) of 0-indexed blocks ``taps`` and the projected image embedding."""
    import torch

    visual = model.visual
    x = visual.conv1(x.to(visual.conv1.weight.dtype))
    batch = x.shape[0]
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
    batch_first = getattr(visual.transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    outs: dict[int, torch.Tensor] = {}
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        if index in taps:
            outs[index] = x if batch_first else x.transpose(0, 1)
    if not batch_first:
        x = x.transpose(0, 1)
    pooled = visual.ln_post(x[:, 0])
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return [outs[i] for i in taps], pooled


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
    state = read_state_dict(path, "AprilGAN adapter checkpoint", ADAPTER_HINT)
    inner = state.get("trainable_linearlayer")
    if not isinstance(inner, dict):
        raise WeightsError(f"{path}: no 'trainable_linearlayer' entry: not an AprilGAN adapter checkpoint ({ADAPTER_HINT})")
    module = build_adapters(width, embed_dim, count)
    strict_load(module, dict(inner), path, "adapter checkpoint")
    return module.eval().requires_grad_(False)
