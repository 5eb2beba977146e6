"""ImageBind-Huge's vision and text towers as open_clip modules, loaded from ``imagebind_huge.pth``.

ImageBind's image tower was initialised from (and kept frozen as) OpenCLIP ViT-H-14, so
its blocks are open_clip's: ``nn.MultiheadAttention`` + a 4x GELU MLP, pre-norm with
LayerNorm(eps=1e-6). Only the stem and the parameter names differ. The key mapping
(read from facebookresearch/ImageBind ``imagebind_model.py``, ``multimodal_preprocessors.py``,
``transformer.py``, ``helpers.py``) is, for the vision tower (``V = modality_*.vision``):

======================================================================  ==============================================
ImageBind key                                                           open_clip ``VisionTransformer``
======================================================================  ==============================================
``modality_preprocessors.vision.rgbt_stem.proj.1.weight`` (W,3,2,p,p)   ``conv1.weight`` = sum over the time kernel
``modality_preprocessors.vision.cls_token`` (1,1,W)                     ``class_embedding`` (W)
``modality_preprocessors.vision.pos_embedding_helper.pos_embed``        ``positional_embedding`` (1 + g*g, W)
``modality_trunks.vision.pre_transformer_layer.0.{weight,bias}``        ``ln_pre``
``modality_trunks.vision.blocks.N.attn.{in_proj_*,out_proj.*}``         ``transformer.resblocks.N.attn.*``
``modality_trunks.vision.blocks.N.norm_1`` / ``norm_2``                 ``...resblocks.N.ln_1`` / ``ln_2``
``modality_trunks.vision.blocks.N.mlp.fc1`` / ``fc2``                   ``...resblocks.N.mlp.c_fc`` / ``c_proj``
``modality_heads.vision.0.{weight,bias}`` (LayerNorm)                   ``ln_post``
``modality_heads.vision.2.weight`` (E, W), no bias                      ``proj`` = weight.T (W, E)
======================================================================  ==============================================

The stem is a Conv3d with kernel (2, p, p) over the image repeated twice in time
(``PadIm2Video(ntimes=2, pad_type="repeat")``); on two identical frames it equals a
2-D convolution whose kernel is the sum of the two time slices. The text tower maps
onto open_clip's ``TextTransformer``:

``modality_preprocessors.text.token_embedding.weight`` -> ``token_embedding.weight``;
``modality_preprocessors.text.pos_embed`` (1, 77, D) -> ``positional_embedding``;
``modality_preprocessors.text.mask`` (the causal mask buffer) -> checked, open_clip builds its own;
``modality_trunks.text.blocks.N.*`` -> ``transformer.resblocks.N.*`` (as above);
``modality_heads.text.proj.0`` (LayerNorm) -> ``ln_final`` (applied per token before the
EOS selection, which is the same); ``modality_heads.text.proj.1.weight`` -> ``text_projection`` = weight.T;
``modality_postprocessors.text.1.log_logit_scale`` -> ``logit_scale`` (unused by the maps).

Keys of the other modalities (audio, depth, thermal, imu) are skipped; every vision and
text key must be consumed and every model tensor provided (strict).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from myriad.api import CHECKPOINT_WRAPPERS, WeightsError, load_state_dict_strict, load_torch_checkpoint, vit_tokens

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from myriad_experts_anomalygpt.plugin import ImageBindArchitecture

V_PRE = "modality_preprocessors.vision."
V_TRUNK = "modality_trunks.vision."
V_HEAD = "modality_heads.vision."
T_PRE = "modality_preprocessors.text."
T_TRUNK = "modality_trunks.text."
T_HEAD = "modality_heads.text."
T_POST = "modality_postprocessors.text."
_BLOCK = {"norm_1": "ln_1", "norm_2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "attn": "attn"}
_OTHER_MODALITIES = ("audio", "depth", "thermal", "imu")


def build_vision_tower(arch: "ImageBindArchitecture") -> "nn.Module":
    """An open_clip ``VisionTransformer`` with ImageBind-Huge's structure (no weights)."""
    from open_clip.transformer import LayerNorm, VisionTransformer
    from torch import nn

    return VisionTransformer(
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        width=arch.width,
        layers=arch.layers,
        heads=arch.heads,
        mlp_ratio=4.0,
        output_dim=arch.embed_dim,
        act_layer=nn.GELU,
        norm_layer=partial(LayerNorm, eps=1e-6),
    )


def build_text_tower(arch: "ImageBindArchitecture") -> "nn.Module":
    """An open_clip ``TextTransformer`` with ImageBind's text structure (causal, EOS = argmax token)."""
    from open_clip.transformer import LayerNorm, TextTransformer
    from torch import nn

    return TextTransformer(
        context_length=arch.context_length,
        vocab_size=arch.vocab_size,
        width=arch.text_width,
        heads=arch.text_heads,
        layers=arch.text_layers,
        output_dim=arch.embed_dim,
        act_layer=nn.GELU,
        norm_layer=partial(LayerNorm, eps=1e-6),
    )


def _map_block(rest: str) -> str:
    index, _, tail = rest.partition(".")
    for old, new in _BLOCK.items():
        if tail.startswith(old + "."):
            return f"transformer.resblocks.{index}.{new}.{tail[len(old) + 1:]}"
    raise KeyError(rest)


