"""The training loss: causal-LM cross-entropy on the answer tokens (and end symbol) only.

Prompt, image and padding positions carry :data:`IGNORE_INDEX`. The LM head runs only on
the window of positions that predict answer tokens, and the first answer token (the
Yes/No the parse rule reads) can be weighted apart (``decision_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from myriad.lmm.errors import InputError
from myriad.lmm.prompt_assembly import check_context, instructions_for, prompt_ids, splice_image, stop_text, text_ids
from myriad.lmm.prompting import Turn

if TYPE_CHECKING:  # pragma: no cover
    from myriad.lmm.model import MyriadLMM

__all__ = ["IGNORE_INDEX", "MyriadOutput", "answer_loss"]

IGNORE_INDEX = -100


@dataclass
class MyriadOutput:
    """Training output: mean answer-token cross-entropy, the logits and the labels used.

    ``logits`` covers only the last ``logits.shape[1]`` positions (the window that predicts
    the answers): ``logits[:, i]`` predicts ``labels[:, L - W + i + 1]`` for ``L`` = ``labels.shape[1]``.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor


def answer_loss(
    model: "MyriadLMM",
    image: torch.Tensor,
    answers: Sequence[str],
    instructions: str | Sequence[str] | None = None,
    decision_weight: float = 1.0,
) -> MyriadOutput:
    """The loss of ``answers`` (one per image) given the image tokens ``image`` (``B x K x H``).

    ``decision_weight``: weight of each answer's first token in the mean; 1.0 is the plain
    token mean of the published code.
    """
    batch, k = image.shape[0], image.shape[1]
    if len(answers) != batch:
        raise InputError(f"answers: expected {batch} (one per image), got {len(answers)}")
    questions = instructions_for(model, instructions, batch)
    end = stop_text(model)
    seqs, labels = [], []
    for i in range(batch):
        pre, post = prompt_ids(model, [Turn(questions[i])], training=True)
        answer = text_ids(model, answers[i] + end)[: model.config.max_txt_len]
        total = len(pre) + k + len(post) + len(answer)
        check_context(model, total, f"training sample {i} (prompt {len(pre) + k + len(post)} + answer {len(answer)})")
        seqs.append(splice_image(model, pre, image[i], post + answer))
        labels.append([IGNORE_INDEX] * (len(pre) + k + len(post)) + answer)
    longest = max(s.shape[0] for s in seqs)
    embeds = image.new_zeros(batch, longest, image.shape[-1])
    mask = torch.zeros(batch, longest, dtype=torch.long, device=image.device)
    target = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=image.device)
    for i, (s, lab) in enumerate(zip(seqs, labels)):
        embeds[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = 1
        target[i, : len(lab)] = torch.tensor(lab, device=image.device)
    # The LM head runs only on the window that predicts answer tokens (from the position
    # before the earliest answer to the end): ~5x fewer head FLOPs than on every position.
    starts = [next(j for j, t in enumerate(lab) if t != IGNORE_INDEX) for lab in labels]
    window = longest - (min(starts) - 1)
    out = model.language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=window)
    logits = out.logits
    shifted = target[:, longest - window + 1 :]
    per_token = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    ).view(shifted.shape)
    weights = (shifted != IGNORE_INDEX).float()
    if decision_weight != 1.0:
        for i, s0 in enumerate(starts):
            weights[i, s0 - (longest - window + 1)] = decision_weight
    loss = (per_token * weights).sum() / weights.sum()
    return MyriadOutput(loss=loss, logits=logits, labels=target, attention_mask=mask)
