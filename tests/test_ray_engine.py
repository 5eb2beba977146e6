"""``--engine ray`` on a local two-node Ray cluster: the single process's rows, every image once after a worker dies."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("myriad_experts_tutorial")

from myriad.testing import image_folders, run_cli  # noqa: E402

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster():
    """Two raylets ("nodes") on this machine, one CPU each, small object stores."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * MiB,
                                                        "include_dashboard": False})
    c.add_node(num_cpus=1, object_store_memory=80 * MiB)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory, cluster) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray-data")
    normal, test = image_folders(root, normal=6, good=12, defect=12, size=40, digits=2)
    (test / "broken.png").write_bytes(b"not an image")
    from myriad.inspection import Inspector
    from myriad.profiles import save_profile

    inspector = Inspector("colour-stats", {"size": 32}, lmm="none").fit(sorted(str(p) for p in normal.glob("*.png")))
    profile = save_profile(inspector, root / "profile", 6)
    return {"normal": normal, "test": test, "profile": profile, "root": root}


def _rows(folder: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows)  # every image exactly once
    return by_path


def test_ray_rows_equal_the_single_process_rows(data, cluster, tmp_path, capsys):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    args = ["inspect", str(data["test"]), "--profile", str(data["profile"]), "--lmm", "none", "-b", "4"]
    assert run_cli([*args, "-o", str(local)], capsys)[0] == 0
    code, stdout, stderr = run_cli([*args, "-o", str(on_ray), "--engine", "ray", "--address", cluster.address,
                                    "--workers", "2"], capsys)
    assert code == 0, stderr
    assert "ray: 2 expert actors on a cluster of 2 CPUs" in stderr
    assert not (on_ray / "results.blocks").exists()  # merged into the results
    a, b = _rows(local), _rows(on_ray)
    assert a.keys() == b.keys() and len(a) == 25
    for key, row in a.items():
        other = b[key]
        assert ("error" in row) == ("error" in other)
        if "error" not in row:
            assert row["decision"] == other["decision"] and row["score"] == pytest.approx(other["score"], abs=1e-6)
            assert row["findings"] == other["findings"] and (on_ray / other["overlay"]).is_file()


def test_a_worker_killed_mid_run_loses_no_image_and_repeats_none(data, cluster, tmp_path):
    import psutil

    from myriad.engines.ray_engine import RaySettings, run_ray
    from myriad.run_results import ResultsWriter

    paths = sorted(p for p in data["test"].glob("t*.png"))
    writer = ResultsWriter(tmp_path / "out", {"test": 1})
    delivered: list[int] = []

    def on_rows(rows):  # shown only: the workers write each block's rows to its own file
        delivered.append(len(rows))

    settings = {"lmm": "none", "device": "cpu", "precision": "auto", "answers": "facts", "verdict": "either",
                "ask": None, "rules": None}
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    done = threading.Event()
    result: dict = {}

    def run():
        try:
            result["ran"] = run_ray([(p, p.stem + "_overlay.png") for p in paths], data["profile"], settings,
                                    tmp_path / "out", writer.blocks, on_rows,
                                    RaySettings(workers=2, batch_size=2, pause_s=0.4))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 120
    victims = []
    while time.time() < deadline and not victims and not done.is_set():
        victims = [p for p in psutil.process_iter(["cmdline"])
                   if "_ExpertActor" in " ".join(p.info["cmdline"] or []) and delivered]
        time.sleep(0.05)
    assert victims, "no inspecting actor was seen running"
    rows_at_kill = sum(delivered)
    victims[0].kill()  # kill -9 of one actor's worker process, mid-run
    assert done.wait(240) and "error" not in result, result.get("error")
    ray.shutdown()
    assert rows_at_kill < len(paths)
    writer.merge_blocks()
    merged = [json.loads(line) for line in writer.partial.read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in merged) == sorted(p.name for p in paths)  # each image once
    assert not writer.blocks.exists()


def test_with_the_lmm_ray_gives_the_single_process_verdicts_and_answers(data, cluster, tmp_path, capsys):
    """One row with Myriad-mini: expert actors score, Myriad actors (each loads the LMM once) answer; verdicts,
    margins and answers as in one process."""
    pytest.importorskip("transformers")
    images = tmp_path / "two"
    images.mkdir()
    for name in ("t00.png", "t20.png"):  # one normal, one defective
        (images / name).write_bytes((data["test"] / name).read_bytes())
    args = ["inspect", str(images), "--profile", str(data["profile"]), "-b", "2"]
    assert run_cli([*args, "-o", str(tmp_path / "local")], capsys)[0] == 0
    code, _, stderr = run_cli([*args, "-o", str(tmp_path / "ray"), "--engine", "ray", "--address", cluster.address,
                               "--workers", "1"], capsys)
    assert code == 0, stderr
    assert "ray: 1 expert actor and 1 Myriad (LMM) actor on a cluster of 2 CPUs" in stderr
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    for key, row in a.items():
        assert (row["decision"], row["answer"], row["verdict_source"]) == (b[key]["decision"], b[key]["answer"],
                                                                          b[key]["verdict_source"])
        # bfloat16 sums depend on the thread count (an actor runs on its CPU share): margins agree to about 0.1
        assert row["lmm_margin"] == pytest.approx(b[key]["lmm_margin"], abs=0.3)


def test_an_address_where_nothing_answers_is_one_line(data, tmp_path, capsys):
    code, _, stderr = run_cli(["inspect", str(data["test"]), "--profile", str(data["profile"]), "--lmm", "none",
                               "--engine", "ray", "--address", "127.0.0.1:9", "-o", str(tmp_path / "o")], capsys)
    lines = [line for line in stderr.splitlines() if line.startswith("Error")]
    assert code != 0 and len(lines) == 1 and "no Ray cluster answers at 127.0.0.1:9" in lines[0]
    assert not (tmp_path / "o").exists()
