"""The results of a batch run, written as they come: resumable, every image's row exactly once.

``myriad inspect`` appends each batch's rows to ``OUTPUT/results.jsonl.part`` in one write,
flushed to disk (and, with ``--format parquet``, one Parquet file per batch under
``OUTPUT/results.parquet.part/``, written before the rows it holds are appended, named by the
row it starts at, so a batch redone after a crash replaces its file instead of adding one).
When every image is done the ``.part`` names are renamed to ``results.jsonl`` /
``results.parquet`` at once, replacing an earlier run's. A run killed at any moment leaves the
``.part`` file: ``--resume`` cuts a half-written last line, skips every image already in it and
goes on, so at most the batch in flight is lost and no row is written twice. ``OUTPUT/run.json``
records what the rows were made with (expert or profile, LMM, question, verdict rule); resuming
with anything else is refused, naming what differs.

On a Ray cluster (``--engine ray``) the workers write the rows themselves, one JSONL file per
block under ``OUTPUT/results.blocks/``, named by the sha256 of the block's image paths and
written atomically, so a retried task replaces its file instead of adding one
(:func:`write_block`); when the run ends the driver merges them into the results, each image
once (:meth:`ResultsWriter.merge_blocks`). A run killed before that leaves the blocks, and
``--resume`` merges them first.

Orchestration only (files); pure numpy/torch work happens elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from myriad.errors import MyriadError

__all__ = ["BLOCKS_DIR", "RESULTS_FILE", "PARTIAL_FILE", "RUN_FILE", "ResultsWriter", "RunTally", "check_output", "read_blocks", "read_rows",
           "write_block"]

RESULTS_FILE = "results.jsonl"
PARTIAL_FILE = "results.jsonl.part"
RUN_FILE = "run.json"
PARQUET_DIR = "results.parquet"
#: A Ray run's per-block row files, merged into the results when the run ends.
BLOCKS_DIR = "results.blocks"
#: Row fields written to Parquet as JSON text (nested values whose shape varies between rows).
_NESTED = ("timings_ms", "members", "findings", "answer_degenerate")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL results file (a half-written last line, from a killed run, is left out)."""
    rows = []
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise MyriadError(f"{path}: line {number} is not JSON ({exc}); the file was changed by hand") from None
    return rows


@dataclass
class RunTally:
    """What a run's rows add up to (kept instead of the rows, so a run of any length holds only its counts and the
    set of images done)."""

    images: int = 0
    errors: int = 0
    flagged: int = 0
    review: int = 0
    accepted: int = 0  #: alarms the acceptance rules turned normal
    ruled: bool = False  #: whether any row went through acceptance rules

    @property
    def decided(self) -> int:
        """Rows with a decision (not error rows)."""
        return self.images - self.errors

    def add(self, row: dict[str, Any]) -> None:
        """Count one row."""
        self.images += 1
        if "error" in row:
            self.errors += 1
            return
        decision = row.get("decision")
        self.flagged += decision == "anomalous"
        self.review += decision == "review"
        self.accepted += bool(row.get("rule")) and decision == "normal"
        self.ruled = self.ruled or "rule" in row


def _row_key(row: dict[str, Any]) -> str:
    return str(row.get("path") or row.get("image"))


def write_block(blocks: Path, rows: list[dict[str, Any]]) -> Path:
    """Write one block's rows to ``blocks/block-<sha256 of their paths>.jsonl`` atomically: the same block written
    again (a retried task) replaces its file, so no row is ever there twice."""
    import hashlib

    from myriad.io import atomic_write_text

    digest = hashlib.sha256("\n".join(sorted(_row_key(r) for r in rows)).encode()).hexdigest()[:24]
    target = Path(blocks) / f"block-{digest}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, "".join(json.dumps(r) + "\n" for r in rows))
    return target


def read_blocks(blocks: Path) -> list[dict[str, Any]]:
    """Every row of the block files under ``blocks`` (a file being written, ``*.tmp``, is not a block yet)."""
    rows: list[dict[str, Any]] = []
    for block in sorted(Path(blocks).glob("block-*.jsonl")):
        rows.extend(read_rows(block))
    return rows


def check_output(output: Path, resume: bool) -> None:
    """Before any work: refuse to start over an unfinished run unless resuming (what :class:`ResultsWriter` would)."""
    if resume:
        return
    partial, blocks = Path(output) / PARTIAL_FILE, Path(output) / BLOCKS_DIR
    in_blocks = len({_row_key(r) for r in read_blocks(blocks)}) if blocks.is_dir() else 0
    if not (partial.exists() or in_blocks):
        return
    count = (len(read_rows(partial)) if partial.exists() else 0) + in_blocks
    if in_blocks:
        raise MyriadError(f"{blocks}: an unfinished Ray run ({count} images done) is here: pass --resume to continue "
                          "it, or use another --output")
    raise MyriadError(f"{partial}: an unfinished run ({count} images done) is here: pass --resume to continue it, or "
                      "remove that file to start over")


