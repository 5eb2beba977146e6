"""The measured kind guess: each rule on an image built to show it, and 'cannot tell' on plain texture."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from myriad.defect_kinds import MEASURED_KINDS, estimate_kind
from myriad.findings import measure_findings

YY, XX = np.mgrid[:256, :256]


def texture(seed: int = 0) -> np.ndarray:
    """Grey noise texture (std 12 grey levels around 128), H x W x 3 float."""
    return np.clip(128 + np.random.default_rng(seed).normal(0, 12, (256, 256, 1)) * np.ones(3), 0, 255)


def map_of(mask: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """A smooth calibrated map peaking at 0.9 over ``mask`` (an expert's map is wider than the defect)."""
    smooth = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
    return (0.9 * smooth / smooth.max()).astype(np.float32)


def guess(image: np.ndarray, mask: np.ndarray, sigma: float = 4.0):
    return estimate_kind(np.clip(image, 0, 255).astype(np.uint8), map_of(mask, sigma))


def test_a_small_dark_spot_is_a_hole():
    image, spot = texture(), (YY - 60) ** 2 + (XX - 70) ** 2 < 9
    image[spot] = 30
    result = guess(image, spot)
    assert result.kind == "hole" and result.measurements["contrast"] <= -1.5 and "darker" in result.reason


def test_a_thin_line_is_a_scratch():
    image, line = texture(1), (np.abs(YY - 0.5 * XX - 40) < 1.2) & (XX > 60) & (XX < 200)
    image[line] += 40
    result = guess(image, line, sigma=2.0)
    assert result.kind == "scratch" and result.measurements["elongation"] >= 3


def test_a_small_bright_spot_is_a_foreign_particle():
    image, spot = texture(2), (YY - 200) ** 2 + (XX - 40) ** 2 < 12
    image[spot] = 230
    result = guess(image, spot)
    assert result.kind == "contamination / foreign particle" and "brighter" in result.reason


@pytest.mark.parametrize("tint", [(1.1, 0.95, 0.8), (0.93, 0.93, 0.93)], ids=["coloured", "faint"])
def test_a_coloured_or_faint_blob_is_a_stain(tint):
    image, blob = texture(3), (YY - 150) ** 2 + (XX - 150) ** 2 < 300
    image[blob] = image[blob] * np.array(tint)
    assert guess(image, blob).kind == "stain"


def test_a_faint_blurred_blob_is_a_texture_change_not_a_stain():
    image, blob = texture(4), (YY - 120) ** 2 + (XX - 90) ** 2 < 400
    blurred = ndimage.gaussian_filter(image, sigma=(2, 2, 0))
    image[blob] = blurred[blob]
    result = guess(image, blob)
    assert result.kind == "texture change" and result.measurements["fine_detail"] <= 0.6 and "smoother" in result.reason


@pytest.mark.parametrize("seed", range(3))
def test_a_large_blob_over_unchanged_texture_is_cannot_tell_not_a_stain(seed):
    """A map blob over 0.5 % of the image where neither tone nor sharpness changed: the map shows where, not what
    (the previous rule called every faint region over 0.5 % a stain)."""
    result = guess(texture(20 + seed), (YY - 128) ** 2 + (XX - 128) ** 2 < 400)
    assert result.kind is None and result.measurements["tone_shift"] < 0.5 and result.measurements["fine_detail"] > 0.6


@pytest.mark.parametrize("seed", range(5))
def test_plain_texture_under_a_small_blob_is_cannot_tell(seed):
    result = guess(texture(10 + seed), (YY - 100) ** 2 + (XX - 100) ** 2 < 20)
    assert result.kind is None and abs(result.measurements["contrast"]) < 1.5


def test_texture_wide_is_a_texture_change_and_flat_maps_cannot_tell():
    image = texture().astype(np.uint8)
    assert estimate_kind(image, np.full((256, 256), 0.9, np.float32), texture_wide=True).kind == "texture change"
    assert estimate_kind(image, np.full((256, 256), 0.3, np.float32)).kind is None
    with pytest.raises(ValueError, match="same height and width"):
        estimate_kind(image, np.zeros((128, 128), np.float32))


def test_grey_images_and_findings_carry_the_kind():
    grey, spot = texture()[..., 0], (YY - 60) ** 2 + (XX - 70) ** 2 < 9
    grey[spot] = 30
    assert guess(grey, spot).kind == "hole"
    findings = measure_findings(map_of(spot), 0.8, True, image=np.clip(grey, 0, 255).astype(np.uint8))
    assert findings.kind == "hole" and findings.kind_reason and findings.as_dict()["kind"] == "hole"
    assert measure_findings(map_of(spot), 0.8, True).kind is None  # no image: no kind
    assert measure_findings(map_of(spot), 0.2, False, image=grey).kind is None  # normal: no kind
    assert set(MEASURED_KINDS) >= {"hole", "scratch", "stain", "texture change"}


def test_every_rule_s_reason_reads_as_a_clean_answer():
    """Answers quote the reasons: each rule's wording must pass the degeneracy check (its words are in the vocabulary)."""
    from dataclasses import replace

    from myriad.answers_text import compose_answer, degeneracy_reasons

    image, spot = texture(), (YY - 60) ** 2 + (XX - 70) ** 2 < 9
    image[spot] = 30
    line = (np.abs(YY - 0.5 * XX - 40) < 1.2) & (XX > 60) & (XX < 200)
    bright = texture(2)
    bright[spot] = 230
    blob = (YY - 150) ** 2 + (XX - 150) ** 2 < 300
    tinted = texture(3)
    tinted[blob] = tinted[blob] * np.array((1.1, 0.95, 0.8))
    faint = texture(3)
    faint[blob] = faint[blob] * 0.93
    smooth = texture(4)
    smooth[blob] = ndimage.gaussian_filter(smooth, sigma=(2, 2, 0))[blob]
    guesses = [guess(image, spot), guess(texture(1), line, sigma=2.0), guess(bright, spot), guess(tinted, blob),
               guess(faint, blob), guess(smooth, blob), guess(texture(20), blob),
               guess(texture(10), (YY - 100) ** 2 + (XX - 100) ** 2 < 20)]
    assert [g.kind for g in guesses[4:7]] == ["stain", "texture change", None]  # rule 5's three outcomes
    guesses.append(estimate_kind(texture().astype(np.uint8), np.full((256, 256), 0.9, np.float32), texture_wide=True))
    located = measure_findings(map_of(spot), 0.8, True)
    for result in guesses:
        findings = replace(located, kind=result.kind, kind_reason=result.reason)
        for qtype in ("kind", "describe", "cause"):
            answer = compose_answer(findings, qtype)
            assert degeneracy_reasons(answer) == [], (result.reason, answer)
