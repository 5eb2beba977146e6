"""MuSc's ViT backbones at tiny random size: checkpoints written in the published layouts, loaded strictly."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from myriad.errors import ConfigError, MyriadError, WeightsError
from myriad.plugins import get_expert
from myriad.testing import synthetic_images

#: open_clip model config of a tiny CLIP ViT (same structure as ViT-L-14-336: conv1, class/positional
#: embeddings, ln_pre, resblocks, ln_post, proj), built in code: nothing is downloaded.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
#: timm kwargs turning vit_small_patch14_dinov2 into a tiny DINOv2-style ViT (layer scale, patch 14).
TINY_DINO = {"embed_dim": 32, "depth": 4, "num_heads": 2, "img_size": 56}


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(TINY_CLIP["embed_dim"], TINY_CLIP["vision_cfg"], TINY_CLIP["text_cfg"], quick_gelu=True)


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP saved as a plain state dict in the OpenAI / open_clip key layout (visual.*, transformer.*, ...)."""
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pth"
    torch.save(tiny_clip().state_dict(), path)
    return path


def clip_config(weights: Path, **extra: object) -> dict:
    return {
        "backbone": "open_clip:tiny",
        "weights": str(weights),
        "architecture": TINY_CLIP,
        "image_size": 48,  # native 32 px (4 x 4 grid): the positional embedding is resized to 6 x 6
        "r_list": [1, 3],
        "progress": False,
        **extra,
    }


def test_open_clip_vit_loads_strictly_and_scores(clip_checkpoint: Path) -> None:
    expert = get_expert("musc", clip_config(clip_checkpoint))
    backbone = expert.backbone
    assert backbone.layers == [1, 2, 3, 4]  # quarters of the depth, 1-indexed
    assert tuple(backbone.visual.positional_embedding.shape) == (1 + 36, 32)
    images = synthetic_images(3, 40, seed=0)
    grids, emb = expert.extract(images)
    assert [tuple(g.shape) for g in grids] == [(3, 32, 6, 6)] * 4 and tuple(emb.shape) == (3, 16)
    preds = expert.predict(images)
    assert all(p.anomaly_map.shape == (40, 40) and np.isfinite(p.score) for p in preds)


def test_open_clip_tokens_are_the_raw_block_outputs(clip_checkpoint: Path) -> None:
    """The taps equal open_clip's own forward_intermediates (at the native size) and the embedding encode_image."""
    model = tiny_clip().eval()
    expert = get_expert("musc", clip_config(clip_checkpoint, image_size=32, layers=[2, 4]))
    x = torch.randn(2, 3, 32, 32)
    grids, pooled = expert.backbone(x)
    with torch.no_grad():
        ref = model.visual.forward_intermediates(x, indices=[1, 3], output_fmt="NCHW")
        torch.testing.assert_close(pooled, model.encode_image(x), rtol=1e-4, atol=1e-5)
    for got, want in zip(grids, ref["image_intermediates"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_openai_torchscript_archive_is_read(tmp_path: Path, clip_checkpoint: Path) -> None:
    """OpenAI's released .pt files are TorchScript archives; their tensors are read without unpickling code."""

    class Holder(torch.nn.Module):
        def __init__(self, clip: torch.nn.Module) -> None:
            super().__init__()
            self.visual = clip.visual
            self.logit_scale = clip.logit_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x) * self.logit_scale

    archive = tmp_path / "ViT-tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Holder(tiny_clip()).eval(), torch.randn(1, 3, 32, 32), check_trace=False)
    traced.save(str(archive))
    a = get_expert("musc", clip_config(archive)).extract(synthetic_images(2, 32))
    b = get_expert("musc", clip_config(clip_checkpoint)).extract(synthetic_images(2, 32))
    torch.testing.assert_close(a[1], b[1])


def test_checkpoint_mismatch_is_reported(tmp_path: Path) -> None:
    state = tiny_clip().state_dict()
    state.pop("visual.ln_post.weight")
    state["visual.extra"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"1 missing .*ln_post.*1 unexpected"):
        get_expert("musc", clip_config(bad)).extract(synthetic_images(2, 32))
    torch.save({"text.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="no 'visual"):
        get_expert("musc", clip_config(bad)).extract(synthetic_images(2, 32))


def test_missing_weights_say_which_file_goes_where(tmp_path: Path) -> None:
    expert = get_expert("musc", {"backbone": "open_clip:ViT-L-14-336", "progress": False})
    with pytest.raises(WeightsError, match="ViT-L-14-336px.pt.*weights=PATH"):
        expert.predict(synthetic_images(2, 32))
    expert = get_expert("musc", {**clip_config(tmp_path / "absent.pth")})
    with pytest.raises(WeightsError, match="absent.pth: weights file not found"):
        expert.predict(synthetic_images(2, 32))


def test_bad_layers_and_backbones(clip_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="out of range"):
        get_expert("musc", clip_config(clip_checkpoint, layers=[5])).predict(synthetic_images(2, 32))
    with pytest.raises(ConfigError, match="unknown backbone family"):
        get_expert("musc", {"backbone": "hub:vit", "progress": False}).predict(synthetic_images(2, 32))
    with pytest.raises(MyriadError):
        get_expert("musc", {"r_list": [2]})


def test_timm_dinov2_style_vit(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **TINY_DINO)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    config = {
        "backbone": "timm:vit_small_patch14_dinov2",
        "weights": str(path),
        "architecture": TINY_DINO,
        "image_size": 70,  # native 56 px: timm resamples the position embedding to 5 x 5
        "layers": [2, 4],
        "progress": False,
    }
    expert = get_expert("musc", config)
    grids, emb = expert.extract(synthetic_images(3, 48))
    assert [tuple(g.shape) for g in grids] == [(3, 32, 5, 5)] * 2 and tuple(emb.shape) == (3, 32)
    assert expert.backbone.normalisation == "imagenet"
    preds = expert.predict(synthetic_images(3, 48))
    assert all(p.anomaly_map.shape == (48, 48) for p in preds)
    state = model.state_dict()
    state.pop("blocks.3.ls2.gamma")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match="missing"):
        get_expert("musc", {**config, "layers": [1]}).extract(synthetic_images(2, 48))
