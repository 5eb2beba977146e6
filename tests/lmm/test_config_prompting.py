"""Presets, config validation, prompt rendering, conversations and the answer parse rule."""

from __future__ import annotations

import pytest

from myriad.errors import ConfigError, MyriadError
from myriad.lmm.config import REFERENCE_QUESTION, mini_config, paper_config, preset_config
from myriad.lmm.prompting import (
    ANSWER_ANOMALOUS,
    ANSWER_NORMAL,
    Conversation,
    Turn,
    answer_decided,
    parse_answer,
    render_prompt,
    stop_string,
)


def test_paper_preset_numbers():
    c = paper_config()
    assert (c.vision.kind, c.vision.token_dim, c.vision.num_tokens) == ("eva_vit", 1408, 257)
    assert (c.vision.num_layers, c.vision.num_heads, c.vision.layer_norm_eps, c.vision.qkv_bias) == (39, 16, 1e-6, True)
    assert c.vision.ln_vision_eps == 1e-5  # LAVIS: ln_vision = LayerNorm(1408), torch's default eps
    assert (c.qformer.hidden_size, c.qformer.num_layers, c.qformer.cross_attention_frequency, c.qformer.num_query_tokens) == (768, 12, 2, 32)
    assert (c.llm.hidden_size, c.llm.num_layers, c.llm.num_heads, c.llm.intermediate_size, c.llm.vocab_size) == (4096, 32, 32, 11008, 32000)
    assert (c.vpg_tokens, c.tpg_tokens, c.image_tokens) == (49, 18, 32 + 49 + 18)
    assert c.trainable == ("lorra", "vpg", "tpg")
    assert c.bos_in_training and not c.bos_at_inference
    assert c.max_txt_len == 160 and c.end_sym == "###" and c.template == "reference"
    assert c.question == REFERENCE_QUESTION


def test_mini_preset_and_switches():
    c = mini_config()
    assert c.vision.kind == "lite0" and c.vision.token_dim == 432 and c.vision.num_tokens == 197
    assert c.vision.ln_vision_eps == 1e-6  # as the shipped mini weights were trained
    assert c.llm.hidden_size == 576 and c.llm.vocab_size == 49152
    assert {"qformer", "query_tokens", "language_projection"} <= set(c.trainable)
    assert paper_config(prompt_generators={"tpg_base_prompts": False}).tpg_tokens == 9
    assert paper_config(use_vpg=False, use_tpg=False).image_tokens == 32
    assert c.template == "chat"  # the better template on the held-out devset (docs/lmm.md)
    assert preset_config("mini", template="reference").template == "reference"


def test_config_errors_are_myriad_errors():
    with pytest.raises(ConfigError):
        preset_config("huge")
    with pytest.raises(ConfigError, match="trainable"):
        paper_config(trainable=("lorra", "everything"))
    with pytest.raises(ConfigError, match="divisible"):
        paper_config(prompt_generators={"map_size": 200})
    with pytest.raises(MyriadError):
        paper_config(template="markdown")


def test_reference_prompt_exact_text():
    before, after = render_prompt([Turn(REFERENCE_QUESTION)], "reference")
    assert before == "###Human: <Img>"
    assert after == "</Img>" + REFERENCE_QUESTION + " ###Assistant: "


def test_reference_prompt_multi_turn_keeps_image_in_first_turn():
    turns = [Turn("Is it defective?", "Yes, there exists anomalies in the image."), Turn("Where?")]
    before, after = render_prompt(turns, "reference")
    assert before == "###Human: <Img>"
    assert after == (
        "</Img>Is it defective? ###Assistant: Yes, there exists anomalies in the image."
        "###Human: Where? ###Assistant: "
    )
    with pytest.raises(ValueError):
        render_prompt([Turn("a"), Turn("b")], "reference")  # an unanswered turn in the middle


def test_chat_prompt_uses_tokenizer_template(tiny_tokenizer):
    before, after = render_prompt([Turn("Q1", "A1"), Turn("Q2")], "chat", tiny_tokenizer)
    assert before == "<s>user\n<Img>"
    assert after == "</Img>Q1</s>\n<s>assistant\nA1</s>\n<s>user\nQ2</s>\n<s>assistant\n"
    assert stop_string("chat", tiny_tokenizer) == "</s>"
    assert stop_string("reference") == "###"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (ANSWER_ANOMALOUS, "anomalous"),
        (ANSWER_NORMAL, "normal"),
        ("  yes. there is a scratch", "anomalous"),
        ("### Yes", "anomalous"),
        ('"No, nothing wrong."', "normal"),
        ("No", "normal"),
        ("None of the parts is broken", "unknown"),
        ("Normal.", "unknown"),
        ("Not sure", "unknown"),
        ("Yesterday it was fine", "unknown"),
        ("There is a crack.", "unknown"),
        ("", "unknown"),
    ],
)
def test_parse_rule(text, label):
    assert parse_answer(text) == label


def test_answer_decided():
    assert not answer_decided("")
    assert not answer_decided("Ye")
    assert not answer_decided("No")  # could still become "None"
    assert answer_decided("No,")
    assert answer_decided("Yes ")
    assert answer_decided("The")  is False
    assert answer_decided("The ")


def test_conversation_bookkeeping():
    conv = Conversation(image_embeds=None)
    conv.ask("q1")
    with pytest.raises(ValueError):
        conv.ask("q2")
    conv.answer("a1")
    with pytest.raises(ValueError):
        conv.answer("again")
    conv.ask("q2")
    assert conv.history == [("q1", "a1"), ("q2", None)]
