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

Orchestration only (files); pure numpy/torch work happens elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from myriad.errors import MyriadError

__all__ = ["RESULTS_FILE", "PARTIAL_FILE", "RUN_FILE", "ResultsWriter", "check_output", "read_rows"]

RESULTS_FILE = "results.jsonl"
PARTIAL_FILE = "results.jsonl.part"
RUN_FILE = "run.json"
PARQUET_DIR = "results.parquet"
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


def check_output(output: Path, resume: bool) -> None:
    """Before any work: refuse to start over an unfinished run unless resuming (what :class:`ResultsWriter` would)."""
    partial = Path(output) / PARTIAL_FILE
    if partial.exists() and not resume:
        count = len(read_rows(partial))
        raise MyriadError(
            f"{partial}: an unfinished run ({count} images done) is here: pass --resume to continue it, or remove that "
            "file to start over"
        )


class ResultsWriter:
    """Appends a run's rows batch by batch; ``done`` holds the images already written (by their ``path``)."""

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
        self.rows: list[dict[str, Any]] = []
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
            self.rows = read_rows(self.partial)
            self.resumed = True
            self._truncate_to_rows()
            if parquet and self._parquet_partial.is_dir():  # parts of batches never committed to the rows: redone
                for part in self._parquet_partial.glob("part-*.parquet"):
                    if int(part.stem.split("-")[1]) >= len(self.rows):
                        part.unlink()
        else:
            from myriad.io import atomic_write_text

            atomic_write_text(run_file, json.dumps(identity, indent=2))
            self.partial.write_bytes(b"")
            if parquet:
                shutil.rmtree(self._parquet_partial, ignore_errors=True)
        if parquet:
            self._parquet_partial.mkdir(exist_ok=True)
        self.done = {str(r.get("path") or r.get("image")) for r in self.rows}

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
        already written (a batch a retried task delivered again) is dropped. Returns the rows written."""
        records = [r for r in records if str(r.get("path") or r.get("image")) not in self.done]
        if not records:
            return records
        if self.parquet:
            self._write_parquet(records, len(self.rows))
        payload = "".join(json.dumps(r) + "\n" for r in records).encode()
        with open(self.partial, "ab") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.extend(records)
        self.done.update(str(r.get("path") or r.get("image")) for r in records)
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
        if self.rows or self.resumed:
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
