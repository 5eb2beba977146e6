"""The embedded EfficientNet-Lite0 holds real ImageNet weights; other backbones load from local files."""

from __future__ import annotations

import pytest
import torch

from myriad.backbone import EMBEDDED, FeatureBackbone, lite0_key_map, load_timm_model
from myriad.commands.check_backbone import CAT_CLASSES, ESPRESSO, classify_samples
from myriad.errors import WeightsError


def test_all_296_keys_map_one_to_one():
    from myriad.backbone import _read_state_dict, embedded_weights_path

    raw = _read_state_dict(embedded_weights_path())
    mapping = lite0_key_map(list(raw))
    assert len(raw) == 296 and len(set(mapping.values())) == 296


def test_chelsea_is_a_cat_and_coffee_is_espresso():
    results = classify_samples()
    assert results["chelsea"][0] in CAT_CLASSES
    assert results["coffee"][0] == ESPRESSO


def test_feature_backbone_shapes():
    backbone = FeatureBackbone(EMBEDDED, out_indices=(2, 3))
    feats = backbone(torch.zeros(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    assert backbone.info.reductions == (8, 16)


def test_other_timm_backbone_from_local_file(tmp_path):
    from safetensors.torch import save_file

    model = load_timm_model.__wrapped__ if hasattr(load_timm_model, "__wrapped__") else None
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "r18.safetensors"))
    backbone = FeatureBackbone("resnet18", out_indices=(2, 3), weights=tmp_path / "r18.safetensors")
    assert backbone.info.channels == (128, 256)
    assert torch.equal(backbone.model.state_dict()["conv1.weight"], source.state_dict()["conv1.weight"])
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    FeatureBackbone("resnet18", out_indices=(2, 3), weights=tmp_path / "r18.pth")
    del model


def test_wrong_or_missing_weights_are_refused(tmp_path):
    import timm
    from safetensors.torch import save_file

    with pytest.raises(WeightsError, match="local weights file"):
        load_timm_model("resnet18")
    save_file(timm.create_model("resnet18").state_dict(), str(tmp_path / "r18.safetensors"))
    with pytest.raises(WeightsError, match="do not match"):
        load_timm_model("resnet34", tmp_path / "r18.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        load_timm_model("resnet18", tmp_path / "missing.pth")
