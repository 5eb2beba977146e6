"""AprilGAN on a tiny random CLIP (mechanics, checkpoints in the published layouts) and its memory branch for real."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from myriad.errors import ConfigError, WeightsError
from myriad.experts import Expert
from myriad.plugins import get_expert
from myriad.testing import synthetic_images
from myriad_experts_aprilgan.clip import PROMPT_TEMPLATES, prompt_sentences


def test_prompt_ensemble() -> None:
    normal, abnormal = prompt_sentences("metal_nut")
    assert len(PROMPT_TEMPLATES) == 35 and len(normal) == 7 * 35 and len(abnormal) == 5 * 35
    assert "a photo of a flawless metal nut." in normal and "this is one metal nut with damage in the scene." in abnormal


def _reference(kit, images: list[np.ndarray], class_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot map and score recomputed with open_clip's own API on the same tiny weights."""
    import open_clip

    from myriad.images import to_tensor

    model = kit.tiny_clip()
    # positional embedding resized bicubically for a 48 px run (4 x 4 -> 6 x 6 patches)
    pos = model.visual.positional_embedding.data
    body = F.interpolate(pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(6, 6), mode="bicubic", align_corners=False)
    model.visual.positional_embedding = torch.nn.Parameter(torch.cat([pos[:1], body.permute(0, 2, 3, 1).reshape(36, -1)]))
    model.visual.grid_size = (6, 6)
    x = to_tensor(images, 48, "clip", interpolation="bicubic")
    adapters = kit.adapter_state()
    with torch.no_grad():
        out = model.visual.forward_intermediates(x, indices=[0, 1, 2, 3], output_fmt="NLC")
        tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the CLIP BPE tokenizer shipped with open_clip
        cols = []
        for group in prompt_sentences(class_name):
            emb = F.normalize(model.encode_text(tokenizer(group)), dim=-1)
            cols.append(F.normalize(emb.mean(0), dim=-1))
        text = torch.stack(cols, dim=1)
        total = 0
        for i, tok in enumerate(out["image_intermediates"]):
            t = F.normalize(tok @ adapters[f"fc.{i}.weight"].T + adapters[f"fc.{i}.bias"], dim=-1)
            logits = (100 * t @ text).transpose(1, 2).reshape(len(images), 2, 6, 6)
            logits = F.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=True)
            total = total + logits.softmax(dim=1)[:, 1]
        image = F.normalize(out["image_features"], dim=-1)
        score = (100 * image @ text).softmax(dim=-1)[:, 1]
    return total, score


def test_zero_shot_matches_open_clip(kit, tiny_weights) -> None:
    images = synthetic_images(2, 40, seed=4)
    preds = get_expert("aprilgan", kit.tiny_config(tiny_weights, class_name="metal_nut")).predict(images)
    maps, scores = _reference(kit, images, "metal nut")
    from myriad.images import resize_map

    for pred, m, s in zip(preds, maps, scores):
        assert abs(pred.score - float(s)) < 1e-4
        np.testing.assert_allclose(pred.anomaly_map, resize_map(m.numpy(), 40, 40), rtol=1e-4, atol=1e-4)
        assert pred.anomaly_map.min() >= 0 and pred.anomaly_map.max() <= 4  # sum of 4 probabilities


def test_openai_torchscript_and_open_clip_files_give_the_same_model(kit, tiny_weights) -> None:
    images = synthetic_images(2, 40, seed=4)
    a = get_expert("aprilgan", kit.tiny_config(tiny_weights)).predict(images)
    b = get_expert("aprilgan", kit.tiny_config(tiny_weights, clip_weights=str(tiny_weights["clip_jit"]))).predict(images)
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.anomaly_map, pb.anomaly_map, rtol=1e-5, atol=1e-6)


def test_checkpoints_load_strictly(kit, tiny_weights, tmp_path: Path) -> None:
    images = synthetic_images(2, 32)
    bad = tmp_path / "visa_pretrained.pth"
    state = kit.adapter_state()
    state.pop("fc.3.bias")
    torch.save({"trainable_linearlayer": state}, bad)
    with pytest.raises(WeightsError, match=r"adapter checkpoint.*1 missing.*fc\.3\.bias"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, adapter_weights=str(bad))).predict(images)
    torch.save(kit.adapter_state(), bad)  # not wrapped in trainable_linearlayer
    with pytest.raises(WeightsError, match="no 'trainable_linearlayer'"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, adapter_weights=str(bad))).predict(images)
    clip_state = kit.tiny_clip().state_dict()
    clip_state.pop("transformer.resblocks.0.ln_1.weight")
    torch.save(clip_state, bad)
    with pytest.raises(WeightsError, match=r"CLIP checkpoint.*1 missing.*resblocks\.0\.ln_1"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, clip_weights=str(bad))).predict(images)


