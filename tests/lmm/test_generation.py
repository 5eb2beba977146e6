"""The decoding loop with a scripted language model: stop string, EOS, early decision, left padding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from myriad.lmm.generation import generate_from_embeds, left_pad  # noqa: E402
from myriad.lmm.prompting import answer_decided  # noqa: E402


class ScriptedLM(torch.nn.Module):
    """Emits a fixed token script per row; records positions and masks it was given."""

    def __init__(self, scripts, vocab, uniform=False):
        super().__init__()
        self.uniform = uniform
        self.scripts = scripts
        self.vocab = vocab
        self.step = 0
        self.calls = []

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None, use_cache=True, logits_to_keep=0):
        self.calls.append({"position_ids": position_ids.clone(), "mask": attention_mask.clone(), "input_ids": input_ids})
        batch = len(self.scripts)
        logits = torch.full((batch, 1, self.vocab), -1e9)
        for i, script in enumerate(self.scripts):
            tok = script[min(self.step, len(script) - 1)]
            logits[i, 0, tok] = 0.0
        if self.uniform:
            logits.zero_()
        self.step += 1
        return SimpleNamespace(logits=logits, cache="kv")


@pytest.fixture()
def tok(tiny_tokenizer):
    return tiny_tokenizer


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_left_pad():
    a, b = torch.ones(2, 3), torch.full((4, 3), 2.0)
    embeds, mask = left_pad([a, b])
    assert embeds.shape == (2, 4, 3)
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert embeds[0, :2].abs().sum() == 0


def test_stop_string_eos_and_length(tok):
    yes = _ids(tok, "Yes, there exists anomalies in the image.###Human: more")
    no = _ids(tok, "No, there")
    eos = tok.eos_token_id
    lm = ScriptedLM([yes, no + [eos], _ids(tok, "abc abc abc abc abc abc")], len(tok))
    embeds, mask = left_pad([torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(4, 4)])
    result = generate_from_embeds(lm, tok, embeds, mask, max_new_tokens=len(yes), stop="###", eos_token_id=eos)
    assert result.texts[0] == "Yes, there exists anomalies in the image."
    assert result.finish_reasons[0] == "stop"
    assert result.texts[1] == "No, there" and result.finish_reasons[1] == "eos"
    assert eos not in result.token_ids[1]
    assert result.finish_reasons[2] == "length"
    # Positions count real tokens only (left padding), then advance by one per step.
    first = lm.calls[0]
    assert first["position_ids"].tolist()[0] == [0, 0, 0, 1, 2]
    assert first["position_ids"].tolist()[1] == [0, 1, 2, 3, 4]
    assert lm.calls[1]["position_ids"].tolist() == [[3], [5], [4]]
    assert lm.calls[1]["mask"].shape == (3, 6)


def test_decided_stops_early(tok):
    script = _ids(tok, "No, there exists no anomalies in the image.###")
    lm = ScriptedLM([script], len(tok))
    embeds, mask = left_pad([torch.zeros(2, 4)])
    result = generate_from_embeds(
        lm, tok, embeds, mask, max_new_tokens=30, stop="###", eos_token_id=tok.eos_token_id, stop_fn=answer_decided
    )
    assert result.finish_reasons == ["decided"]
    assert result.texts[0].startswith("No")
    assert len(result.token_ids[0]) < len(script) // 2


def test_sampling_is_seeded(tok):
    embeds, mask = left_pad([torch.zeros(2, 4)])
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        runs.append(
            generate_from_embeds(
                ScriptedLM([[0]], len(tok), uniform=True), tok, embeds, mask, max_new_tokens=6, stop=None, eos_token_id=None,
                do_sample=True, top_p=0.9, generator=g,
            ).token_ids[0]
        )
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_prefix_cache_gives_the_same_answers_as_full_prefill(tiny_model, tiny_inputs):
    """The shared text before the image is encoded once and reused; rows with different
    instruction lengths (padding between prefix and row) decode exactly as without it."""
    pixels, maps = tiny_inputs
    questions = ["Is there a defect?", "Describe the surface of this part in a few words, please."]
    tiny_model.use_prefix_cache = False
    with torch.no_grad():
        plain = tiny_model.generate(pixels, maps, questions, max_new_tokens=6, return_result=True)
        alone = tiny_model.generate(pixels[1:], maps[1:], questions[1:], max_new_tokens=6, return_result=True)
    tiny_model.use_prefix_cache = True
    with torch.no_grad():
        cached = tiny_model.generate(pixels, maps, questions, max_new_tokens=6, return_result=True)
        again = tiny_model.generate(pixels, maps, questions, max_new_tokens=6, return_result=True)
    assert cached.token_ids == plain.token_ids == again.token_ids
    assert cached.token_ids[1] == alone.token_ids[0]
    assert cached.prompt_lengths == plain.prompt_lengths
    assert len(tiny_model._prefix_caches) == 1  # built once, reused by the second call


def test_prefix_cache_logits_match(tiny_model, tiny_inputs):
    from myriad.lmm.generation import PrefixCache

    pixels, maps = tiny_inputs
    lm = tiny_model.language_model
    with torch.no_grad():
        embeds = torch.randn(2, 9, lm.config.hidden_size)
        full = lm(inputs_embeds=embeds).logits[:, -1]
        prefix = PrefixCache(lm, embeds[0, :4])
        assert prefix.length == 4
        embeds[1, :4] = embeds[0, :4]
        full = lm(inputs_embeds=embeds).logits[:, -1]
        rest = lm(inputs_embeds=embeds[:, 4:], past_key_values=prefix.expand(2), position_ids=torch.arange(4, 9).expand(2, -1)).logits[:, -1]
    torch.testing.assert_close(rest, full, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="P x H"):
        PrefixCache(lm, embeds)
