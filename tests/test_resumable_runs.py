"""Batch runs: rows appended per batch, ``--resume`` after a kill -9, every image exactly once, Parquet, the summary."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("myriad_experts_tutorial")

from myriad.testing import image_folders, run_cli, synthetic_images  # noqa: E402

EXPERT = ["--expert", "colour-stats", "--config", '{"size": 32}', "--lmm", "none"]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return image_folders(tmp_path, normal=6, good=20, defect=20, size=40, digits=3)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_killed_mid_way_resumes_with_every_image_exactly_once(folders, tmp_path, capsys):
    normal, test = folders
    whole = tmp_path / "whole"
    assert run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(whole)], capsys)[0] == 0
    expected = {Path(r["image"]).name: (r["decision"], r["score"]) for r in _rows(whole / "results.jsonl")}

    out = tmp_path / "out"
    args = ["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out), "-b", "2"]
    script = (  # each batch takes a while, so that the kill lands mid-run
        "import time, myriad.inspection as m\n"
        "original = m.Inspector.detect\n"
        "def slow(self, *a, **k):\n    time.sleep(0.2)\n    return original(self, *a, **k)\n"
        "m.Inspector.detect = slow\n"
        f"from myriad.cli import main\nmain({args!r})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "results.jsonl.part"
    deadline = time.time() + 120
    while time.time() < deadline and (not partial.exists() or partial.read_text().count("\n") < 6):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    done = partial.read_text().count("\n")
    assert 6 <= done < 40 and not (out / "results.jsonl").exists()
    with open(partial, "a") as handle:  # as if the kill landed inside a write: half a row
        handle.write('{"image": "half a ro')

    code, _, stderr = run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out)], capsys)
    assert code != 0 and "unfinished run" in stderr and "--resume" in stderr  # never silently over an unfinished run
    code, _, stderr = run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out), "--resume"], capsys)
    assert code == 0, stderr
    assert f"resuming: {done} of 40 images already done" in stderr
    rows = _rows(out / "results.jsonl")
    names = [Path(r["image"]).name for r in rows]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names)) == 40
    for r in rows:
        assert (r["decision"], r["score"]) == pytest.approx(expected[Path(r["image"]).name])
    assert not partial.exists()


def test_resuming_with_other_settings_is_refused(folders, tmp_path, capsys):
    normal, test = folders
    out = tmp_path / "out"
    assert run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out)], capsys)[0] == 0
    code, _, stderr = run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out), "--resume",
                               "--ask", "Where is the defect?"], capsys)
    assert code != 0 and "other settings" in stderr and "ask" in stderr
    # a finished run resumed with the same settings and one more image: only that one is inspected
    Image.fromarray(synthetic_images(1, 40, seed=9)[0]).save(test / "t999.png")
    code, stdout, stderr = run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out), "--resume"], capsys)
    assert code == 0, stderr
    assert "41 images:" in stdout and "1 inspected in this call" in stdout
    assert len(_rows(out / "results.jsonl")) == 41


def test_parquet_results_hold_the_same_rows(folders, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    normal, test = folders
    out = tmp_path / "out"
    code, _, stderr = run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "-o", str(out), "-b", "16",
                               "--format", "parquet"], capsys)
    assert code == 0, stderr
    table = pq.read_table(out / "results.parquet")
    rows = _rows(out / "results.jsonl")
    assert table.num_rows == len(rows) == 40
    assert sorted(table.column("image").to_pylist()) == sorted(r["image"] for r in rows)
    assert json.loads(table.column("findings").to_pylist()[0]) == next(
        r["findings"] for r in rows if r["image"] == table.column("image").to_pylist()[0])
    assert sorted(p.name for p in (out / "results.parquet").iterdir()) == [
        "part-00000000.parquet", "part-00000016.parquet", "part-00000032.parquet"]


def test_the_summary_counts_and_warns_when_alarms_run_far_above_the_stated_rate(folders, tmp_path, capsys, monkeypatch):
    import myriad.images

    normal, test = folders
    defects = tmp_path / "defects"
    defects.mkdir()
    for i, img in enumerate(synthetic_images(12, 40, seed=5, defect=True)):
        Image.fromarray(img).save(defects / f"d{i}.png")
    (defects / "broken.png").write_bytes(b"not an image")
    Image.fromarray(synthetic_images(1, 64, seed=6)[0]).save(defects / "huge.png")
    monkeypatch.setattr(myriad.images, "MAX_PIXELS", 50 * 50)  # 64 x 64 is "too large" here; 40 x 40 is not
    code, stdout, stderr = run_cli(["inspect", str(defects), "--normal", str(normal), *EXPERT, "-o", str(tmp_path / "o")], capsys)
    assert code == 0, stderr
    summary = next(line for line in stdout.splitlines() if line.startswith("14 images:"))
    assert "2 errors" in summary and "images/s" in summary
    rows = _rows(tmp_path / "o" / "results.jsonl")
    assert any(r["image"].endswith("huge.png") and "image too large" in r["error"] for r in rows if "error" in r)
    assert "far above the" in stderr and "drift of the line" in stderr
    code, stdout, stderr = run_cli(["inspect", str(normal), "--normal", str(normal), *EXPERT, "-o", str(tmp_path / "g")], capsys)
    assert code == 0 and "far above" not in stderr


def test_block_files_of_a_killed_ray_run_are_merged_on_resume_each_image_once(tmp_path):
    from myriad.errors import MyriadError
    from myriad.run_results import ResultsWriter, check_output, write_block

    out = tmp_path / "out"
    writer = ResultsWriter(out, {"run": 1})
    rows = [{"image": f"a{i}.png", "path": f"/lines/a{i}.png", "decision": "normal"} for i in range(6)]
    first = write_block(writer.blocks, rows[:3])
    assert write_block(writer.blocks, rows[:3]) == first  # a retried task replaces its file
    write_block(writer.blocks, [rows[5], *rows[2:5]])  # regrouped by a retry: a2 is in two blocks
    assert len(list(writer.blocks.glob("block-*.jsonl"))) == 2
    with pytest.raises(MyriadError, match="unfinished Ray run .6 images done.*--resume"):
        check_output(out, resume=False)
    resumed = ResultsWriter(out, {"run": 1}, resume=True)
    assert resumed.resumed and resumed.tally.images == 6 and not resumed.blocks.exists()
    assert [r["image"] for r in _rows(out / "results.jsonl.part")] == sorted(r["image"] for r in rows)
