"""Experts report progress through ``Expert.progress_stage``; the host's callback or a tqdm bar shows it."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import BaseModel

from myriad.experts import Expert, Mode, Prediction
from myriad.progress import progress_stage


class _Config(BaseModel):
    progress: bool = True


class _Looping(Expert):
    """Reports one ``"work"`` stage of one unit per image."""

    Config = _Config

    def __init__(self, config: _Config) -> None:
        super().__init__(config, Mode.ZERO_SHOT)

    def _predict(self, images: list[np.ndarray]) -> list[Prediction]:
        out = []
        with self.progress_stage("work", len(images), unit="img", terminal_only=False) as stage:
            for image in images:
                out.append(Prediction(np.zeros(image.shape[:2], np.float32), 0.0))
                stage.advance()
        return out


def _images(n: int) -> list[np.ndarray]:
    return [np.zeros((8, 8, 3), np.uint8) for _ in range(n)]


def test_the_host_callback_receives_every_report():
    calls = []
    expert = _Looping(_Config())
    expert.progress_callback = lambda stage, done, total: calls.append((stage, done, total))
    expert.predict(_images(3))
    assert calls == [("work", 0, 3), ("work", 1, 3), ("work", 2, 3), ("work", 3, 3)]


def test_without_a_callback_the_stage_is_a_bar_on_stderr(capsys):
    _Looping(_Config()).predict(_images(2))
    assert "work" in capsys.readouterr().err


def test_progress_false_reports_nothing(capsys):
    calls = []
    expert = _Looping(_Config(progress=False))
    expert.progress_callback = lambda *args: calls.append(args)
    expert.predict(_images(2))
    assert calls == [] and "work" not in capsys.readouterr().err


def test_a_terminal_only_bar_stays_silent_off_a_terminal(capsys):
    with progress_stage("quiet-stage", 4) as stage:
        stage.advance(4)
    assert "quiet-stage" not in capsys.readouterr().err


def test_a_stage_may_learn_its_total_late():
    calls = []
    with progress_stage("late", callback=lambda *args: calls.append(args)) as stage:
        stage.report(0, 10)
        stage.report(4)
        stage.advance(6)
    assert calls == [("late", 0, 10), ("late", 4, 10), ("late", 10, 10)]
    assert (stage.done, stage.total) == (10, 10)


def test_the_bar_is_closed_when_the_loop_fails(monkeypatch):
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total, **options):
            self.total, self.n, self.closed, self.options = total, 0, False, options
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    with pytest.raises(RuntimeError, match="boom"):
        with progress_stage("closing", 3, unit="img") as stage:
            stage.advance(2)
            raise RuntimeError("boom")
    (bar,) = bars
    assert bar.closed and (bar.n, bar.total) == (2, 3)
    assert bar.options == {"desc": "closing", "unit": "img", "disable": None, "leave": False}
