"""ImageBind and AnomalyGPT checkpoints in their published key layouts, at tiny size, loaded strictly.

The plugin's open_clip towers are compared with an independent functional ImageBind forward
(Conv3d over the frame repeated twice, sequence-first MultiheadAttention, EOS pooling).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from myriad.errors import ConfigError, WeightsError
from myriad.plugins import get_expert
from myriad.testing import synthetic_images
from myriad_experts_anomalygpt.expert import encode_prompts, prompt_sentences
from myriad_experts_anomalygpt.imagebind import load_imagebind, vision_taps
from myriad_experts_anomalygpt.plugin import ImageBindArchitecture


def test_imagebind_vision_tower_matches_the_reference_forward(kit, tiny_weights) -> None:
    arch = ImageBindArchitecture(**kit.TINY)
    vision, text = load_imagebind(tiny_weights["imagebind"], arch, text=False)
    assert text is None
    state = kit.imagebind_state()
    image = torch.randn(2, 3, 28, 28)
    ref_blocks, ref_head = kit.reference_vision(state, image)
    with torch.no_grad():
        taps = vision_taps(vision, image, [0, 1, 2, 3])
        head = vision(image)  # open_clip: ln_post on CLS, @ proj
    for got, want in zip(taps, ref_blocks):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(head, ref_head, rtol=1e-4, atol=1e-4)


def test_imagebind_text_tower_matches_the_reference_forward(kit, tiny_weights) -> None:
    from open_clip.tokenizer import tokenize

    arch = ImageBindArchitecture(**kit.TINY)
    _, text = load_imagebind(tiny_weights["imagebind"], arch, text=True)
    tokens = tokenize(["a photo of a flawless bottle.", "damaged bottle"], context_length=77)
    with torch.no_grad():
        got = torch.nn.functional.normalize(text(tokens), dim=-1)
    torch.testing.assert_close(got, kit.reference_text(kit.imagebind_state(), tokens), rtol=1e-4, atol=1e-4)
    assert abs(float(text.logit_scale.exp()) - 1 / 0.07) < 1e-3
    feats = encode_prompts(text, "metal_nut", 77)
    assert feats.shape == (2, 16)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))


def test_prompts() -> None:
    normal, abnormal = prompt_sentences("metal_nut")
    assert len(normal) == 14 and len(abnormal) == 10
    assert normal[0] == "a photo of a metal nut." and abnormal[-1] == "a photo of the metal nut with damage."


def test_strict_loading_reports_missing_and_unexpected_keys(kit, tmp_path: Path) -> None:
    arch = ImageBindArchitecture(**kit.TINY)
    state = kit.imagebind_state()
    state.pop("modality_trunks.vision.blocks.2.mlp.fc1.bias")
    state["modality_trunks.vision.blocks.1.attn.bias_k"] = torch.zeros(1, 1, 32)
    path = tmp_path / "imagebind_huge.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"vision tower.*1 missing.*resblocks\.2\.mlp\.c_fc\.bias.*1 unexpected.*bias_k"):
        load_imagebind(path, arch, text=False)
    state = kit.imagebind_state()
    state["something_else.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightsError, match="outside ImageBind's modalities"):
        load_imagebind(path, arch, text=False)
    wrong = ImageBindArchitecture(**{**kit.TINY, "width": 48})
    torch.save(kit.imagebind_state(), path)
    with pytest.raises(WeightsError, match="misshaped"):
        load_imagebind(path, wrong, text=False)


def test_decoder_loads_strictly(kit, tiny_weights, tmp_path: Path) -> None:
    expert = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class"))
    decoder = expert.decoder()
    torch.testing.assert_close(decoder.fc[2].weight, kit.decoder_state()["image_decoder.fc.2.weight"])
    state = kit.decoder_state()
    state.pop("image_decoder.fc.3.bias")
    bad = tmp_path / "pytorch_model.pt"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"image decoder.*1 missing.*fc\.3\.bias"):
        get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class", decoder_weights=str(bad))).decoder()
    torch.save({"llama_proj.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(WeightsError, match="no 'image_decoder"):
        get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class", decoder_weights=str(bad))).decoder()


def test_missing_files_say_which_file_goes_where(kit, tiny_weights, tmp_path: Path) -> None:
    images = synthetic_images(2, 32)
    expert = get_expert("anomalygpt", {"mode": "few_shot"})
    with pytest.raises(WeightsError, match=r"imagebind_huge\.pth.*imagebind_weights=PATH"):
        expert.fit(images)
    expert = get_expert("anomalygpt", kit.tiny_config(tiny_weights, mode="one_class", decoder_weights=None))
    with pytest.raises(WeightsError, match=r"pytorch_model\.pt.*decoder_weights=PATH"):
        expert.fit(images)
    absent = tmp_path / "nowhere" / "imagebind_huge.pth"
    expert = get_expert("anomalygpt", kit.tiny_config(tiny_weights, imagebind_weights=str(absent)))
    with pytest.raises(WeightsError, match=r"nowhere/imagebind_huge\.pth: ImageBind checkpoint not found; download"):
        expert.fit(images)


def test_config_errors(kit, tiny_weights) -> None:
    with pytest.raises(ConfigError, match="one_class needs backbone 'imagebind'"):
        get_expert("anomalygpt", {"mode": "one_class", "backbone": "efficientnet_lite0"})
    with pytest.raises(ConfigError, match="out of range"):
        get_expert("anomalygpt", kit.tiny_config(tiny_weights, layers=[1, 9])).fit(synthetic_images(1, 32))
    with pytest.raises(ConfigError, match="28 px"):
        get_expert("anomalygpt", kit.tiny_config(tiny_weights, image_size=35)).fit(synthetic_images(1, 32))
