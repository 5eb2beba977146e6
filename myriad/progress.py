"""Progress of an expert's long computations: the expert reports it, the host shows it.

Experts draw no progress bars. Around a long loop they open a stage with
:meth:`myriad.experts.Expert.progress_stage` and report on it::

    with self.progress_stage("features", total=len(images), unit="img") as stage:
        for batch in batches:
            ...
            stage.advance(len(batch))        # or stage.report(done, total)

What happens to the reports is the host's choice:

- when the host set ``expert.progress_callback``, it is called as ``callback(stage, done, total)``:
  once with ``done = 0`` when the stage opens with a known total, then after every report;
- otherwise each stage is a tqdm bar on stderr (``leave=False``), drawn only when stderr is a
  terminal, unless the stage was opened with ``terminal_only=False``;
- nothing at all when the expert's config has ``progress = False``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

#: ``callback(stage, done, total)``: the host's view of an expert's progress
ProgressCallback = Callable[[str, int, int], None]


class Stage:
    """One stage of a long computation: ``done`` of ``total`` units (images, pairs, points)."""

    def __init__(self, name: str, total: int, sink: ProgressCallback | None) -> None:
        self.name = name
        self.total = int(total)
        self.done = 0
        self._sink = sink

    def report(self, done: int, total: int | None = None) -> None:
        """``done`` units of ``total`` (default: the total given so far) are finished."""
        self.done = int(done)
        if total is not None:
            self.total = int(total)
        if self._sink is not None:
            self._sink(self.name, self.done, self.total)

    def advance(self, n: int = 1) -> None:
        """``n`` more units are finished."""
        self.report(self.done + n)


@contextmanager
def progress_stage(
    name: str,
    total: int = 0,
    *,
    callback: ProgressCallback | None = None,
    enabled: bool = True,
    unit: str = "it",
    terminal_only: bool = True,
) -> Iterator[Stage]:
    """A :class:`Stage` reporting to ``callback``, else to a tqdm bar (see the module's docstring)."""
    if not enabled:
        yield Stage(name, total, None)
        return
    if callback is not None:
        stage = Stage(name, total, callback)
        if total:
            stage.report(0)
        yield stage
        return
    bar: Any = None

    def draw(stage_name: str, done: int, stage_total: int) -> None:
        nonlocal bar
        if bar is None:
            from tqdm.auto import tqdm

            disable = None if terminal_only else False  # None: tqdm draws only on a terminal
            bar = tqdm(total=stage_total, desc=stage_name, unit=unit, disable=disable, leave=False)
        if bar.total != stage_total:
            bar.total = stage_total
        bar.update(done - bar.n)

    stage = Stage(name, total, draw)
    if total:
        stage.report(0)
    try:
        yield stage
    finally:
        if bar is not None:
            bar.close()
