"""The plugin host: registration, lookup errors, broken plugins isolated and reported once, MYRIAD_LOAD_PLUGINS."""

from __future__ import annotations

import types

import pytest

from myriad import hookimpl
from myriad.errors import ConfigError, MyriadError, PluginError, UnknownExpertError
from myriad.experts import Mode
from myriad.plugins import get_expert, get_expert_info, list_experts, plugin_errors
from myriad.testing import constant_expert, constant_expert_plugin, registered_plugin


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


def errors_of(name: str) -> list[PluginError]:
    return [e for e in plugin_errors() if e.entry_point == name]


def plugin_calling(register_call) -> types.SimpleNamespace:
    """An in-process plugin whose hook runs ``register_call(register)``."""

    @hookimpl
    def register_experts(register):
        register_call(register)

    return types.SimpleNamespace(register_experts=register_experts)


def test_duplicate_names_are_withheld_from_both_and_reported_once(myriad_plugin):
    myriad_plugin(make_plugin(), name="a")
    myriad_plugin(make_plugin(), name="b")
    myriad_plugin(make_plugin("other"), name="c")
    for _ in range(3):  # listing again neither raises nor repeats the report
        names = [e.name for e in list_experts()]
    assert "echo" not in names and "other" in names
    for plugin, other in (("a", "b"), ("b", "a")):
        (error,) = errors_of(plugin)
        assert isinstance(error, PluginError) and isinstance(error, MyriadError)
        assert error.distribution == plugin and f"'echo' is also registered by {other}" in error.error
    with pytest.raises(UnknownExpertError, match="several plugins"):
        get_expert("echo")