def test_missing_files_say_which_file_goes_where(kit, tiny_weights, tmp_path: Path) -> None:
    images = synthetic_images(2, 32)
    with pytest.raises(WeightsError, match=r"ViT-L-14-336px\.pt.*clip_weights=PATH"):
        get_expert("aprilgan", {"class_name": "bottle"}).predict(images)
    with pytest.raises(WeightsError, match=r"mvtec_pretrained\.pth.*adapter_weights=PATH"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, adapter_weights=None)).predict(images)
    with pytest.raises(WeightsError, match=r"gone\.pth: AprilGAN adapter checkpoint not found; download"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, adapter_weights=str(tmp_path / "gone.pth"))).predict(images)


def test_missing_class_name_falls_back_to_object_with_a_warning(kit, tiny_weights) -> None:
    images = synthetic_images(2, 32)
    expert = get_expert("aprilgan", kit.tiny_config(tiny_weights, class_name=None))
    with pytest.warns(UserWarning, match="no class_name.*'object'"):
        a = expert.predict(images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = get_expert("aprilgan", kit.tiny_config(tiny_weights, class_name="object")).predict(images)
    np.testing.assert_allclose(a[0].anomaly_map, b[0].anomaly_map)


def test_few_shot_adds_the_memory_map(kit, tiny_weights, tmp_path: Path) -> None:
    images = synthetic_images(4, 40, seed=6)
    zero = get_expert("aprilgan", kit.tiny_config(tiny_weights)).predict(images[2:])
    expert = get_expert("aprilgan", kit.tiny_config(tiny_weights, mode="few_shot"))
    expert.fit(images[:2])
    assert [tuple(m.shape) for m in expert.memory] == [(2 * 36, 32)] * 4
    few = expert.predict(images[2:])
    same = expert.predict(images[:1])[0]  # a reference: its memory distance is 0, only the zero-shot part is left
    np.testing.assert_allclose(same.anomaly_map, get_expert("aprilgan", kit.tiny_config(tiny_weights)).predict(images[:1])[0].anomaly_map, atol=2e-4)
    for z, f in zip(zero, few):
        assert (f.anomaly_map >= z.anomaly_map - 1e-5).all() and f.anomaly_map.max() > z.anomaly_map.max()
        assert abs(f.score - 0.5 * (z.score + float(f.anomaly_map.max()) / 8)) < 0.05  # peak on the 48 px grid
    expert.save(tmp_path / "saved")
    reloaded = Expert.load(tmp_path / "saved")
    np.testing.assert_allclose(reloaded.predict(images[2:])[0].anomaly_map, few[0].anomaly_map, rtol=1e-6)


def test_config_errors(kit, tiny_weights) -> None:
    with pytest.raises(ConfigError, match="zero_shot_branch"):
        get_expert("aprilgan", {"zero_shot_branch": False})
    with pytest.raises(ConfigError, match="out of range"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, layers=[1, 5])).predict(synthetic_images(2, 32))
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        get_expert("aprilgan", kit.tiny_config(tiny_weights, image_size=50)).predict(synthetic_images(2, 32))


def test_no_hard_coded_cuda() -> None:
    import myriad_experts_aprilgan.expert as module

    root = Path(module.__file__).parent
    for path in root.glob("*.py"):
        code = path.read_text()
        assert ".cuda(" not in code and "'cuda'" not in code and '"cuda"' not in code and "current_device" not in code, path


def test_memory_branch_alone_with_the_embedded_cnn_finds_defects(kit) -> None:
    images, masks = kit.brick_crops(6, 3, seed=1)
    expert = get_expert(
        "aprilgan", {"mode": "few_shot", "zero_shot_branch": False, "few_shot_backbone": "efficientnet_lite0"}
    )
    assert expert.image_size == 224 and expert.few_shot_layers == [2, 3] and not expert.needs_clip
    preds = expert.fit(images[:2]).predict(images[2:])
    scores = np.array([p.score for p in preds])
    assert scores[4:].min() > scores[:4].max(), scores
    for pred, mask in zip(preds[4:], masks[6:]):
        y, x = np.unravel_index(np.argmax(pred.anomaly_map), mask.shape)
        assert mask[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5].any(), "the map's peak is not on the defect"


