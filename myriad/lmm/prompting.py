"""Prompt templates, multi-turn conversations and the answer parse rule.

The image slot ``<Img><ImageHere></Img>`` is part of the first human turn; the text
before ``<ImageHere>`` and after it are tokenized separately and the image tokens
(Q-Former outputs + TPG tokens) are spliced in between (:mod:`myriad.lmm.prompt_assembly`),
as in the published code:

    [BOS] + emb("###Human: <Img>") + image tokens + emb("</Img>{question} ###Assistant: ") + answer + "###"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ANSWER_ANOMALOUS",
    "ANSWER_NORMAL",
    "IMAGE_MARKER",
    "IMAGE_SLOT",
    "Conversation",
    "Label",
    "Turn",
    "parse_answer",
    "render_prompt",
    "stop_string",
]

IMAGE_MARKER = "<ImageHere>"
IMAGE_SLOT = "<Img><ImageHere></Img>"
ANSWER_NORMAL = "No, there exists no anomalies in the image."
ANSWER_ANOMALOUS = "Yes, there exists anomalies in the image."
REFERENCE_HUMAN = "###Human: "
REFERENCE_ASSISTANT = " ###Assistant: "
REFERENCE_END = "###"

Label = Literal["anomalous", "normal", "unknown"]


@dataclass
class Turn:
    """One human question and, once given, the assistant's answer."""

    question: str
    answer: str | None = None


def render_prompt(turns: list[Turn], template: str, tokenizer: Any = None) -> tuple[str, str]:
    """The prompt text before and after the image for ``turns`` (the last one unanswered).

    ``reference``: ``###Human: <Img>`` | ``</Img>{q1} ###Assistant: {a1}###Human: {q2} ###Assistant: ``.
    ``chat``: the tokenizer's chat template with ``add_generation_prompt=True`` (SmolLM2's
    ChatML adds its default system message).
    """
    if not turns:
        raise ValueError("a prompt needs at least one turn")
    if any(t.answer is None for t in turns[:-1]):
        raise ValueError("only the last turn may be unanswered")
    first = IMAGE_SLOT + turns[0].question
    questions = [first] + [t.question for t in turns[1:]]
    if template == "reference":
        parts = []
        for question, turn in zip(questions, turns):
            parts.append(REFERENCE_HUMAN + question + REFERENCE_ASSISTANT)
            if turn.answer is not None:
                # The end symbol closes an answer; it doubles as the start of the next "###Human: ".
                parts.append(turn.answer)
        text = "".join(parts)
    elif template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template")
        messages = []
        for question, turn in zip(questions, turns):
            messages.append({"role": "user", "content": question})
            if turn.answer is not None:
                messages.append({"role": "assistant", "content": turn.answer})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=turns[-1].answer is None)
    else:
        raise ValueError(f"unknown template {template!r}; use 'reference' or 'chat'")
    before, marker, after = text.partition(IMAGE_MARKER)
    if not marker:
        raise ValueError("the rendered prompt lost the image marker")
    return before, after


def stop_string(template: str, tokenizer: Any = None, end_sym: str = REFERENCE_END) -> str:
    """The text that ends an answer: ``###`` (reference) or the tokenizer's EOS text (chat)."""
    if template == "chat":
        eos = getattr(tokenizer, "eos_token", None)
        if not eos:
            raise ValueError("template 'chat' needs a tokenizer with an eos_token")
        return eos
    return end_sym


_ANOMALOUS_START = re.compile(r"^yes\b")
_NORMAL_START = re.compile(r"^no\b")
_LEADING = re.compile(r"^[\s\"'`*#:>\-]+")


def parse_answer(text: str) -> Label:
    """Classify a generated answer: ``anomalous``, ``normal`` or ``unknown``.

    The rule (the published evaluation checks abnormal keywords before normal ones):

    1. lower-case, drop leading spaces, quotes, ``#``, ``*``, ``:``, ``>`` and ``-``;
    2. the first word is ``yes`` -> ``anomalous``;
    3. else the first word is ``no`` -> ``normal`` (``none``, ``normal``, ``not`` do not count);
    4. anything else -> ``unknown`` (excluded from accuracy).
    """
    t = _LEADING.sub("", text.strip().lower())
    if _ANOMALOUS_START.match(t):
        return "anomalous"
    if _NORMAL_START.match(t):
        return "normal"
    return "unknown"


def answer_decided(text: str) -> bool:
    """Whether :func:`parse_answer` can no longer change as more text is generated."""
    t = _LEADING.sub("", text.lstrip().lower())
    # A first word is complete once a non-letter follows it.
    m = re.match(r"^([a-z]+)[^a-z]", t)
    return m is not None or (bool(t) and not t[0].isalpha())


@dataclass
class Conversation:
    """Multi-turn history about one image; the image tokens stay in the first human turn.

    ``image_embeds`` (``1 x K x H``: Q-Former outputs and TPG tokens) is computed once
    by :meth:`MyriadLMM.start_conversation` and reused for every follow-up question.
    """

    image_embeds: "torch.Tensor"
    turns: list[Turn] = field(default_factory=list)

    def ask(self, question: str) -> None:
        if self.turns and self.turns[-1].answer is None:
            raise ValueError("the previous question has no answer yet")
        self.turns.append(Turn(question))

    def answer(self, text: str) -> None:
        if not self.turns or self.turns[-1].answer is not None:
            raise ValueError("no open question to answer")
        self.turns[-1].answer = text

    @property
    def history(self) -> list[tuple[str, str | None]]:
        return [(t.question, t.answer) for t in self.turns]