@pytest.mark.parametrize(
    "bad_call, message",
    [
        (lambda r: r("bad", factory=EchoExpert, config=EchoConfig, modes=["sometimes"], description="x"), "unknown mode 'sometimes'"),
        (lambda r: r("bad", factory=EchoExpert, config=EchoConfig, modes=[], description="x"), "no modes"),
        (lambda r: r("bad", factory=EchoExpert, config=dict, modes=["zero_shot"], description="x"), "pydantic"),
        (lambda r: r("two words", factory=EchoExpert, config=EchoConfig, modes=["zero_shot"], description="x"), "name"),
        (lambda r: r("bad", factory=EchoExpert, config=EchoConfig, modes=["zero_shot"], description="a\nb"), "one line"),
        (lambda r: r("bad", factory=42, config=EchoConfig, modes=["zero_shot"], description="x"), "factory"),
        (lambda r: r("bad", factory=EchoExpert, config=EchoConfig, modes=["zero_shot"]), "description"),
        (lambda r: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_a_broken_registration_is_isolated_to_its_plugin(myriad_plugin, bad_call, message):
    def good_then_bad(register):
        register("half", factory=EchoExpert, config=EchoConfig, modes=["zero_shot"], description="x")
        bad_call(register)

    myriad_plugin(make_plugin(), name="good")
    myriad_plugin(plugin_calling(good_then_bad), name="broken")
    names = [e.name for e in list_experts()]
    assert "echo" in names and "half" not in names and "bad" not in names  # a broken plugin registers nothing
    (error,) = errors_of("broken")
    assert message in error.error and "register_experts failed" in str(error)
    assert errors_of("good") == []
    list_experts()
    assert len(errors_of("broken")) == 1
    with pytest.raises(UnknownExpertError, match="plugins that failed: broken"):
        get_expert("half")


def test_errors_go_with_the_plugin(myriad_plugin):
    broken = plugin_calling(lambda r: r("bad", factory=EchoExpert, config=EchoConfig, modes=["x"], description="x"))
    with registered_plugin(broken, name="transient"):
        assert len(errors_of("transient")) == 1
    assert errors_of("transient") == []


def test_plugin_error_keeps_its_fields_and_pickles():
    import pickle

    error = PluginError("dist-a", "ep", "boom")
    assert (error.distribution, error.entry_point, error.error) == ("dist-a", "ep", "boom")
    assert str(error) == "plugin dist-a (ep): boom"
    assert pickle.loads(pickle.dumps(error)) == error


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


def faulty_expert_plugin(fault: str) -> types.SimpleNamespace:
    """A zero-shot plugin registering expert ``faulty`` whose predictions break the contract as ``fault`` says."""
    import numpy as np

    from myriad.experts import Expert, Prediction

    class FaultyExpert(Expert):
        Config = EchoConfig

        def __init__(self, config):
            super().__init__(config, Mode.ZERO_SHOT)

        def _predict(self, images):
            out = []
            for index, image in enumerate(images):
                h, w = image.shape[:2]
                amap, score = np.zeros((h, w), np.float32), 0.5
                if index == len(images) - 1:  # only the last image is wrong: the error must say which
                    if fault == "shape":
                        amap = np.zeros((h // 2, w), np.float32)
                    elif fault == "transposed":
                        amap = np.zeros((w, h), np.float32)
                    elif fault == "channels":
                        amap = np.zeros((h, w, 1), np.float32)
                    elif fault == "float16":
                        amap = amap.astype(np.float16)
                    elif fault == "int":
                        amap = amap.astype(np.int32)
                    elif fault == "nan":
                        amap[0, 0] = np.nan
                    elif fault == "inf-score":
                        score = float("inf")
                    elif fault == "str-score":
                        score = "high"
                    elif fault == "tuple":
                        out.append((amap, score))
                        continue
                    elif fault == "float64":
                        amap = np.full((h, w), 0.25, np.float64)
                        score = np.float64(0.75)
                    elif fault == "overflow":
                        amap = np.full((h, w), 1e300, np.float64)
                out.append(Prediction(amap, score))
            return out[:-1] if fault == "missing" else out

    return types.SimpleNamespace(
        register_experts=hookimpl(lambda register: register(
            "faulty", factory=FaultyExpert, config=EchoConfig, modes=["zero_shot"], description="x"))
    )


@pytest.mark.parametrize(
    "fault, message",
    [
        ("shape", r"shape \(8, 24\), the image is 16 x 24"),
        ("transposed", r"shape \(24, 16\), the image is 16 x 24"),
        ("channels", r"shape \(16, 24, 1\)"),
        ("float16", "dtype float16, the contract is float32"),
        ("int", "dtype int32"),
        ("nan", "1 non-finite values"),
        ("overflow", "384 non-finite values"),
        ("inf-score", "score is inf, not finite"),
        ("str-score", "score is a str, not a number"),
        ("tuple", "returned tuple, not a myriad.experts.Prediction"),
        ("missing", "returned 1 results for 2 images"),
    ],
)
def test_the_host_refuses_predictions_that_break_the_contract(myriad_plugin, fault, message):
    import numpy as np

    from myriad.errors import ContractError

    myriad_plugin(faulty_expert_plugin(fault), name="faulty-plugin")
    expert = get_expert("faulty")
    with pytest.raises(ContractError, match=message) as caught:
        expert.predict([np.zeros((16, 24, 3), np.uint8)] * 2)
    assert "expert 'faulty' (FaultyExpert)" in str(caught.value)
    if fault != "missing":
        assert "image 1 of the batch (2 images)" in str(caught.value)


def test_float64_maps_become_float32_and_scores_python_floats(myriad_plugin):
    import numpy as np

    myriad_plugin(faulty_expert_plugin("float64"), name="faulty-plugin")
    preds = get_expert("faulty").predict([np.zeros((16, 24, 3), np.uint8)] * 2)
    assert [p.anomaly_map.dtype for p in preds] == [np.float32, np.float32]
    assert preds[1].anomaly_map[0, 0] == np.float32(0.25) and type(preds[1].score) is float and preds[1].score == 0.75


def test_inspect_stops_on_a_wrong_shaped_map_with_one_line_naming_the_expert(myriad_plugin, tmp_path, capsys):
    from PIL import Image

    from myriad.testing import run_cli, synthetic_images

    myriad_plugin(faulty_expert_plugin("shape"), name="faulty-plugin")
    for i, image in enumerate(synthetic_images(3, 32)):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    code, _, err = run_cli(["inspect", str(tmp_path), "--expert", "faulty", "--lmm", "none", "-o", str(tmp_path / "out")], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("Error: expert 'faulty' (FaultyExpert) broke the contract")
    assert "Traceback" not in err and not (tmp_path / "out" / "results.jsonl").exists()


def test_a_class_that_disagrees_with_its_registration_is_refused_when_built(myriad_plugin):
    """register() is the one source of an expert's facts; a class saying otherwise is a plugin bug, named at build."""
    from myriad.errors import ContractError
    from myriad.plugins import get_expert

    myriad_plugin(constant_expert_plugin("says-transductive", transductive=True), name="disagreeing-plugin")
    with pytest.raises(ContractError, match=r"'says-transductive'.*transductive=False but register\(\) says transductive=True"):
        get_expert("says-transductive")
