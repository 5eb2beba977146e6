"""Findings measured on calibrated maps with known blobs: region, extent, count, severity, texture-wide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from myriad.findings import (
    WHOLE_IMAGE,
    Findings,
    extent_bucket,
    measure_findings,
    severity_of,
    texture_wide_from_members,
)
from myriad.training.answers import REGIONS, defect_region, region_at

SIZE = 256


def blob_map(*boxes: tuple[int, int, int, int], value: float = 0.8, size: int = SIZE) -> np.ndarray:
    """A calibrated map at 0.1 with rectangles (top, left, height, width) raised to ``value``."""
    amap = np.full((size, size), 0.1, dtype=np.float32)
    for top, left, height, width in boxes:
        amap[top : top + height, left : left + width] = value
    return amap


def test_one_blob_in_the_top_left():
    findings = measure_findings(blob_map((20, 30, 24, 20)), score=0.9, anomalous=True)
    assert findings.verdict == "anomalous" and findings.region == "top left" and findings.count == 1
    assert findings.extent == pytest.approx(24 * 20 / SIZE**2, rel=0.1)
    assert findings.extent_bucket == "small" and findings.severity == "high" and not findings.texture_wide


@pytest.mark.parametrize("row", range(3))
@pytest.mark.parametrize("col", range(3))
def test_a_blob_in_each_cell_is_named_as_the_training_answers_name_it(row, col):
    cell = SIZE // 3
    top, left = row * cell + cell // 2 - 5, col * cell + cell // 2 - 5
    amap = blob_map((top, left, 10, 10))
    findings = measure_findings(amap, score=0.7, anomalous=True)
    assert findings.region == REGIONS[row][col] == defect_region(amap > 0.5)


def test_two_blobs_count_two_and_the_largest_gives_the_region():
    amap = blob_map((10, 10, 12, 12), (180, 190, 40, 40))
    findings = measure_findings(amap, score=0.6, anomalous=True)
    assert findings.count == 2 and findings.region == "bottom right"
    assert findings.extent == pytest.approx((144 + 1600) / SIZE**2, rel=0.1)
    assert findings.extent_bucket == "medium" and findings.severity == "low"


def test_diagonal_neighbours_are_one_region_and_specks_are_not_counted():
    amap = blob_map((100, 100, 10, 10), (110, 110, 10, 10))  # touching at a corner: 8-connected
    amap[5, 250] = 0.9  # one pixel: under 0.01 % of the image
    findings = measure_findings(amap, score=0.8, anomalous=True)
    assert findings.count == 1 and findings.severity == "medium"


def test_the_region_is_weighted_by_how_far_pixels_are_above_the_threshold():
    """One region spanning two cells: its hot end decides."""
    amap = blob_map((10, 10, 20, 150), value=0.55)
    amap[10:30, 120:160] = 1.0  # the hot part, in the top (middle) cell
    assert measure_findings(amap, score=0.9, anomalous=True).region == "top"
    amap[10:30, 120:160] = 0.55
    amap[10:30, 10:50] = 1.0
    assert measure_findings(amap, score=0.9, anomalous=True).region == "top left"


def test_whole_image_raised_is_texture_wide():
    findings = measure_findings(np.full((SIZE, SIZE), 0.7, dtype=np.float32), score=0.7, anomalous=True)
    assert findings.region == WHOLE_IMAGE and findings.texture_wide and findings.extent == 1.0
    assert findings.count == 1 and findings.extent_bucket == "large"


def test_the_caller_can_declare_a_texture_wide_defect():
    findings = measure_findings(blob_map((20, 30, 24, 20)), score=0.9, anomalous=True, texture_wide=True)
    assert findings.region == WHOLE_IMAGE and findings.texture_wide and findings.count == 1


def test_all_below_the_threshold_and_normal():
    findings = measure_findings(blob_map((20, 30, 24, 20), value=0.45), score=0.3, anomalous=False)
    assert findings == Findings("normal", None, 0.0, None, 0, None, False, 0.3)


def test_anomalous_by_score_without_defective_pixels_uses_the_maximum():
    """An image-level score above 0.5 with a map under it: the peak's cell, count 1, the half-maximum area."""
    amap = np.zeros((SIZE, SIZE), dtype=np.float32)
    amap[200:216, 20:36] = 0.3
    amap[205, 25] = 0.4
    findings = measure_findings(amap, score=0.6, anomalous=True)
    assert findings.region == "bottom left" and findings.count == 1
    assert findings.extent == pytest.approx(16 * 16 / SIZE**2, rel=0.1)
    flat = measure_findings(np.full((64, 64), 0.2, dtype=np.float32), score=0.6, anomalous=True)
    assert flat.region == WHOLE_IMAGE and flat.texture_wide and flat.extent == 1.0


