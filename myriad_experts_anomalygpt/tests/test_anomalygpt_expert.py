"""AnomalyGPT's two branches: mechanics on the tiny ImageBind, real detection with the embedded CNN."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from myriad.errors import WeightsError
from myriad.experts import Expert
from myriad.plugins import get_expert
from myriad.testing import synthetic_images
from myriad_experts_anomalygpt.expert import export_text_features


def test_one_class_map_is_the_decoder_against_the_prompts(kit, tiny_weights) -> None:
    """Recompute the map from the reference forward: fc_i(tokens) . text, 224-style upsampling, softmax, mean."""
    from open_clip.tokenizer import tokenize

    expert = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class", class_name="metal_nut"))
    images = synthetic_images(2, 40, seed=5)
    preds = expert.fit(images).predict(images)

    state, dec = kit.imagebind_state(), kit.decoder_state()
    from myriad.images import to_tensor

    x = to_tensor(images, 28, "clip", interpolation="bicubic")
    blocks, _ = kit.reference_vision(state, x)
    rows = []
    for group in (
        [t.format(s) for s in ["metal nut", "flawless metal nut", "perfect metal nut", "unblemished metal nut",
                               "metal nut without flaw", "metal nut without defect", "metal nut without damage"]
         for t in ["a photo of a {}.", "a photo of the {}."]],
        [t.format(s) for s in ["damaged metal nut", "broken metal nut", "metal nut with flaw", "metal nut with defect",
                               "metal nut with damage"] for t in ["a photo of a {}.", "a photo of the {}."]],
    ):
        rows.append(F.normalize(kit.reference_text(state, tokenize(group)).mean(0), dim=-1))
    text = torch.stack(rows)
    maps = []
    for i, tokens in enumerate(blocks):  # taps 1..4 of 4 blocks
        t = F.normalize(tokens[:, 1:] @ dec[f"image_decoder.fc.{i}.weight"].T + dec[f"image_decoder.fc.{i}.bias"], dim=-1)
        logits = (100 * t @ text.T).transpose(1, 2).reshape(2, 2, 4, 4)
        logits = F.interpolate(logits, size=28, mode="bilinear", align_corners=True)
        maps.append(logits.softmax(dim=1)[:, 1])
    want = torch.stack(maps).mean(0)
    for pred, m in zip(preds, want):
        assert abs(pred.score - float(m.max())) < 1e-4
        full = F.interpolate(m[None, None], size=(40, 40), mode="bilinear", align_corners=True)[0, 0]
        np.testing.assert_allclose(pred.anomaly_map, full.numpy(), rtol=1e-4, atol=1e-4)
        assert 0.0 <= pred.anomaly_map.min() and pred.anomaly_map.max() <= 1.0


def test_missing_class_name_falls_back_to_object_with_a_warning(kit, tiny_weights) -> None:
    images = synthetic_images(2, 32)
    expert = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class", class_name=None))
    with pytest.warns(UserWarning, match="no class_name.*'object'"):
        a = expert.fit(images).predict(images)
    named = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class", class_name="object"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a given class name warns nothing
        b = named.fit(images).predict(images)
    np.testing.assert_allclose(a[0].anomaly_map, b[0].anomaly_map)


def test_precomputed_text_features(kit, tiny_weights, tmp_path: Path) -> None:
    images = synthetic_images(2, 32)
    path = tmp_path / "prompts.safetensors"
    export_text_features(kit.tiny_config(tiny_weights), ["bottle", "metal_nut"], str(path))
    from_tower = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class")).fit(images).predict(images)
    cfg = kit.tiny_config(tiny_weights, mode="one_class", text_features=str(path))
    expert = get_expert("anomalygpt", cfg)
    from_file = expert.fit(images).predict(images)
    assert expert._text is not None and expert._vision is not None
    np.testing.assert_allclose(from_tower[1].anomaly_map, from_file[1].anomaly_map, rtol=1e-5, atol=1e-6)
    with pytest.raises(WeightsError, match=r"no prompt features for class 'screw'.*'bottle', 'metal nut'"):
        get_expert("anomalygpt", {**cfg, "class_name": "screw"}).fit(images)


def test_few_shot_on_the_tiny_imagebind(kit, tiny_weights, tmp_path: Path) -> None:
    images = synthetic_images(3, 32, seed=2)
    expert = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="few_shot", rotate_references=True))
    expert.fit(images[:2])
    assert [tuple(m.shape) for m in expert.memory] == [(2 * 4 * 16, 32)] * 4  # k x 4 rotations x 16 patches
    preds = expert.predict(images)
    assert preds[0].score < 1e-4 and preds[1].score < 1e-4  # the references themselves: similarity 1
    assert preds[2].score > 1e-3
    expert.save(tmp_path / "saved")
    reloaded = Expert.load(tmp_path / "saved")
    np.testing.assert_allclose(reloaded.predict(images)[2].anomaly_map, preds[2].anomaly_map, rtol=1e-6)
    other = kit.tiny_config(tiny_weights, mode="few_shot", layers=[2, 4])
    from myriad.io import load_tensors
    from myriad_experts_anomalygpt.expert import AnomalyGPTExpert

    with pytest.raises(WeightsError, match="saved memory was built with"):
        AnomalyGPTExpert(AnomalyGPTExpert.Config.model_validate(other)).load_state_tensors(
            load_tensors(tmp_path / "saved" / "state.safetensors"),
            {"backbone": "imagebind", "layers": [1, 2, 3, 4], "image_size": 28},
        )


def test_few_shot_with_the_embedded_cnn_finds_defects(kit) -> None:
    images, masks = kit.brick_crops(6, 3, seed=1)
    expert = get_expert("anomalygpt", {"backbone": "efficientnet_lite0"})
    assert expert.layers == [2, 3] and expert.image_size == 224
    preds = expert.fit(images[:2]).predict(images[2:])
    scores = np.array([p.score for p in preds])
    assert scores[4:].min() > scores[:4].max(), scores
    for pred, mask in zip(preds[4:], masks[6:]):
        y, x = np.unravel_index(np.argmax(pred.anomaly_map), mask.shape)
        assert mask[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5].any(), "the map's peak is not on the defect"


