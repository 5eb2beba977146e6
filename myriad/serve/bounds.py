"""Bounded answers: the shared LMM seen through a wrapper that caps every answer's tokens and seconds.

:class:`myriad.inspection.Inspector` calls ``model.generate`` (first answers) and
``model.chat`` (follow-ups); the wrapper passes them a ``max_new_tokens`` no larger than the
server's and a ``stop_fn`` that ends decoding at a deadline, so that one request holds the model
lock for a bounded time. Everything else is the wrapped model's own.
"""

from __future__ import annotations

import time
from typing import Any, Callable


class BoundedModel:
    """``model`` with each answer cut at ``max_new_tokens`` tokens and ``max_seconds`` of decoding."""

    def __init__(self, model: Any, max_new_tokens: int, max_seconds: float) -> None:
        if max_new_tokens < 1 or max_seconds <= 0:
            raise ValueError("max_new_tokens and max_seconds must be positive")
        self.wrapped = model
        self.max_new_tokens = max_new_tokens
        self.max_seconds = max_seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def _bounded(self, generation: dict[str, Any]) -> dict[str, Any]:
        asked = generation.get("max_new_tokens")
        default = getattr(getattr(self.wrapped, "config", None), "max_new_tokens", self.max_new_tokens)
        generation["max_new_tokens"] = min(self.max_new_tokens, asked if asked is not None else default)
        generation["stop_fn"] = _deadline(time.monotonic() + self.max_seconds, generation.get("stop_fn"))
        return generation

    def generate(self, *args: Any, **generation: Any) -> Any:
        """The wrapped ``generate``, bounded."""
        return self.wrapped.generate(*args, **self._bounded(generation))

    def chat(self, conversation: Any, question: str | None = None, **generation: Any) -> str:
        """The wrapped ``chat``, bounded."""
        return self.wrapped.chat(conversation, question, **self._bounded(generation))


def _deadline(at: float, then: Callable[[str], bool] | None) -> Callable[[str], bool]:
    """A ``stop_fn`` true once the monotonic clock passes ``at`` (or when ``then`` is)."""

    def stop(text: str) -> bool:
        return time.monotonic() > at or (then is not None and then(text))

    return stop
