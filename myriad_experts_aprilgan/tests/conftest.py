"""Fixtures for the AprilGAN tests: a tiny CLIP and adapters written in the published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from myriad.testing import brick_crops

#: open_clip config of a tiny CLIP ViT (same structure as ViT-L-14-336), built in code: nothing is downloaded.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clip(seed: int = 0) -> torch.nn.Module:
    """A random tiny open_clip CLIP (QuickGELU, as OpenAI's)."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(TINY_CLIP["embed_dim"], TINY_CLIP["vision_cfg"], TINY_CLIP["text_cfg"], quick_gelu=True).eval()


def adapter_state(seed: int = 1, count: int = 4) -> dict[str, torch.Tensor]:
    """AprilGAN's LinearLayer state dict for the tiny CLIP (fc.N: 32 -> 16)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(count):
        state[f"fc.{i}.weight"] = torch.randn(16, 32, generator=g) * 0.3
        state[f"fc.{i}.bias"] = torch.randn(16, generator=g) * 0.1
    return state


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP as an OpenAI-style TorchScript .pt and as a plain state dict, and adapters as released."""
    import warnings

    folder = tmp_path_factory.mktemp("aprilgan_weights")
    model = tiny_clip()
    paths = {
        "clip": folder / "tiny_clip_open_clip.pth",
        "clip_jit": folder / "ViT-tiny.pt",
        "adapters": folder / "mvtec_pretrained.pth",
    }
    torch.save(model.state_dict(), paths["clip"])

    class Whole(torch.nn.Module):  # an archive holding every CLIP tensor under OpenAI's names
        def __init__(self, clip: torch.nn.Module) -> None:
            super().__init__()
            for name, child in clip.named_children():
                setattr(self, name, child)
            self.positional_embedding = clip.positional_embedding
            self.text_projection = clip.text_projection
            self.logit_scale = clip.logit_scale
            self.register_buffer("input_resolution", torch.tensor(32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x) * self.logit_scale.exp()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(Whole(model), torch.randn(1, 3, 32, 32), check_trace=False).save(str(paths["clip_jit"]))
    torch.save({"trainable_linearlayer": adapter_state()}, paths["adapters"])
    return paths


def tiny_config(weights: dict[str, Path], **extra: object) -> dict:  # noqa: D103
    return {
        "clip_weights": str(weights["clip"]),
        "adapter_weights": str(weights["adapters"]),
        "architecture": TINY_CLIP,
        "image_size": 48,  # native 32 px: the positional embedding is resized from 4 x 4 to 6 x 6
        "layers": [1, 2, 3, 4],
        "class_name": "bottle",
        **extra,
    }


@pytest.fixture(scope="session")
def kit():  # noqa: ANN201 - test modules cannot import conftest by name
    """The helpers of this conftest."""
    from types import SimpleNamespace

    return SimpleNamespace(
        TINY_CLIP=TINY_CLIP, tiny_clip=tiny_clip, adapter_state=adapter_state, tiny_config=tiny_config, brick_crops=brick_crops
    )
