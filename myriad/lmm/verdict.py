"""The LMM's verdict as a number: how much more it leans to "Yes" than to "No".

The parse rule (:func:`myriad.lmm.prompting.parse_answer`) reads the answer's first word.
Its confidence is the first answer token's log-probability of a "yes" token against a "no"
token: the **verdict margin** ``log P(yes) - log P(no)``, each summed over the tokenizer's
single tokens for the word (``Yes``, `` yes``, ...). A greedy answer starts with "Yes" when
the margin is positive and a "yes" token is the most likely token (the usual case). The margin
is read from the prefill's logits, so it costs nothing beyond the answer itself; a threshold on
it can be calibrated on normal images like an expert's score (:mod:`myriad.verdict`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

__all__ = ["verdict_token_ids", "verdict_margins"]

_LEADING = re.compile(r"^[\s\"'`*#:>\-]+")


def verdict_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids of the single tokens that are the word "yes" and the word "no" (any case, leading space or quote).

    Cached on the tokenizer; ``ValueError`` when the vocabulary has no such token for either word.
    """
    cached = getattr(tokenizer, "_myriad_verdict_ids", None)
    if cached is not None:
        return cached
    found: dict[str, list[int]] = {"yes": [], "no": []}
    for piece, index in tokenizer.get_vocab().items():
        word = _LEADING.sub("", tokenizer.convert_tokens_to_string([piece])).lower()
        if word in found:
            found[word].append(int(index))
    if not found["yes"] or not found["no"]:
        raise ValueError("the tokenizer has no single token for 'yes' or for 'no': the verdict margin is undefined")
    ids = (sorted(found["yes"]), sorted(found["no"]))
    try:
        tokenizer._myriad_verdict_ids = ids
    except AttributeError:  # pragma: no cover - a tokenizer that refuses attributes is simply not cached
        pass
    return ids


def verdict_margins(first_scores: torch.Tensor, num_yes: int) -> torch.Tensor:
    """``log P(yes) - log P(no)`` per row from the first token's log-probabilities of ``yes ids + no ids``."""
    scores = first_scores.float()
    return torch.logsumexp(scores[:, :num_yes], dim=-1) - torch.logsumexp(scores[:, num_yes:], dim=-1)