def vision_state_from_imagebind(state: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    """The vision-tower part of an ImageBind state dict, renamed for :func:`build_vision_tower`.

    Keys it cannot map keep their ImageBind names, so that a strict load reports them as unexpected.
    """
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key.startswith(V_PRE):
            rest = key[len(V_PRE) :]
            if rest == "rgbt_stem.proj.1.weight":
                out["conv1.weight"] = value.sum(dim=2) if value.ndim == 5 else value
            elif rest == "cls_token":
                out["class_embedding"] = value.reshape(-1)
            elif rest == "pos_embedding_helper.pos_embed":
                out["positional_embedding"] = value.reshape(-1, value.shape[-1])
            else:
                out[key] = value
        elif key.startswith(V_TRUNK):
            rest = key[len(V_TRUNK) :]
            if rest.startswith("pre_transformer_layer.0."):
                out["ln_pre." + rest[len("pre_transformer_layer.0.") :]] = value
            elif rest.startswith("blocks."):
                try:
                    out[_map_block(rest[len("blocks.") :])] = value
                except KeyError:
                    out[key] = value
            else:
                out[key] = value
        elif key.startswith(V_HEAD):
            rest = key[len(V_HEAD) :]
            if rest.startswith("0."):
                out["ln_post." + rest[2:]] = value
            elif rest == "2.weight":
                out["proj"] = value.T.contiguous()
            else:
                out[key] = value
        elif key.startswith("modality_postprocessors.vision."):
            out[key] = value  # Normalize has no parameters: anything here is unexpected
    return out


def text_state_from_imagebind(state: dict[str, "torch.Tensor"]) -> tuple[dict[str, "torch.Tensor"], "torch.Tensor | None"]:
    """The text-tower part of an ImageBind state dict (renamed, unmapped keys as they are), and the logit scale."""
    import torch

    out: dict[str, Any] = {}
    logit_scale = None
    for key, value in state.items():
        if key.startswith(T_PRE):
            rest = key[len(T_PRE) :]
            if rest == "token_embedding.weight":
                out["token_embedding.weight"] = value
            elif rest == "pos_embed":
                out["positional_embedding"] = value.reshape(-1, value.shape[-1])
            elif rest == "mask":
                causal = torch.full(value.shape, float("-inf")).triu_(1)
                if not torch.equal(value.float(), causal):
                    raise WeightsError(f"{key}: not the causal mask ImageBind's text tower uses")
            else:
                out[key] = value
        elif key.startswith(T_TRUNK):
            rest = key[len(T_TRUNK) :]
            if rest.startswith("blocks."):
                try:
                    out[_map_block(rest[len("blocks.") :])] = value
                except KeyError:
                    out[key] = value
            else:
                out[key] = value
        elif key.startswith(T_HEAD):
            rest = key[len(T_HEAD) :]
            if rest.startswith("proj.0."):
                out["ln_final." + rest[len("proj.0.") :]] = value
            elif rest == "proj.1.weight":
                out["text_projection"] = value.T.contiguous()
            else:
                out[key] = value
        elif key.startswith(T_POST):
            if key[len(T_POST) :] == "1.log_logit_scale":
                logit_scale = value
            else:
                out[key] = value
    return out, logit_scale


def read_checkpoint(path: str | Path, what: str, hint: str) -> dict[str, "torch.Tensor"]:
    """The tensors of a local file (weights_only), unwrapped; a missing file says which file goes where."""
    return load_torch_checkpoint(
        path, what=what, hint=hint, unwrap=CHECKPOINT_WRAPPERS, tensors_only=True, strip_prefix="module."
    )


def load_imagebind(
    path: str | Path, arch: "ImageBindArchitecture", text: bool
) -> tuple["nn.Module", "nn.Module | None"]:
    """Vision tower (and text tower if ``text``) from ``imagebind_huge.pth``, loaded strictly."""
    from myriad_experts_anomalygpt.expert import IMAGEBIND_HINT

    state = read_checkpoint(path, "ImageBind checkpoint", IMAGEBIND_HINT)
    if not any(k.startswith(V_PRE) for k in state):
        raise WeightsError(f"{path}: no '{V_PRE}*' keys: not an ImageBind checkpoint")
    vision = build_vision_tower(arch)
    load_state_dict_strict(vision, vision_state_from_imagebind(state), str(path), "ImageBind vision tower")
    text_tower = None
    if text:
        text_tower = build_text_tower(arch)
        text_state, logit_scale = text_state_from_imagebind(state)
        load_state_dict_strict(text_tower, text_state, str(path), "ImageBind text tower")
        text_tower.logit_scale = logit_scale  # type: ignore[assignment]
    known = (V_PRE, V_TRUNK, V_HEAD, T_PRE, T_TRUNK, T_HEAD, T_POST, "modality_postprocessors.vision.")
    strays = [k for k in state if not k.startswith(known) and (k.split(".") + [""])[1] not in _OTHER_MODALITIES]
    if strays:
        raise WeightsError(f"{path}: unexpected keys outside ImageBind's modalities, e.g. {strays[:3]}")
    del state
    return vision, text_tower


def vision_taps(visual: "nn.Module", x: "torch.Tensor", taps: Sequence[int]) -> list["torch.Tensor"]:
    """Raw outputs (``B x (1 + L) x W``, CLS first, no final norm) of 0-indexed blocks ``taps``."""
    return vit_tokens(visual, x, taps, pooled=False)[0]
