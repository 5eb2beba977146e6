"""Generation: answers to conversations about encoded images, decoded in batches with a KV cache.

:func:`generate_answers` is what ``MyriadLMM.generate`` and ``chat`` run: it assembles
each prompt around the image tokens (:mod:`myriad.lmm.prompt_assembly`), reuses the KV
cache of the text before the image when every row shares it (:class:`PrefixCache`), and
decodes with :func:`generate_from_embeds`. Sequences are left-padded (zero embeddings,
attention mask 0); positions count only real tokens, so a padded row generates exactly
what it would alone. Greedy by default; ``do_sample`` enables temperature / top-p sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from myriad.lmm.prompt_assembly import check_context, embed_ids, prompt_ids, require_tokenizer, splice_image, stop_text

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.prompting import Turn

__all__ = ["GenerationResult", "PrefixCache", "generate_answers", "generate_from_embeds", "left_pad"]

#: Tokens decoded at the end of a sequence to look for the stop string.
_STOP_WINDOW = 8


@dataclass
class GenerationResult:
    """Texts (cut before the stop string, stripped), token ids and why each sequence ended.

    ``token_ids`` are the raw generated ids: EOS excluded, the stop string's tokens included.
    """

    texts: list[str]
    token_ids: list[list[int]]
    finish_reasons: list[str]  # "stop" | "eos" | "length" | "decided"
    prompt_lengths: list[int]
    #: the first answer token's log-probabilities of the ``score_ids`` asked for (``B x len(score_ids)``, float32);
    #: None when none were asked for
    first_scores: torch.Tensor | None = None


def left_pad(sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``T_i x H`` embeddings into ``B x T x H`` (zeros on the left) and a ``B x T`` mask."""
    longest = max(s.shape[0] for s in sequences)
    first = sequences[0]
    embeds = first.new_zeros(len(sequences), longest, first.shape[-1])
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=first.device)
    for i, s in enumerate(sequences):
        embeds[i, longest - s.shape[0] :] = s
        mask[i, longest - s.shape[0] :] = 1
    return embeds, mask