def test_cut_points():
    assert [extent_bucket(x) for x in (0.0, 0.0099, 0.01, 0.1, 0.1001, 1.0)] == [
        "small", "small", "medium", "medium", "large", "large",
    ]
    assert [severity_of(s) for s in (0.5, 0.649, 0.65, 0.849, 0.85, 1.0)] == [
        "low", "low", "medium", "medium", "high", "high",
    ]


def test_texture_wide_from_a_fusions_members():
    def members(patchcore: bool, global_: bool) -> dict:
        return {"patchcore": {"score": 0.1, "anomalous": patchcore}, "global": {"score": 0.1, "anomalous": global_}}

    assert texture_wide_from_members(members(False, True)) is True
    assert texture_wide_from_members(members(True, True)) is False
    assert texture_wide_from_members(members(True, False)) is False
    assert texture_wide_from_members(None) is None
    assert texture_wide_from_members({"patchcore": {"anomalous": True}, "musc": {"anomalous": False}}) is None


def test_region_at_matches_defect_region_on_single_pixels():
    for shape in [(1, 1), (2, 5), (7, 8), (10, 11)]:
        for r in range(shape[0]):
            for c in range(shape[1]):
                mask = np.zeros(shape)
                mask[r, c] = 1
                assert region_at(r, c, shape) == defect_region(mask)


def test_as_dict_is_json_and_bad_maps_are_refused():
    findings = measure_findings(blob_map((20, 30, 24, 20)), score=0.912345678, anomalous=True)
    record = json.loads(json.dumps(findings.as_dict()))
    assert record["region"] == "top left" and record["score"] == 0.912346 and set(record) == {
        "verdict", "region", "extent", "extent_bucket", "count", "severity", "texture_wide", "score", "kind",
        "kind_reason", "located", "unlocated_reason",
    }
    with pytest.raises(ValueError, match="H x W"):
        measure_findings(np.zeros((4, 4, 3)), 0.9, True)
    nan = blob_map((20, 30, 24, 20))
    nan[0, 0] = np.nan
    assert measure_findings(nan, 0.9, True).region == "top left"


def test_a_noisy_map_with_many_small_regions_finds_the_blob():
    """A hard case for the region search (many small regions beside one blob): the blob is found, repeatably.
    Its time per map is a benchmark's to measure, not a test's."""
    rng = np.random.default_rng(0)
    amap = (rng.random((SIZE, SIZE)) * 0.6).astype(np.float32)
    amap[50:90, 60:120] = 0.9
    first = measure_findings(amap, 0.9, True)
    assert first == measure_findings(amap, 0.9, True)
    assert first.region is not None


def test_an_inspection_record_holds_the_findings():
    from myriad.answers_text import compose_answer
    from myriad.inspection import InspectionResult

    findings = measure_findings(blob_map((20, 30, 24, 20)), score=0.9, anomalous=True)
    result = InspectionResult(
        image="part.png", expert="patchcore", mode="few_shot", score=0.9, threshold=0.5,
        expert_decision="anomalous", decision="anomalous", answer="Yes, there exists anomalies in the image.",
        timings_ms={"expert": 1.0, "lmm": 0.0, "total": 1.0}, findings=findings,
        grounded_answer=compose_answer(findings, "where"),
    )
    record = json.loads(json.dumps(result.as_record()))
    assert record["findings"]["region"] == "top left" and record["findings"]["count"] == 1
    assert record["grounded_answer"] == "Yes, there is an anomaly in the top left of the image."
    assert record["answer"] == "Yes, there exists anomalies in the image."  # the LMM's answer, untouched
