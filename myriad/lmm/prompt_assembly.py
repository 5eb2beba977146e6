"""Prompt assembly: the conversation as token ids and the one place the image tokens are spliced in.

The text templates (``###Human: <Img><ImageHere></Img>...`` or the tokenizer's chat
template) are in :mod:`myriad.lmm.prompting`; this module turns them into what the
LLM reads, for training (:mod:`myriad.lmm.loss`) and generation
(:mod:`myriad.lmm.generation`) alike::

    [BOS (reference template; training, optional at inference)] + emb(text before <ImageHere>)
      + image tokens (projected Q-Former outputs, then TPG tokens) + emb(text after <ImageHere>)

Every function takes the model (its ``config``, ``tokenizer`` and ``language_model``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from myriad.lmm.errors import ConfigError, InputError, PromptTooLongError
from myriad.lmm.prompting import Turn, render_prompt, stop_string

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.model import MyriadLMM

__all__ = [
    "check_context",
    "embed_ids",
    "instructions_for",
    "prompt_ids",
    "require_tokenizer",
    "splice_image",
    "stop_text",
    "text_ids",
]


def require_tokenizer(model: "MyriadLMM") -> Any:
    """The model's tokenizer; a model built without one cannot take text."""
    if model.tokenizer is None:
        raise ConfigError("this model has no tokenizer; pass one to MyriadLMM(config, tokenizer)")
    return model.tokenizer


def text_ids(model: "MyriadLMM", text: str) -> list[int]:
    """Token ids of ``text``, no special tokens added."""
    if not text:
        return []
    return list(require_tokenizer(model)(text, add_special_tokens=False)["input_ids"])


def embed_ids(model: "MyriadLMM", ids: list[int]) -> torch.Tensor:
    """The LLM's input embeddings ``T x H`` of ``ids``."""
    emb = model.language_model.get_input_embeddings()
    return emb(torch.tensor(ids, dtype=torch.long, device=emb.weight.device))


def _bos_ids(model: "MyriadLMM", training: bool) -> list[int]:
    config = model.config
    if config.template != "reference":
        return []  # a chat template writes its own start tokens
    wanted = config.bos_in_training if training else config.bos_at_inference
    if not wanted:
        return []
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return [bos if bos is not None else config.llm.bos_token_id]


def stop_text(model: "MyriadLMM") -> str:
    """The stop string of answers: ``###`` (reference template) or the EOS text (chat)."""
    return stop_string(model.config.template, model.tokenizer, model.config.end_sym)


def prompt_ids(model: "MyriadLMM", turns: list[Turn], training: bool) -> tuple[list[int], list[int]]:
    """Token ids of the prompt text before the image (BOS included) and after it."""
    before, after = render_prompt(turns, model.config.template, require_tokenizer(model))
    return _bos_ids(model, training) + text_ids(model, before), text_ids(model, after)


def splice_image(model: "MyriadLMM", before: list[int] | None, image: torch.Tensor, after: list[int]) -> torch.Tensor:
    """``emb(before) + image tokens (K x H) + emb(after)`` as one ``T x H`` sequence.

    ``before=None`` leaves the text before the image out (generation continues a cached
    prefix of it); ``after`` may go on past the prompt (training appends the answer).
    """
    head = [] if before is None else [embed_ids(model, before)]
    return torch.cat([*head, image, embed_ids(model, after)])


def check_context(model: "MyriadLMM", length: int, what: str) -> None:
    """Refuse a sequence the LLM's context cannot hold; nothing is truncated."""
    limit = model.config.llm.max_position_embeddings
    if length > limit:
        raise PromptTooLongError(f"{what} needs {length} positions, the LLM context holds {limit}; shorten the instruction")


def instructions_for(model: "MyriadLMM", instructions: str | Sequence[str] | None, batch: int) -> list[str]:
    """One instruction per image: the config's question by default, one string for all, or one each."""
    if instructions is None:
        return [model.config.question] * batch
    if isinstance(instructions, str):
        return [instructions] * batch
    instructions = list(instructions)
    if len(instructions) != batch:
        raise InputError(f"instructions: expected {batch} (one per image), got {len(instructions)}")
    return instructions
