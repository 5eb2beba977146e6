"""End to end at toy sizes through exactly the ``paper`` code path (Blip2VisionModel, Q-Former, Llama)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from myriad.errors import ConfigError, WeightsError  # noqa: E402
from myriad.lmm.config import REFERENCE_QUESTION  # noqa: E402
from myriad.lmm.errors import AnomalyMapError, PromptTooLongError  # noqa: E402
from myriad.lmm.model import IGNORE_INDEX, MyriadLMM  # noqa: E402
from myriad.lmm.prompting import ANSWER_ANOMALOUS, ANSWER_NORMAL  # noqa: E402

ANSWERS = [ANSWER_ANOMALOUS, ANSWER_NORMAL]


def _capture_lm_inputs(model):
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs)

    handle = model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _embed(model, ids):
    emb = model.language_model.get_input_embeddings()
    return emb(torch.tensor(ids))


def test_training_embedding_order_and_labels(tiny_model, tiny_tokenizer, tiny_inputs):
    pixels, maps = tiny_inputs
    seen, handle = _capture_lm_inputs(tiny_model)
    with torch.no_grad():
        out = tiny_model(pixels, maps, ANSWERS)
        image = tiny_model.encode_image(pixels, maps)
    handle.remove()
    assert image.shape[1] == 4 + 49 + 18
    embeds, mask, labels = seen[0]["inputs_embeds"], seen[0]["attention_mask"], out.labels
    tok = tiny_tokenizer
    pre = [tok.bos_token_id] + _ids(tok, "###Human: <Img>")
    post = _ids(tok, "</Img>" + REFERENCE_QUESTION + " ###Assistant: ")
    for i, answer in enumerate(ANSWERS):
        ans = _ids(tok, answer + "###")
        n = len(pre) + image.shape[1] + len(post) + len(ans)
        expected = torch.cat([_embed(tiny_model, pre), image[i], _embed(tiny_model, post + ans)])
        torch.testing.assert_close(embeds[i, :n], expected)
        assert mask[i, :n].all() and not mask[i, n:].any()  # right padding in training
        assert labels[i, : n - len(ans)].eq(IGNORE_INDEX).all()
        assert labels[i, n - len(ans) : n].tolist() == ans
        assert labels[i, n:].eq(IGNORE_INDEX).all()
    # The loss is the mean next-token cross-entropy over answer tokens only.
    # The head ran only on the answer window; the full forward gives the same loss.
    window = out.logits.shape[1]
    assert window < labels.shape[1] and labels[:, : labels.shape[1] - window].eq(IGNORE_INDEX).all()
    with torch.no_grad():
        full = tiny_model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    torch.testing.assert_close(out.logits, full[:, -window:])
    logits = full[:, :-1].reshape(-1, full.shape[-1])
    manual = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, manual)


def test_decision_weight_upweights_the_first_answer_token(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    with torch.no_grad():
        out = tiny_model(pixels, maps, ANSWERS)
        weighted = tiny_model(pixels, maps, ANSWERS, decision_weight=5.0)
    window = out.logits.shape[1]
    shifted = out.labels[:, out.labels.shape[1] - window + 1 :]
    per_token = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(shifted.shape)
    weights = (shifted != IGNORE_INDEX).float()
    for row in range(weights.shape[0]):
        weights[row, int(weights[row].nonzero()[0])] = 5.0
    torch.testing.assert_close(weighted.loss, (per_token * weights).sum() / weights.sum())
    assert not torch.isclose(weighted.loss, out.loss)


def test_bos_only_in_training_by_default(tiny_config, tiny_tokenizer, tiny_inputs):
    pixels, maps = tiny_inputs
    for bos_at_inference in (False, True):
        torch.manual_seed(0)
        model = MyriadLMM(tiny_config.replace(bos_at_inference=bos_at_inference), tiny_tokenizer).eval()
        seen, handle = _capture_lm_inputs(model)
        model.generate(pixels[:1], maps[:1], max_new_tokens=1)
        handle.remove()
        first = seen[0]["inputs_embeds"][0, 0]
        expected_id = tiny_tokenizer.bos_token_id if bos_at_inference else _ids(tiny_tokenizer, "###Human: <Img>")[0]
        torch.testing.assert_close(first, _embed(model, [expected_id])[0])


def test_vision_encoder_lorra_runs_before_ln_vision_on_prenorm_tokens(tiny_model, tiny_inputs):
    from transformers import Blip2VisionModel

    pixels, _ = tiny_inputs
    ve = tiny_model.vision_encoder
    reference = Blip2VisionModel(ve.backbone.vision_model.config)
    reference.load_state_dict(ve.backbone.vision_model.state_dict(), strict=False)
    with torch.no_grad():
        prenorm = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        tokens = ve.backbone(pixels)
        torch.testing.assert_close(tokens, prenorm)
        assert tokens.shape == (2, 5, 32)
        expected = ve.ln_vision(ve.lorra(prenorm))
        assert ve.ln_vision.eps == 1e-5  # the paper preset's ln_vision (LAVIS), not the ViT's 1e-6
        torch.testing.assert_close(ve.encode_tokens(pixels), expected)


def test_all_queries_self_and_cross_attend(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    ve = tiny_model.vision_encoder
    with torch.no_grad():
        a = ve(pixels, maps, use_vpg=True)
        b = ve(pixels, torch.rand_like(maps), use_vpg=True)
        plain = ve(pixels, None, use_vpg=False)
    assert a.shape == (2, 4 + 49, 64) and plain.shape == (2, 4, 64)
    # The pretrained queries' outputs change with the expert queries (joint self-attention).
    assert not torch.allclose(a[:, :4], plain)
    assert not torch.allclose(a[:, :4], b[:, :4])


def test_per_call_and_config_ablations(tiny_config, tiny_tokenizer, tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    with torch.no_grad():
        assert tiny_model.encode_image(pixels, maps, use_vpg=False).shape[1] == 4 + 18
        assert tiny_model.encode_image(pixels, maps, use_tpg=False).shape[1] == 4 + 49
        assert tiny_model.encode_image(pixels, None, use_vpg=False, use_tpg=False).shape[1] == 4
    for switch in ("use_tpg", "use_vpg", "use_lorra"):
        model = MyriadLMM(tiny_config.replace(**{switch: False}), tiny_tokenizer)
        part = switch.removeprefix("use_")
        assert model.parts()[part] is None
        assert not any(k.startswith((f"tpg.", f"vision_encoder.{part}.")) for k in model.trainable_state_dict() if part in k)
        model(pixels, maps, ANSWERS)  # still trains
        if switch != "use_lorra":
            with pytest.raises(ConfigError):
                model.encode_image(pixels, maps, **{switch: True})


def test_only_trainable_parts_get_gradients_and_frozen_stay_eval(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    tiny_model.train()
    for name, part in tiny_model.parts().items():
        if isinstance(part, torch.nn.Module):
            assert part.training == (name in ("lorra", "vpg", "tpg")), name
    tiny_model(pixels, maps, ANSWERS).loss.backward()
    for name, p in tiny_model.named_parameters():
        trainable = name.startswith(("vision_encoder.lorra.", "vision_encoder.vpg.", "tpg."))
        assert p.requires_grad == trainable, name
        if trainable:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    keys = set(tiny_model.trainable_state_dict())
    assert "vision_encoder.lorra.down.weight" in keys and "tpg.base_prompts" in keys
    assert all(k.startswith(("vision_encoder.lorra.", "vision_encoder.vpg.net.", "tpg.")) for k in keys)


def test_trainable_state_dict_roundtrip_and_errors(tiny_config, tiny_tokenizer, tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    state = {k: v.clone() for k, v in tiny_model.trainable_state_dict().items()}
    torch.manual_seed(123)
    other = MyriadLMM(tiny_config, tiny_tokenizer).eval()
    for name in ("backbone", "ln_vision", "query_tokens", "qformer", "language_projection", "language_model"):
        part = tiny_model.parts()[name]
        other.load_part(name, part if name == "query_tokens" else part.state_dict())
    other.load_trainable_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(other.encode_image(pixels, maps), tiny_model.encode_image(pixels, maps))
    missing = dict(state)
    missing.pop("tpg.base_prompts")
    with pytest.raises(WeightsError, match="missing"):
        other.load_trainable_state_dict(missing)
    wrong = dict(state)
    wrong["vision_encoder.lorra.down.weight"] = torch.zeros(3, 32)
    with pytest.raises(WeightsError, match="shape"):
        other.load_trainable_state_dict(wrong)
    with pytest.raises(WeightsError, match="unexpected"):
        other.load_trainable_state_dict({**state, "expert_adaptor.conv1.weight": torch.zeros(4, 32)})
    with pytest.raises(WeightsError, match="unknown part"):
        other.load_part("llama_proj", {})


def test_empty_model_loads_parts_then_finalizes(tiny_config, tiny_tokenizer, tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    empty = MyriadLMM.empty(tiny_config, tiny_tokenizer)
    assert all(p.is_meta for p in empty.parameters())
    with pytest.raises(WeightsError, match="meta"):
        empty.finalize()
    for name, part in tiny_model.parts().items():
        empty.load_part(name, part if name == "query_tokens" else part.state_dict())
    empty.finalize().eval()
    assert not any(p.is_meta for p in empty.parameters())
    assert [n for n, p in empty.named_parameters() if p.requires_grad] == [
        n for n, p in tiny_model.named_parameters() if p.requires_grad
    ]
    with torch.no_grad():
        a = empty(pixels, maps, ANSWERS).loss
        b = tiny_model(pixels, maps, ANSWERS).loss
    torch.testing.assert_close(a, b)
    assert empty.generate(pixels, maps, max_new_tokens=5) == tiny_model.generate(pixels, maps, max_new_tokens=5)


def test_init_parts_for_new_modules(tiny_config, tiny_tokenizer):
    empty = MyriadLMM.empty(tiny_config, tiny_tokenizer)
    empty.init_parts(["lorra", "vpg", "tpg"])
    assert not any(p.is_meta for p in empty.vision_encoder.lorra.parameters())
    assert empty.vision_encoder.lorra.down.weight.requires_grad
    with pytest.raises(ConfigError):
        empty.init_parts(["language_model"])


def _naive_greedy(model, embeds, steps):
    """Greedy decoding without a KV cache: recompute the whole sequence each step."""
    lm = model.language_model
    ids = []
    seq = embeds
    for _ in range(steps):
        logits = lm(inputs_embeds=seq, use_cache=False).logits[:, -1]
        tok = int(logits.argmax(-1))
        ids.append(tok)
        seq = torch.cat([seq, lm.get_input_embeddings()(torch.tensor([[tok]]))], dim=1)
    return ids


def test_kv_cache_generation_matches_uncached_and_batch_matches_single(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    instructions = ["Describe the defect in detail.", REFERENCE_QUESTION]
    batched = tiny_model.generate(pixels, maps, instructions, max_new_tokens=10, return_result=True)
    for i in range(2):
        single = tiny_model.generate(pixels[i : i + 1], maps[i : i + 1], instructions[i], max_new_tokens=10, return_result=True)
        assert single.token_ids[0] == batched.token_ids[i]
        assert single.texts[0] == batched.texts[i]
        # Rebuild the exact prompt embeddings (whole prompt in one call: no prefix cache) and
        # decode without any cache; ``single`` above used the shared-prefix cache.
        seen, handle = _capture_lm_inputs(tiny_model)
        tiny_model.use_prefix_cache = False
        tiny_model.generate(pixels[i : i + 1], maps[i : i + 1], instructions[i], max_new_tokens=1)
        tiny_model.use_prefix_cache = True
        handle.remove()
        with torch.no_grad():
            naive = _naive_greedy(tiny_model, seen[0]["inputs_embeds"], len(single.token_ids[0]))
        assert naive == single.token_ids[0]
    assert batched.prompt_lengths[0] != batched.prompt_lengths[1]


def test_instruction_longer_than_context_is_refused(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    long_instruction = "Describe the defect in detail. " * 200
    with pytest.raises(PromptTooLongError, match="context holds 512"):
        tiny_model.generate(pixels[:1], maps[:1], long_instruction)
    with pytest.raises(PromptTooLongError):
        tiny_model(pixels[:1], maps[:1], ["Yes"], instructions=long_instruction)


def test_training_answers_are_cut_to_max_txt_len(tiny_config, tiny_tokenizer, tiny_inputs):
    pixels, maps = tiny_inputs
    model = MyriadLMM(tiny_config.replace(max_txt_len=5), tiny_tokenizer)
    out = model(pixels, maps, ANSWERS)
    assert int((out.labels != IGNORE_INDEX).sum(-1).max()) == 5


def test_bad_maps_surface_as_clear_errors(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    with pytest.raises(AnomalyMapError, match="expected 2 map"):
        tiny_model.generate(pixels, maps[:1])
    with pytest.raises(AnomalyMapError, match="required"):
        tiny_model.generate(pixels, None)
    # Other sizes are resized to 224 x 224.
    assert len(tiny_model.generate(pixels, torch.rand(2, 64, 48), max_new_tokens=2)) == 2


def test_conversation_reuses_image_and_keeps_history(tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    calls = []
    handle = tiny_model.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    conv = tiny_model.start_conversation(pixels[:1], maps[:1])
    first = tiny_model.chat(conv, max_new_tokens=4)
    seen, h2 = _capture_lm_inputs(tiny_model)
    second = tiny_model.chat(conv, "Where is the scratch?", max_new_tokens=4)
    h2.remove()
    handle.remove()
    assert len(calls) == 1
    assert conv.history == [(REFERENCE_QUESTION, first), ("Where is the scratch?", second)]
    # The follow-up prompt holds the first answer after the image tokens.
    assert seen[0]["inputs_embeds"].shape[1] > 71 + len(first)
    with pytest.raises(ValueError):
        tiny_model.start_conversation(pixels, maps)


def test_classify_and_chat_template(tiny_config, tiny_tokenizer, tiny_model, tiny_inputs):
    pixels, maps = tiny_inputs
    labels = tiny_model.classify(pixels, maps)
    assert len(labels) == 2 and set(labels) <= {"anomalous", "normal", "unknown"}
    chat = MyriadLMM(tiny_config.replace(template="chat"), tiny_tokenizer)
    out = chat(pixels, maps, ANSWERS)
    answer_ids = out.labels[0][out.labels[0] != IGNORE_INDEX].tolist()
    assert answer_ids[-1] == tiny_tokenizer.eos_token_id  # the chat answer ends with EOS
    assert chat.stop == "</s>"
    assert len(chat.generate(pixels, maps, max_new_tokens=3)) == 2


def test_load_part_copies_into_materialised_models(tiny_config, tiny_tokenizer, tiny_model):
    other = MyriadLMM(tiny_config, tiny_tokenizer)
    source = tiny_model.vision_encoder.lorra.state_dict()
    other.load_part("lorra", source)
    assert other.vision_encoder.lorra.down.weight.data_ptr() != tiny_model.vision_encoder.lorra.down.weight.data_ptr()
    torch.testing.assert_close(other.vision_encoder.lorra.down.weight, tiny_model.vision_encoder.lorra.down.weight)
    other.load_part("query_tokens", tiny_model.vision_encoder.query_tokens.detach() * 2)
    torch.testing.assert_close(other.vision_encoder.query_tokens, tiny_model.vision_encoder.query_tokens * 2)


def test_half_precision_llm_keeps_float32_rotary(tiny_config, tiny_tokenizer):
    model = MyriadLMM(tiny_config.replace(llm_dtype="bfloat16"), tiny_tokenizer)
    assert model.language_model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
