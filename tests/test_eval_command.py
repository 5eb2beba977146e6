"""``myriad eval`` end to end on a tiny synthetic dev set with the tutorial ``colour-stats`` expert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from myriad.cli import main
from myriad.synthetic.devset import DevsetSpec, make_devset

CONFIG = '{"size": 32}'
DEFECTS = ("scratch", "cut_paste", "global_contrast")


@pytest.fixture(scope="module")
def devset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "devset"
    spec = DevsetSpec(categories=("wood", "gravel"), train=6, test_good=3, test_defect=1, size=64, seed=0, defects=DEFECTS)
    make_devset(root, spec)
    return root


def run_eval(*args: str) -> None:
    main(["eval", "--expert", "colour-stats", "--config", CONFIG, "-q", *args])


def failing(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        run_eval(*args)
    assert info.value.code == 1
    return capsys.readouterr().err


def test_one_class_report_files_and_values(devset, tmp_path):
    out = tmp_path / "out" / "report.json"
    run_eval("--data", str(devset), "--output", str(out), "--examples", "4")
    report = json.loads(out.read_text())
    assert report["expert"] == "colour-stats" and report["mode"] == "one_class"
    assert report["config"]["mode"] == "one_class" and report["config"]["size"] == 32
    assert report["k_shot"] is None and report["seed"] == 0 and report["runs"] == 1
    assert set(report["categories"]) == {"wood", "gravel"}
    for entry in [*report["categories"].values(), report["mean"]]:
        for key in ("pixel_auroc", "aupro"):  # the predictions hold no maps: these are only range-checked
            assert 0.0 <= entry[key] <= 1.0, key
        assert entry["fit_seconds"] > 0 and entry["ms_per_image"] > 0 and entry["peak_rss_mb"] > 10
    wood = report["categories"]["wood"]
    assert wood["num_train"] == wood["num_fit"] == 6
    assert wood["num_test"] == 3 + len(DEFECTS) and wood["num_anomalous"] == len(DEFECTS)
    assert wood["runs"][0]["calibration"]["method"].startswith("kfold-max")
    assert report["mean"]["image_auroc"] == pytest.approx(
        np.mean([c["image_auroc"] for c in report["categories"].values()])
    )

    md = (tmp_path / "out" / "report.md").read_text()
    assert "| wood |" in md and "**mean**" in md and "report_plots/roc.png" in md
    plots = tmp_path / "out" / "report_plots"
    for name in ("roc.png", "histograms.png", "examples_wood.png", "examples_gravel.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "out" / "report_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (3 + len(DEFECTS))
    record = json.loads(lines[0])
    assert {"path", "label", "defect", "raw_score", "score", "anomalous", "correct"} <= set(record)
    assert_metrics_match_the_predictions(report, [json.loads(line) for line in lines])
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files


def assert_metrics_match_the_predictions(report: dict, records: list[dict]) -> None:
    """Each category's image AUROC, F1-max and expert accuracy recomputed from the predictions the command wrote,
    with every label read again from the dev set's folder (``good`` normal, any other defect folder anomalous): a
    report whose labels or scores were inverted, or whose metrics came from other predictions, fails."""
    from myriad.metrics import accuracy, f1_max, image_auroc

    by_category: dict[str, list[dict]] = {}
    for record in records:
        path = Path(record["path"])
        assert record["defect"] == path.parent.name and record["label"] == int(path.parent.name != "good"), record
        assert record["correct"] == (record["anomalous"] == bool(record["label"])), record
        by_category.setdefault(path.parent.parent.parent.name, []).append(record)
    assert set(by_category) == set(report["categories"])
    for name, entry in report["categories"].items():
        labels = [r["label"] for r in by_category[name]]
        scores = [r["score"] for r in by_category[name]]
        assert entry["image_auroc"] == pytest.approx(image_auroc(labels, scores)), name
        assert entry["f1_max"] == pytest.approx(f1_max(labels, scores)[0]), name
        assert entry["expert_accuracy"] == pytest.approx(accuracy(labels, [r["anomalous"] for r in by_category[name]]))
    assert report["mean"]["image_auroc"] > 0.5  # colour-stats ranks these defects (a sign error would sit below)


def test_few_shot_runs_average_draws(devset, tmp_path):
    out = tmp_path / "fs.json"
    run_eval("--data", str(devset), "--category", "wood", "--k-shot", "2", "--runs", "2", "--seed", "5",
             "--output", str(out), "--no-plots", "--batch-size", "4")
    report = json.loads(out.read_text())
    assert report["mode"] == "few_shot" and report["config"]["mode"] == "few_shot"
    assert report["k_shot"] == 2 and report["runs"] == 2 and report["seed"] == 5
    wood = report["categories"]["wood"]
    assert [r["seed"] for r in wood["runs"]] == [5, 6]
    assert all(len(r["references"]) == 2 for r in wood["runs"])
    assert wood["num_fit"] == 2 and "std" in wood
    assert wood["image_auroc"] == pytest.approx(np.mean([r["image_auroc"] for r in wood["runs"]]))
    assert not (tmp_path / "fs_plots").exists()
    assert len((tmp_path / "fs_predictions.jsonl").read_text().splitlines()) == 2 * wood["num_test"]


def test_bad_data_and_settings_give_clear_errors(devset, tmp_path, capsys):
    out = tmp_path / "r.json"
    err = failing(capsys, "--data", str(devset), "--category", "carpet", "--output", str(out))
    assert "carpet" in err and "wood" in err
    err = failing(capsys, "--data", str(devset), "--k-shot", "7", "--output", str(out))
    assert "--k-shot 7" in err and str(devset / "gravel" / "train" / "good") in err
    err = failing(capsys, "--data", str(devset), "--config", "{nope", "--output", str(out))
    assert "--config" in err and "JSON" in err
    err = failing(capsys, "--data", str(devset), "--output", str(tmp_path / "r.txt"))
    assert ".json" in err

    broken = tmp_path / "broken"
    shutil.copytree(devset / "wood", broken / "wood")
    for image in (broken / "wood" / "train" / "good").iterdir():
        image.unlink()
    err = failing(capsys, "--data", str(broken), "--output", str(out))
    assert str(broken / "wood" / "train" / "good") in err
    assert not out.exists()


@pytest.mark.parametrize("error, code", [(RuntimeError("boom"), None), (KeyboardInterrupt(), 130)])
def test_interrupted_eval_leaves_no_report(devset, tmp_path, monkeypatch, error, code):
    from myriad.detector import Detector

    calls = {"n": 0}
    original = Detector.detect

    def flaky(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise error
        return original(self, images)

    monkeypatch.setattr(Detector, "detect", flaky)
    out = tmp_path / "out" / "report.json"
    if code is None:
        with pytest.raises(RuntimeError, match="boom"):
            run_eval("--data", str(devset), "--output", str(out), "--batch-size", "2")
    else:
        with pytest.raises(SystemExit) as info:
            run_eval("--data", str(devset), "--output", str(out), "--batch-size", "2")
        assert info.value.code == code
    assert calls["n"] == 3
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_eval_steps_add_metrics_and_record_fields(devset, tmp_path):
    """The extension point a later --lmm option uses: per-batch answers, extra metrics."""
    from myriad.evaluation.report import write_outputs
    from myriad.evaluation.runner import EvalSettings, evaluate

    class AlwaysAnomalous:
        name = "fake-lmm"

        def process(self, category, samples, images, detections, records):
            for record in records:
                record.extra["lmm_answer"] = "Yes, there is a defect."
                record.extra["lmm_anomalous"] = True

        def metrics(self, records):
            return {"accuracy": float(np.mean([r.extra["lmm_anomalous"] == bool(r.label) for r in records]))}

    settings = EvalSettings(expert="colour-stats", data=devset, categories=("gravel",), config={"size": 32}, progress=False)
    result = evaluate(settings, steps=[AlwaysAnomalous()])
    report = write_outputs(result, tmp_path / "lmm.json", plots=False)
    gravel = report["categories"]["gravel"]
    assert gravel["accuracy"] == pytest.approx(len(DEFECTS) / (3 + len(DEFECTS)))
    assert "accuracy" in report["mean"] and "accuracy" in report["metrics"]
    first = json.loads((tmp_path / "lmm_predictions.jsonl").read_text().splitlines()[0])
    assert first["lmm_answer"].startswith("Yes")
    assert "| accuracy |" in (tmp_path / "lmm.md").read_text()


def test_overlay_blends_only_evidence_and_adds_caption():
    from myriad.evaluation.overlay import overlay

    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    calm = overlay(image, np.zeros((10, 15), dtype=np.float32))
    np.testing.assert_array_equal(calm, image)  # typical-normal map: the image shows through
    hot_map = np.zeros((40, 60), dtype=np.float32)
    hot_map[10:30, 20:40] = 1.0
    hot = overlay(image, hot_map, caption="score 0.93: anomalous")
    assert hot.dtype == np.uint8 and hot.shape[1] == 60 and hot.shape[0] > 40
    assert not np.array_equal(hot[15:25, 25:35], image[15:25, 25:35])
    np.testing.assert_array_equal(hot[:5, :5], image[:5, :5])
    with pytest.raises(ValueError, match="2-D"):
        overlay(image, np.zeros((2, 3, 4)))
