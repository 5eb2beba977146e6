"""The plugin host: registration, lookup errors, failing plugins, MYRIAD_LOAD_PLUGINS."""

from __future__ import annotations

import types

import pytest

from myriad import hookimpl
from myriad.errors import ConfigError, MyriadError, UnknownExpertError
from myriad.experts import Mode
from myriad.plugins import get_expert, get_expert_info, list_experts
from myriad.testing import constant_expert, constant_expert_plugin


EchoExpert = constant_expert()
EchoConfig = EchoExpert.Config


def make_plugin(name: str = "echo", **extra):
    return constant_expert_plugin(name, description="Echo.", **extra)


def test_in_process_plugin_registers_and_builds(myriad_plugin):
    myriad_plugin(make_plugin(), name="echo-plugin")
    info = get_expert_info("echo")
    assert info.modes == (Mode.ZERO_SHOT,)
    assert info.as_dict()["modes"] == ["zero_shot"]
    expert = get_expert("echo", {"level": 0.5})
    assert isinstance(expert, EchoExpert) and expert.config.level == 0.5
    assert "echo" in [e.name for e in list_experts()]


def test_unknown_expert_lists_installed(myriad_plugin):
    myriad_plugin(make_plugin(), name="echo-plugin")
    with pytest.raises(UnknownExpertError, match="installed experts: .*echo"):
        get_expert("no-such-expert")


def test_invalid_config_names_the_expert(myriad_plugin):
    myriad_plugin(make_plugin(), name="echo-plugin")
    with pytest.raises(ConfigError, match="echo"):
        get_expert("echo", {"level": "not a number"})


def test_duplicate_names_are_refused(myriad_plugin):
    myriad_plugin(make_plugin(), name="a")
    myriad_plugin(make_plugin(), name="b")
    with pytest.raises(MyriadError, match="registered twice"):
        list_experts()


def test_unknown_mode_is_refused(myriad_plugin):
    plugin = types.SimpleNamespace()

    @hookimpl
    def register_experts(register):
        register("bad", factory=EchoExpert, config=EchoConfig, modes=["sometimes"], description="x")

    plugin.register_experts = register_experts
    myriad_plugin(plugin, name="bad")
    with pytest.raises(MyriadError, match="unknown mode"):
        list_experts()


def test_lazy_factory_string_with_bad_target(myriad_plugin):
    plugin = types.SimpleNamespace()

    @hookimpl
    def register_experts(register):
        register("lazy", factory="no_such_module_xyz:Thing", config=EchoConfig, modes=["zero_shot"], description="x")

    plugin.register_experts = register_experts
    myriad_plugin(plugin, name="lazy")
    assert "lazy" in [e.name for e in list_experts()]  # listing never imports the factory
    with pytest.raises(MyriadError, match="no_such_module_xyz"):
        get_expert("lazy")


def test_zero_shot_expert_predicts_without_fit(myriad_plugin):
    import numpy as np

    myriad_plugin(make_plugin(), name="echo-plugin")
    expert = get_expert("echo")
    preds = expert.predict([np.zeros((5, 7), np.uint8), np.zeros((3, 4, 4), np.uint16)])
    assert [p.anomaly_map.shape for p in preds] == [(5, 7), (3, 4)]
    with pytest.raises(MyriadError, match="takes no fit"):
        expert.fit([np.zeros((5, 7, 3), np.uint8)])