class ResultsWriter:
    """Appends a run's rows batch by batch; ``done`` holds the images already written (by their ``path``) and
    ``tally`` what their rows add up to (the rows themselves are not kept in memory)."""

    def __init__(self, output: Path, identity: dict[str, Any], resume: bool = False, parquet: bool = False) -> None:
        self.output = Path(output)
        self.parquet = parquet
        if parquet:
            try:
                import pyarrow.parquet  # noqa: F401  (checked before any work)
            except ImportError:
                raise MyriadError("--format parquet needs pyarrow: pip install 'myriad-iad[parquet]'") from None
        self.output.mkdir(parents=True, exist_ok=True)
        self.partial = self.output / PARTIAL_FILE
        self.tally = RunTally()
        self.done: set[str] = set()
        #: whether an earlier run's rows were taken up (then nothing is discarded on failure)
        self.resumed = False
        run_file = self.output / RUN_FILE
        finished = self.output / RESULTS_FILE
        check_output(self.output, resume)
        if resume and (self.partial.exists() or finished.exists()):
            self._check_identity(run_file, identity)
            if not self.partial.exists():  # a finished run gets more images: continue from its rows
                shutil.copyfile(finished, self.partial)
                if parquet and (self.output / PARQUET_DIR).is_dir() and not self._parquet_partial.exists():
                    shutil.copytree(self.output / PARQUET_DIR, self._parquet_partial)
            for row in read_rows(self.partial):
                self.tally.add(row)
                self.done.add(_row_key(row))
            self.resumed = True
            self._truncate_to_rows()
            if parquet and self._parquet_partial.is_dir():  # parts of batches never committed to the rows: redone
                for part in self._parquet_partial.glob("part-*.parquet"):
                    if int(part.stem.split("-")[1]) >= self.tally.images:
                        part.unlink()
        else:
            from myriad.io import atomic_write_text

            atomic_write_text(run_file, json.dumps(identity, indent=2))
            self.partial.write_bytes(b"")
            if parquet:
                shutil.rmtree(self._parquet_partial, ignore_errors=True)
        if parquet:
            self._parquet_partial.mkdir(exist_ok=True)
        if resume:
            merged = self.merge_blocks()  # a killed Ray run's blocks
            self.resumed = self.resumed or bool(merged)
        else:
            shutil.rmtree(self.output / BLOCKS_DIR, ignore_errors=True)

    @property
    def blocks(self) -> Path:
        """Where a Ray run's workers write their blocks (:func:`write_block`)."""
        return self.output / BLOCKS_DIR

    def merge_blocks(self, order: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Append the rows of every block file (each image once, in ``order`` of their paths, then by path) and remove
        the blocks. Returns the rows written."""
        if not self.blocks.is_dir():
            return []
        rank = {key: i for i, key in enumerate(order)}
        rows = sorted(read_blocks(self.blocks), key=lambda r: (rank.get(_row_key(r), len(rank)), _row_key(r)))
        written = self.append(rows)  # each image once: the first of its rows
        shutil.rmtree(self.blocks, ignore_errors=True)
        return written

    @property
    def _parquet_partial(self) -> Path:
        return self.output / (PARQUET_DIR + ".part")

    def _check_identity(self, run_file: Path, identity: dict[str, Any]) -> None:
        try:
            before = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            raise MyriadError(f"{run_file}: missing or unreadable, so the earlier run cannot be resumed; use another "
                              "--output") from None
        differ = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if differ:
            shown = "; ".join(f"{k}: {before.get(k)!r} then, {identity.get(k)!r} now" for k in differ[:3])
            raise MyriadError(f"{run_file}: the run to resume was made with other settings ({shown}); resume with the "
                              "same ones, or use another --output")

    def _truncate_to_rows(self) -> None:
        """Cut a half-written last line (a run killed mid-write) so the next batch starts on a fresh line."""
        data = self.partial.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(self.partial, "r+b") as handle:
                handle.truncate(end)

    def append(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write one batch's rows (Parquet first, then the JSONL rows in one flushed write); a row of an image
        already written, or already in the batch (a batch a retried task delivered again), is dropped. Returns the
        rows written."""
        fresh: dict[str, dict[str, Any]] = {}
        for record in records:
            if _row_key(record) not in self.done:
                fresh.setdefault(_row_key(record), record)
        records = list(fresh.values())
        if not records:
            return records
        if self.parquet:
            self._write_parquet(records, self.tally.images)
        payload = "".join(json.dumps(r) + "\n" for r in records).encode()
        with open(self.partial, "ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.tally.add(record)
            self.done.add(_row_key(record))
        return records

    def _write_parquet(self, records: list[dict[str, Any]], first: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from myriad.io import atomic_path

        columns: dict[str, list[Any]] = {}
        keys = list(dict.fromkeys(k for r in records for k in r))
        for key in keys:
            values = [r.get(key) for r in records]
            if key in _NESTED or any(isinstance(v, (dict, list)) for v in values):
                values = [None if v is None else json.dumps(v) for v in values]
            columns[key] = values
        table = pa.table({k: pa.array(v) for k, v in columns.items()})
        with atomic_path(self._parquet_partial / f"part-{first:08d}.parquet") as tmp:
            pq.write_table(table, tmp)

    def discard_if_empty(self) -> None:
        """A run that failed before its first row leaves nothing behind (no ``.part`` to resume, no run.json)."""
        if self.tally.images or self.resumed:
            return
        for path in (self.partial, self.output / RUN_FILE):
            path.unlink(missing_ok=True)
        if self.parquet:
            shutil.rmtree(self._parquet_partial, ignore_errors=True)

    def finish(self) -> Path:
        """Every image done: the ``.part`` results become the run's results (replacing an earlier run's)."""
        final = self.output / RESULTS_FILE
        os.replace(self.partial, final)
        if self.parquet:
            target = self.output / PARQUET_DIR
            if target.exists():
                old = self.output / (PARQUET_DIR + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(self._parquet_partial, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self._parquet_partial, target)
        return final
