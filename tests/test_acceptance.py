"""Acceptance rules: ignore areas, minimum area, severity floor, accepted kinds, the review band; files and profiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from myriad.acceptance import AcceptanceRules, apply_rules, load_rules, review_floor
from myriad.errors import ConfigError
from myriad.findings import measure_findings


def _map_with_spot(y: int, x: int, side: int = 8, size: int = 64, level: float = 0.9) -> np.ndarray:
    amap = np.full((size, size), 0.2, np.float32)
    amap[y : y + side, x : x + side] = level
    return amap


def _outcome(rules: AcceptanceRules, amap: np.ndarray, decision: str = "anomalous", floor: float | None = None):
    score = float(amap.max())
    findings = measure_findings(amap, score, decision == "anomalous")

    def remeasure(masked):
        peak = float(masked.max())
        return measure_findings(masked, min(score, peak) if peak < 0.5 else score, peak >= 0.5)

    return apply_rules(rules, decision, score, findings, amap, remeasure, floor)


def test_an_alarm_inside_an_ignored_box_is_accepted_and_one_outside_is_kept():
    rules = AcceptanceRules(ignore_boxes=[(0.0, 0.0, 0.25, 0.25)])
    inside = _outcome(rules, _map_with_spot(2, 2))
    assert inside.decision == "normal" and inside.rule.startswith("ignore")
    outside = _outcome(rules, _map_with_spot(40, 40))
    assert outside.decision == "anomalous" and outside.rule == ""
    both = _map_with_spot(2, 2)
    both[40:48, 40:48] = 0.7  # a second defect outside the box: still an alarm, measured without the ignored one
    kept = _outcome(rules, both)
    assert kept.decision == "anomalous" and kept.findings.region == "bottom right"


def test_min_area_min_severity_and_kinds():
    small = _outcome(AcceptanceRules(min_area=0.05), _map_with_spot(30, 30, side=6))  # 36 of 4096 px = 0.9 %
    assert small.decision == "normal" and small.rule.startswith("min_area 5.00%: 0.88% of the image")
    assert _outcome(AcceptanceRules(min_area=0.005), _map_with_spot(30, 30, side=6)).decision == "anomalous"
    weak = _outcome(AcceptanceRules(min_severity="high"), _map_with_spot(30, 30, level=0.55))
    assert weak.decision == "normal" and "severity" in weak.rule
    rules = AcceptanceRules(accept_kinds=["stain"])
    assert "65%" in rules.warnings()[0]
    with pytest.raises(ValueError, match="unknown kinds"):
        AcceptanceRules(accept_kinds=["rust"])


def test_the_review_band_marks_normal_decisions_near_the_threshold():
    rules = AcceptanceRules(review_band=0.1)
    floor = review_floor(rules, None)
    assert floor == pytest.approx(0.4)
    near = _outcome(rules, _map_with_spot(30, 30, level=0.45), decision="normal", floor=floor)
    assert near.decision == "review" and "review band" in near.rule
    assert _outcome(rules, _map_with_spot(30, 30, level=0.3), decision="normal", floor=floor).decision == "normal"
    rate = AcceptanceRules(review_rate=0.1)
    held = np.linspace(0.0, 0.5, 101)  # the held-out normals' calibrated scores (the largest sets the threshold, 0.5)
    assert review_floor(rate, held) == pytest.approx(0.45)
    with pytest.raises(ConfigError, match="review_band"):
        review_floor(rate, None)


def test_a_rules_file_with_an_unknown_field_is_one_line_naming_it(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text("min_area = 0.01\nignore_label = true\n")
    with pytest.raises(ConfigError, match=r"rules.toml: ignore_label: unknown field"):
        load_rules(path)
    path.write_text("min_area = 2\n")
    with pytest.raises(ConfigError, match="min_area"):
        load_rules(path)
    path.write_text('ignore_mask = "missing.png"\n')
    with pytest.raises(ConfigError, match="missing.png does not exist"):
        load_rules(path)
    path.write_text("review_band = 0.1\nreview_rate = 0.05\n")
    with pytest.raises(ConfigError, match="not both"):
        load_rules(path)


def test_rules_travel_in_a_profile_and_change_the_cli_decisions(tmp_path, capsys):
    pytest.importorskip("myriad_experts_tutorial")
    from myriad.testing import run_cli, synthetic_images

    normal, test = tmp_path / "normal", tmp_path / "test"
    normal.mkdir()
    test.mkdir()
    for i, img in enumerate(synthetic_images(8, 48, seed=1)):
        Image.fromarray(img).save(normal / f"n{i}.png")
    for i, img in enumerate(synthetic_images(4, 48, seed=3, defect=True)):
        Image.fromarray(img).save(test / f"d{i}.png")
    mask = np.full((48, 48), 255, np.uint8)  # ignore everything: every located alarm is accepted
    Image.fromarray(mask).save(tmp_path / "all.png")
    (tmp_path / "rules.toml").write_text('ignore_mask = "all.png"\n')
    expert = ["--expert", "colour-stats", "--config", '{"size": 32}', "--lmm", "none"]
    code, _, stderr = run_cli(["fit", str(normal), *expert, "--rules", str(tmp_path / "rules.toml"), "-o", str(tmp_path / "p")], capsys)
    assert code == 0, stderr
    assert (tmp_path / "p" / "rules_ignore_mask.png").is_file()
    assert json.loads((tmp_path / "p" / "profile.json").read_text())["rules"] == {"ignore_mask": "rules_ignore_mask.png"}
    code, stdout, stderr = run_cli(["inspect", str(test), "--profile", str(tmp_path / "p"), "--lmm", "none",
                                    "-o", str(tmp_path / "o")], capsys)
    assert code == 0, stderr
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    flagged = [r for r in rows if r["decision_before_rules"] == "anomalous"]
    assert flagged and all(r["decision"] == "normal" and r["rule"].startswith("ignore") for r in flagged)
    assert "before the rules; ignore" in stdout and "alarms accepted by the rules" in stdout
    (tmp_path / "none.toml").write_text("min_area = 0.0\n")  # --rules replaces the profile's
    code, stdout, stderr = run_cli(["inspect", str(test), "--profile", str(tmp_path / "p"), "--lmm", "none",
                                    "--rules", str(tmp_path / "none.toml"), "-o", str(tmp_path / "o2")], capsys)
    rows = [json.loads(line) for line in (tmp_path / "o2" / "results.jsonl").read_text().splitlines()]
    assert code == 0 and all(r["decision"] == r["decision_before_rules"] for r in rows)
