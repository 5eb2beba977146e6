"""One host rule for an expert's mode and device (myriad.expert_settings), as inspect, eval and serve use it."""

from __future__ import annotations

import pytest

from myriad.errors import ConfigError
from myriad.expert_settings import FEW_SHOT_MAX, resolve_config
from myriad.inspection import FEW_SHOT_MAX as INSPECT_FEW_SHOT_MAX


def test_the_number_of_normals_picks_the_mode_unless_the_config_says():
    assert resolve_config("patchcore", {}, num_normal=FEW_SHOT_MAX)["mode"] == "few_shot"
    assert resolve_config("patchcore", {}, num_normal=FEW_SHOT_MAX + 1)["mode"] == "one_class"
    assert resolve_config("patchcore", {"mode": "one_class"}, num_normal=2)["mode"] == "one_class"
    assert INSPECT_FEW_SHOT_MAX == FEW_SHOT_MAX
    fused = resolve_config("patchcore+global", {"patchcore": {"image_size": 256}}, num_normal=4)
    assert fused == {"patchcore": {"image_size": 256, "mode": "few_shot"}, "global": {"mode": "few_shot"}}


def test_k_shot_asks_for_few_shot_and_no_hint_means_one_class_or_zero_shot():
    assert resolve_config("patchcore", {}, k_shot=4)["mode"] == "few_shot"
    assert resolve_config("patchcore", {})["mode"] == "one_class"
    assert resolve_config("musc", {}).get("mode", "zero_shot") == "zero_shot"
    with pytest.raises(ConfigError, match="asks for few-shot mode"):
        resolve_config("patchcore", {"mode": "one_class"}, k_shot=2)
    with pytest.raises(ConfigError, match="has no few_shot mode"):
        resolve_config("musc", {}, k_shot=2)


def test_a_default_device_fills_an_unset_one_and_an_explicit_one_overrides_with_a_warning():
    assert resolve_config("patchcore", {}, device="cpu")["device"] == "cpu"
    assert resolve_config("patchcore", {"device": "cuda"}, device="cpu")["device"] == "cuda"
    assert resolve_config("patchcore", {"device": "cuda"}, device="cpu", override_device=True)["device"] == "cpu"
    warnings: list[str] = []
    config = resolve_config("colour-stats", {}, device="cuda", override_device=True, warn=warnings.append)
    assert "device" not in config and warnings and "--device cuda is ignored" in warnings[0]
