"""MuSc with the embedded EfficientNet-Lite0 (real ImageNet weights) finds synthetic defects on brick crops."""

from __future__ import annotations

import numpy as np
import pytest

from myriad.errors import MyriadError
from myriad.plugins import get_expert


@pytest.fixture(scope="module")
def predictions(bricks: tuple[list[np.ndarray], list[np.ndarray]]) -> list:
    images, _ = bricks
    expert = get_expert("musc", {"image_size": 192, "r_list": [1, 3], "progress": False})
    return expert.predict(images)


def test_defective_crops_score_higher(predictions: list) -> None:
    scores = np.array([p.score for p in predictions])
    assert scores[10:].min() > scores[:10].max(), scores  # every defect above every normal crop


def test_map_peaks_on_the_defect(bricks: tuple[list[np.ndarray], list[np.ndarray]], predictions: list) -> None:
    _, masks = bricks
    for pred, mask in zip(predictions[10:], masks[10:]):
        assert pred.anomaly_map.shape == mask.shape
        y, x = np.unravel_index(np.argmax(pred.anomaly_map), mask.shape)
        near = mask[max(0, y - 4) : y + 5, max(0, x - 4) : x + 5]  # within 4 px (one stride-8 cell at 128 px)
        assert near.any(), "the map's peak is not on the defect"
        assert pred.anomaly_map[mask].mean() > 1.5 * pred.anomaly_map[~mask].mean()


def test_rscin_keeps_the_ranking(bricks: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    from myriad_experts_musc.scoring import position_baseline

    images, _ = bricks
    expert = get_expert("musc", {"image_size": 128, "r_list": [3], "rscin_k": [], "progress": False})
    raw = expert.predict(images)
    scores = np.array([p.score for p in raw])
    assert scores[10:].min() > scores[:10].max()
    # no RsCIN: the score is the maximum of the (position-normalised) patch grid
    grids, _ = expert.extract(images)
    grid = position_baseline(expert.score_maps(grids), expert.config.position_baseline)
    assert np.allclose(scores, grid.flatten(1).amax(dim=1).numpy(), rtol=1e-5)
    for p in raw:  # the map upsampled to the image peaks at or just below the grid maximum
        assert float(p.anomaly_map.max()) <= p.score + 1e-5


def test_a_single_image_is_refused_clearly(bricks: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    expert = get_expert("musc", {"image_size": 64, "progress": False})
    assert expert.transductive and expert.min_batch == 2
    with pytest.raises(MyriadError, match="transductive.*at least 2 images"):
        expert.predict(bricks[0][:1])
    assert len(expert.predict(bricks[0][:2])) == 2  # two images is enough


def test_progress_bars(bricks: tuple[list[np.ndarray], list[np.ndarray]], capsys: pytest.CaptureFixture) -> None:
    get_expert("musc", {"image_size": 64, "r_list": [1]}).predict(bricks[0][:3])
    err = capsys.readouterr().err
    assert "MuSc mutual scoring" in err and "MuSc features" in err


def test_progress_goes_to_the_host_callback(
    bricks: tuple[list[np.ndarray], list[np.ndarray]], capsys: pytest.CaptureFixture
) -> None:
    calls: list[tuple[str, int, int]] = []
    expert = get_expert("musc", {"image_size": 64, "r_list": [1]})
    expert.progress_callback = lambda stage, done, total: calls.append((stage, done, total))
    expert.predict(bricks[0][:3])
    assert {c[0] for c in calls} == {"MuSc features", "MuSc mutual scoring"}
    for stage in ("MuSc features", "MuSc mutual scoring"):
        mine = [c for c in calls if c[0] == stage]
        assert mine[0][1] == 0 and mine[-1][1] == mine[-1][2] > 0
    assert "MuSc" not in capsys.readouterr().err  # the host's callback replaces the bars
