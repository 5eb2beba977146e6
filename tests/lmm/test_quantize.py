"""int8 dynamic quantisation of the frozen LLM: an inference-only speed option."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from myriad.errors import ConfigError  # noqa: E402


def test_int8_llm_keeps_the_answers_close_and_refuses_training(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    with torch.no_grad():
        image = tiny_model.encode_image(pixels, maps)
        before = tiny_model.language_model(inputs_embeds=image).logits
    assert tiny_model.quantize_language_model("int8") is tiny_model
    assert tiny_model.llm_quantization == "int8"
    kinds = {name: "quantized" in type(m).__module__ for name, m in tiny_model.language_model.named_modules() if type(m).__name__ == "Linear"}
    assert kinds and all(q != name.endswith("down_proj") for name, q in kinds.items()), kinds  # all but down_proj
    with torch.no_grad():
        after = tiny_model.language_model(inputs_embeds=image).logits
    # int8 weights: close to the float logits, not equal
    assert 0 < float((after - before).abs().max()) < 0.1 * float(before.abs().max())
    texts = tiny_model.generate(pixels, maps, max_new_tokens=3)
    assert len(texts) == 2
    tiny_model.quantize_language_model("int8")  # idempotent
    with pytest.raises(ConfigError, match="quantised"):
        tiny_model(pixels, maps, ["Yes.", "No."])


def test_unknown_quantisation_is_refused(tiny_model):
    with pytest.raises(ConfigError, match="int4"):
        tiny_model.quantize_language_model("int4")


def test_auto_precision_follows_the_hardware(monkeypatch):
    """``auto`` is bfloat16 only where bf16 matrix products run in hardware; the others pass through."""
    from myriad.inspection import PRECISIONS, native_bfloat16, resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not native_bfloat16("cpu") and resolve_precision("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert native_bfloat16("cpu") and resolve_precision("auto", "cpu") == "bfloat16"
    assert not native_bfloat16("meta")
    for name in set(PRECISIONS) - {"auto"}:
        assert resolve_precision(name, "cpu") == name
    with pytest.raises(ConfigError, match="fp4.*auto"):
        resolve_precision("fp4")
