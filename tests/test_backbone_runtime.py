"""Frozen backbones on an inference runtime: parity with torch, the export cache, and every way to fall back."""

from __future__ import annotations

import warnings

import pytest
import torch

from myriad import backbone_runtime
from myriad.backbone import FeatureBackbone
from myriad.backbone_runtime import BackboneRuntimeWarning, resolve_runtime
from myriad.errors import ConfigError

RUNTIMES = backbone_runtime.installed_runtimes()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MYRIAD_CACHE", str(tmp_path / "cache"))


def _batch() -> torch.Tensor:
    return torch.rand(2, 3, 88, 120, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_the_test_environment_has_a_runtime() -> None:
    """CI installs ONNX Runtime (the test extra): the parity tests below run, never skip."""
    assert "onnxruntime" in RUNTIMES


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_features_equal_torch(runtime: str) -> None:
    reference = FeatureBackbone(out_indices=(2, 3))
    expected = reference(_batch())
    accelerated = FeatureBackbone(out_indices=(2, 3))
    assert accelerated.use_runtime(runtime) == runtime
    got = accelerated(_batch())
    assert [t.shape for t in got] == [t.shape for t in expected]  # sides not seen at export: shapes are dynamic
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))
    files = sorted(p.suffix for p in backbone_runtime.cache_folder().iterdir())
    assert files == [".json", ".onnx"]


def test_the_export_is_reused_and_keyed_by_the_weights() -> None:
    first = FeatureBackbone(out_indices=(2, 3))
    first.use_runtime("onnxruntime")
    onnx = next(backbone_runtime.cache_folder().glob("*.onnx"))
    stamp = onnx.stat().st_mtime_ns
    second = FeatureBackbone(out_indices=(2, 3))
    second.use_runtime("onnxruntime")
    assert onnx.stat().st_mtime_ns == stamp  # reused, not exported again
    other = FeatureBackbone(out_indices=(1, 2))
    other.use_runtime("onnxruntime")
    assert len(list(backbone_runtime.cache_folder().glob("*.onnx"))) == 2  # other stages, another file


def test_an_exported_file_from_another_backbone_is_refused_and_made_again() -> None:
    FeatureBackbone(out_indices=(1, 2)).use_runtime("onnxruntime")
    foreign = next(backbone_runtime.cache_folder().glob("*.onnx")).read_bytes()
    backbone = FeatureBackbone(out_indices=(2, 3))
    backbone.use_runtime("onnxruntime")
    mine = next(p for p in backbone_runtime.cache_folder().glob("*.onnx") if p.read_bytes() != foreign)
    mine.write_bytes(foreign)  # the file under this backbone's name now holds another backbone
    again = FeatureBackbone(out_indices=(2, 3))
    with pytest.warns(BackboneRuntimeWarning, match="do not match the model"):
        assert again.use_runtime("onnxruntime") == "onnxruntime"
    for a, b in zip(FeatureBackbone(out_indices=(2, 3))(_batch()), again(_batch())):
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))


def test_a_runtime_that_is_not_installed_falls_back_to_torch_with_one_line(monkeypatch) -> None:
    monkeypatch.setattr(backbone_runtime, "installed_runtimes", lambda: [])
    assert resolve_runtime("auto") == "torch"
    backbone = FeatureBackbone(out_indices=(2, 3))
    with pytest.warns(BackboneRuntimeWarning, match="'openvino' is not installed") as caught:
        assert backbone.use_runtime("openvino") == "torch"
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert backbone.runtime == "torch" and backbone._runner is None


def test_a_failed_export_falls_back_to_torch_with_one_line(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    backbone = FeatureBackbone(out_indices=(2, 3))
    with pytest.warns(BackboneRuntimeWarning, match="export for onnxruntime failed .RuntimeError: unsupported operator.") as caught:
        assert backbone.use_runtime("onnxruntime") == "torch"
    assert "\n" not in str(caught[0].message)
    expected = FeatureBackbone(out_indices=(2, 3))(_batch())
    assert all(torch.equal(a, b) for a, b in zip(expected, backbone(_batch())))


def test_torch_and_unknown_runtimes() -> None:
    backbone = FeatureBackbone(out_indices=(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backbone.use_runtime("torch") == "torch"
    with pytest.raises(ConfigError, match="runtime 'tensorrt'"):
        backbone.use_runtime("tensorrt")


def test_the_cli_prints_a_myriad_warning_as_one_line(monkeypatch, capsys) -> None:
    from myriad import cli
    from myriad.errors import MyriadWarning

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    cli.main(["--help"])
    capsys.readouterr()
    text = warnings.formatwarning(BackboneRuntimeWarning("x.onnx: runtime failed"), BackboneRuntimeWarning, "f.py", 3)
    assert text == "Warning: x.onnx: runtime failed\n" and issubclass(BackboneRuntimeWarning, MyriadWarning)
    assert "f.py:3" in warnings.formatwarning(UserWarning("other"), UserWarning, "f.py", 3)  # others as Python prints them