class PrefixCache:
    """The KV cache of a prompt prefix that every row shares (e.g. the chat template's system turn).

    Computed once at batch 1; :meth:`expand` gives each generate call its own copy for B rows,
    so the prefix is not re-encoded for every image. ``length``: prefix tokens.
    """

    def __init__(self, language_model: Any, prefix_embeds: torch.Tensor) -> None:
        if prefix_embeds.ndim != 2 or prefix_embeds.shape[0] < 1:
            raise ValueError(f"prefix embeddings must be P x H with P >= 1, got {tuple(prefix_embeds.shape)}")
        cache_kw, keep_last = _forward_names(language_model)
        self.length = int(prefix_embeds.shape[0])
        with torch.no_grad():
            out = language_model(
                inputs_embeds=prefix_embeds.unsqueeze(0),
                position_ids=torch.arange(self.length, device=prefix_embeds.device).unsqueeze(0),
                use_cache=True,
                **keep_last,
            )
        self._cache = getattr(out, cache_kw)

    def expand(self, batch: int) -> Any:
        """A fresh copy of the cache for ``batch`` rows (generation appends to it)."""
        import copy

        cache = copy.deepcopy(self._cache)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
        return cache


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # always keeps the top token
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
        return order.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _forward_names(language_model: Any) -> tuple[str, dict[str, int]]:
    """The KV-cache keyword (``cache`` in recent transformers, else ``past_key_values``) and the
    keep-only-the-last-logits keyword (``logits_to_keep`` / ``num_logits_to_keep``) of ``forward``."""
    import inspect

    params = inspect.signature(language_model.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = {name: 1 for name in ("logits_to_keep", "num_logits_to_keep") if name in params}
    return cache, dict(list(keep.items())[:1])


def _forward_cached(language_model: Any, cache_kw: str, **inputs: Any) -> tuple[Any, torch.Tensor]:
    """One forward with the KV cache on: the updated cache and the last position's logits (``B x V``)."""
    out = language_model(use_cache=True, **inputs)
    return getattr(out, cache_kw), out.logits[:, -1, :]


@torch.no_grad()
def generate_from_embeds(
    language_model: Any,
    tokenizer: Any,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop: str | None,
    eos_token_id: int | None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop_fn: Callable[[str], bool] | None = None,
    min_new_tokens: int = 0,
    prefix: PrefixCache | None = None,
    score_ids: Sequence[int] | None = None,
) -> GenerationResult:
    """Decode up to ``max_new_tokens`` per row of a left-padded embedding batch.

    A row ends at EOS, when its decoded text contains ``stop`` (the text is cut before
    it), when ``stop_fn(text)`` is true (``decided``), or at the length limit. Before
    ``min_new_tokens`` tokens, EOS is suppressed and stops are not checked (benchmarks).
    With ``prefix``, ``embeds`` continue that cached prefix (padding then sits between
    the prefix and each row's own tokens; positions still count only real tokens).
    ``score_ids``: token ids whose log-probability as the *first* answer token is returned
    (:attr:`GenerationResult.first_scores`), read from the prefill's logits at no extra cost.
    """
    batch = embeds.shape[0]
    cache_kw, keep_last = _forward_names(language_model)
    extra: dict[str, Any] = {}
    if prefix is not None:
        attention_mask = torch.cat([attention_mask.new_ones(batch, prefix.length), attention_mask], dim=1)
        extra[cache_kw] = prefix.expand(batch)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if prefix is not None:
        position_ids = position_ids[:, prefix.length :]
    cache, logits = _forward_cached(
        language_model, cache_kw, inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, **keep_last, **extra
    )
    first_scores = None
    if score_ids is not None:
        ids = torch.as_tensor(list(score_ids), dtype=torch.long, device=logits.device)
        first_scores = torch.log_softmax(logits.float(), dim=-1).index_select(-1, ids).cpu()
    generated: list[list[int]] = [[] for _ in range(batch)]
    reasons: list[str | None] = [None] * batch
    next_pos = position_ids[:, -1:] + 1
    mask = attention_mask
    pad_id = eos_token_id if eos_token_id is not None else 0
    for step in range(max_new_tokens):
        early = step < min_new_tokens
        if early and eos_token_id is not None:
            logits = logits.clone()
            logits[:, eos_token_id] = float("-inf")
        if do_sample:
            tokens = _sample(logits, temperature, top_p, generator)
        else:
            tokens = logits.argmax(dim=-1)
        token_list = tokens.tolist()
        for i in range(batch):
            if reasons[i] is not None:
                continue
            tok = token_list[i]
            if eos_token_id is not None and tok == eos_token_id:
                reasons[i] = "eos"
                continue
            generated[i].append(tok)
            if not early and (stop or stop_fn is not None):
                tail = tokenizer.decode(generated[i][-_STOP_WINDOW:], skip_special_tokens=False)
                if stop and stop in tail:
                    reasons[i] = "stop"
                elif stop_fn is not None and stop_fn(tokenizer.decode(generated[i], skip_special_tokens=True)):
                    reasons[i] = "decided"
        if all(r is not None for r in reasons) or step == max_new_tokens - 1:
            break
        feed = torch.tensor(
            [t if reasons[i] is None else pad_id for i, t in enumerate(token_list)], device=embeds.device
        ).unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        cache, logits = _forward_cached(
            language_model, cache_kw, input_ids=feed, attention_mask=mask, position_ids=next_pos, **{cache_kw: cache}
        )
        next_pos = next_pos + 1
    texts = []
    for i in range(batch):
        if reasons[i] is None:
            reasons[i] = "length"
        text = tokenizer.decode(generated[i], skip_special_tokens=True)
        if stop and stop in text:
            text = text[: text.index(stop)]
        texts.append(text.strip())
    return GenerationResult(texts, generated, [str(r) for r in reasons], attention_mask.sum(-1).tolist(), first_scores)


def generate_answers(
    model: "MyriadLMM",
    image_embeds: torch.Tensor,
    conversations: list[list["Turn"]],
    *,
    max_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop_fn: Any = None,
    min_new_tokens: int = 0,
    score_ids: Sequence[int] | None = None,
) -> GenerationResult:
    """The next answer of each conversation (row ``i`` about ``image_embeds[i]``, ``B x K x H``)."""
    tokenizer = require_tokenizer(model)
    max_new = model.config.max_new_tokens if max_new_tokens is None else max_new_tokens
    prompts = [prompt_ids(model, turns, training=False) for turns in conversations]
    for i, (pre, post) in enumerate(prompts):
        length = len(pre) + image_embeds.shape[1] + len(post)
        check_context(model, length + max_new, f"prompt {i} ({length} tokens) + {max_new} new tokens")
    # The text before the image is the same for every row (template + system turn): its
    # KV cache is computed once and reused, instead of being re-encoded for every image.
    prefix = None
    if all(p[0] == prompts[0][0] for p in prompts):
        prefix = _shared_prefix(model, prompts[0][0])
    seqs = [splice_image(model, None if prefix is not None else pre, image_embeds[i], post) for i, (pre, post) in enumerate(prompts)]
    embeds, mask = left_pad(seqs)
    eos = getattr(tokenizer, "eos_token_id", None)
    return generate_from_embeds(
        model.language_model,
        tokenizer,
        embeds,
        mask,
        max_new_tokens=max_new,
        stop=stop_text(model),
        eos_token_id=eos if eos is not None else model.config.llm.eos_token_id,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        generator=generator,
        stop_fn=stop_fn,
        min_new_tokens=min_new_tokens,
        prefix=prefix,
        score_ids=score_ids,
    )


def _shared_prefix(model: "MyriadLMM", ids: list[int]) -> PrefixCache | None:
    """The shared prompt prefix's KV cache (built once per prefix, kept on the model), or None where it may not be reused."""
    lm = model.language_model
    if not model.use_prefix_cache or len(ids) < 2 or any(p.requires_grad for p in lm.parameters()):
        return None
    embedding = lm.get_input_embeddings().weight
    key = (tuple(ids), id(lm), model.llm_quantization, embedding.device, embedding.dtype)
    cache = model.__dict__.setdefault("_prefix_caches", {})
    if key not in cache:
        if len(cache) >= 8:
            cache.clear()
        cache[key] = PrefixCache(lm, embed_ids(model, ids))
    return cache[key]
