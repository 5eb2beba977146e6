"""Fused experts: members calibrated on their own, fused by tail evidence (default) or the maximum on the calibrated scale."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from pydantic import BaseModel

from myriad.errors import ConfigError, UnknownExpertError
from myriad.experts import Expert, Mode, Prediction
from myriad.fusion import FusedDetector, load_detector, make_detector, member_configs, member_names
from myriad.hookspecs import hookimpl
from myriad.testing import brightness_expert, run_cli


class _Config(BaseModel):
    mode: str = "one_class"


def _iqr(image):
    return float(np.percentile(image, 75) - np.percentile(image, 25))


class WholeExpert(Expert):
    """Toy texture-wide expert: score = |interquartile range - the normals'|, constant map (blind to small spots)."""

    Config = _Config

    def __init__(self, config):
        super().__init__(config, Mode.ONE_CLASS)

    def _fit(self, images):
        self.spread = float(np.mean([_iqr(i) for i in images]))

    def state_tensors(self):
        return {"spread": np.array([self.spread], np.float32)}

    def load_state_tensors(self, tensors, metadata):
        self.spread = float(tensors["spread"][0])

    def _predict(self, images):
        out = []
        for i in images:
            if min(i.shape[:2]) < 40:  # as a real expert whose pyramid needs room; it sees arrays, not files
                raise ConfigError(f"a {i.shape[0]} x {i.shape[1]} image is too small for whole-toy (40 px at least)")
            s = abs(_iqr(i) - self.spread)
            out.append(Prediction(np.full(i.shape[:2], s, np.float32), s))
        return out


@hookimpl
def register_experts(register):
    register("local-toy", factory=brightness_expert(), config=brightness_expert().Config, modes=["one_class"],
             description="toy local: |brightness - the normals' mean| per pixel")
    register("whole-toy", factory=WholeExpert, config=_Config, modes=["one_class"], description="toy whole")


@pytest.fixture
def toys(myriad_plugin):
    myriad_plugin(types.SimpleNamespace(register_experts=register_experts), name="fusion-toys")


def _images(n, seed, noise=8.0, size=48):
    rng = np.random.default_rng(seed)
    return [np.clip(120 + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8) for _ in range(n)]


def _save_all(folder, images, names=None):
    """Write ``images`` as PNGs into ``folder`` (made if missing), named ``names`` or 0, 1, ...; returns ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names or [str(i) for i in range(len(images))], images):
        Image.fromarray(image).save(folder / f"{name}.png")
    return folder


def _spot(image):
    out = image.copy()
    out[10:14, 20:24] = 200
    return out


def test_member_names_are_checked():
    with pytest.raises(UnknownExpertError, match="no-such-expert"):
        member_names("patchcore+no-such-expert")
    with pytest.raises(ConfigError, match="more than once"):
        member_names("patchcore+patchcore")
    with pytest.raises(ConfigError, match="empty member"):
        member_names("patchcore+")


def test_config_is_given_per_member(toys):
    assert member_configs("local-toy+whole-toy", {"local-toy": {"mode": "one_class"}}) == {
        "local-toy": {"mode": "one_class"},
        "whole-toy": {},
    }
    with pytest.raises(ConfigError, match="per member"):
        member_configs("local-toy+whole-toy", {"mode": "one_class"})
    with pytest.raises(ConfigError, match="must be an object"):
        member_configs("local-toy+whole-toy", {"local-toy": 3})


def test_max_rule_decision_is_any_member_and_members_are_reported(toys):
    detector = make_detector("local-toy+whole-toy", rule="max")
    assert isinstance(detector, FusedDetector) and detector.mode == "one_class"
    detector.fit(_images(12, seed=0))
    normal = _images(1, seed=50)[0]
    spotted = _spot(_images(1, seed=51)[0])
    noisy = _images(1, seed=52, noise=30.0)[0]
    dets = detector.detect([normal, spotted, noisy])
    assert [d.anomalous for d in dets] == [False, True, True]
    assert dets[1].members["local-toy"]["anomalous"] and not dets[1].members["whole-toy"]["anomalous"]
    assert dets[2].members["whole-toy"]["anomalous"]
    for det in dets:  # the fused score is the largest calibrated member score; 0.5 is the threshold
        assert det.score == pytest.approx(min(max(m["score"] for m in det.members.values()), 1.0), abs=1e-5)
        assert det.anomalous == (det.raw_score > 0.5)
        assert det.anomaly_map.shape == (48, 48) and det.anomaly_map.dtype == np.float32
    # the spot shows in the fused map where it is
    assert dets[1].anomaly_map[11, 21] > 0.5 > float(np.median(dets[1].anomaly_map))


def test_tail_rule_decides_on_the_rarest_member_score(toys):
    from myriad.tail_evidence import TailModel

    detector = make_detector("local-toy+whole-toy")
    detector.fit(_images(12, seed=0))
    assert detector.active_rule == "tail" and detector.calibration_record()["method"] == "fused-tail"
    assert detector.false_alarm_rate == pytest.approx(1 / 13)  # one statistic over 12 held-out normals
    normal = _images(1, seed=50)[0]
    spotted = _spot(_images(1, seed=51)[0])
    noisy = _images(1, seed=52, noise=30.0)[0]
    dets = detector.detect([normal, spotted, noisy])
    assert [d.anomalous for d in dets] == [False, True, True]
    for det in dets:
        evidence = max(
            float(TailModel.fit(m.calibrator.heldout).evidence(det.members[m.expert_name]["raw_score"]))
            for m in detector.members
        )
        assert det.raw_score == pytest.approx(detector.calibrator.scale(evidence), abs=1e-6)
        assert det.anomalous == (det.raw_score > 0.5) and det.false_alarm_rate == pytest.approx(1 / 13)
    assert dets[1].anomaly_map[11, 21] > 0.5 > float(np.median(dets[1].anomaly_map))


def test_tail_rule_keeps_the_best_members_ranking(toys):
    """A member with no signal on spots must not drown the member that sees them (the max rule does)."""
    from myriad.metrics import image_auroc as auroc

    normals, tests = _images(40, seed=5), _images(40, seed=6)
    spots = [_spot(image) for image in _images(40, seed=7)]
    labels = [0] * len(tests) + [1] * len(spots)
    aurocs = {}
    for rule in ("tail", "max"):
        detector = make_detector("local-toy+whole-toy", rule=rule).fit(normals)
        dets = detector.detect(tests + spots)
        aurocs[rule] = auroc(labels, [d.raw_score for d in dets])
        aurocs["local"] = auroc(labels, [d.members["local-toy"]["raw_score"] for d in dets])
    assert aurocs["tail"] >= aurocs["local"] - 0.01


def test_fused_rate_falls_back_to_the_max_rule_without_held_out_scores(toys):
    detector = make_detector("local-toy+whole-toy").fit(_images(2, seed=8))  # 2 normals: too few for the tail
    assert detector.active_rule == "max" and detector.calibrator is None


def test_false_alarm_rate_is_split_among_members(toys):
    detector = make_detector("local-toy+whole-toy").fit(_images(40, seed=1), false_alarm_rate=0.1)
    record = detector.calibration_record()
    methods = [m["method"] for m in record["members"].values()]
    assert all("false-alarm-rate=0.05" in m for m in methods)
    assert "false-alarm-rate=0.1" in record["fused"]["method"] and detector.false_alarm_rate == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="fusion rule"):
        make_detector("local-toy+whole-toy", rule="mean")


def test_save_and_load_give_the_same_detections(toys, tmp_path):
    detector = make_detector("local-toy+whole-toy").fit(_images(9, seed=2))
    test = [_spot(_images(1, seed=60)[0])] + _images(2, seed=61)
    before = detector.detect(test)
    detector.save(tmp_path / "fused")
    again = load_detector(tmp_path / "fused")
    assert isinstance(again, FusedDetector) and again.expert_name == "local-toy+whole-toy"
    for a, b in zip(before, again.detect(test)):  # the toys store their state as float32
        assert a.score == pytest.approx(b.score, rel=1e-5) and a.members.keys() == b.members.keys()
        for name, member in a.members.items():
            assert member["anomalous"] == b.members[name]["anomalous"]
            assert member["raw_score"] == pytest.approx(b.members[name]["raw_score"], rel=1e-5)


def test_inspector_and_cli_keep_each_member_score(toys, tmp_path, capsys):
    from myriad.inspection import Inspector

    normal_dir = _save_all(tmp_path / "good", _images(6, seed=3))
    test_dir = _save_all(tmp_path / "test", [_spot(_images(1, seed=70)[0])], names=["spot"])
    inspector = Inspector("local-toy+whole-toy", lmm="none").fit(sorted(normal_dir.iterdir()))
    (result,) = inspector.inspect([test_dir / "spot.png"])
    assert set(result.as_record()["members"]) == {"local-toy", "whole-toy"}
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        ["inspect", str(test_dir), "--normal", str(normal_dir), "--expert", "local-toy+whole-toy", "--lmm", "none", "-o", str(out)],
        capsys,
    )
    assert code == 0 and "local-toy" in stdout
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert record["members"]["local-toy"]["anomalous"] is True


def test_cli_refuses_a_fusion_with_a_missing_expert_and_writes_nothing(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(_images(1, seed=4)[0]).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["inspect", str(tmp_path / "a.png"), "--normal", str(tmp_path / "a.png"), "--expert", "patchcore+nope",
         "--lmm", "none", "-o", str(out)],
        capsys,
    )
    assert code not in (0, None) and "nope" in err and len(err.strip().splitlines()) == 1
    assert not (out / "results.jsonl").exists()


def test_fusion_member_in_a_mode_it_does_not_support_is_one_clear_error(toys):
    with pytest.raises(ConfigError, match="global"):
        make_detector("local-toy+global", {"global": {"mode": "zero_shot"}})


def test_cli_names_the_image_an_expert_cannot_take_and_leaves_output_untouched(toys, tmp_path, capsys):
    """Mixed sizes in one run, one image too small for a member: one line naming that file, nothing written."""
    normal_dir = _save_all(tmp_path / "good", _images(6, seed=3))
    test_dir = _save_all(tmp_path / "test", _images(3, seed=9), names=["ok0", "ok1", "ok2"])
    _save_all(test_dir, _images(1, seed=10, size=24), names=["tiny"])  # mixed sizes; 24 px < 40 px
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["inspect", str(test_dir), "--normal", str(normal_dir), "--expert", "local-toy+whole-toy", "--lmm", "none",
         "-o", str(out), "-b", "8"],
        capsys,
    )
    assert code not in (0, None) and len(err.strip().splitlines()) == 1, err
    assert "tiny.png" in err and "too small" in err and "ok0.png" not in err
    assert not out.exists()  # not even an empty folder, let alone overlays of the images before it
    existing = tmp_path / "kept"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    code, _, err = run_cli(
        ["inspect", str(test_dir), "--normal", str(normal_dir), "--expert", "local-toy+whole-toy", "--lmm", "none",
         "-o", str(existing)],
        capsys,
    )
    assert code not in (0, None) and sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_cli_refuses_a_fusion_member_in_a_mode_it_does_not_support_in_one_line(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(_images(1, seed=4)[0]).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["inspect", str(tmp_path / "a.png"), "--normal", str(tmp_path / "a.png"), "--expert", "patchcore+global",
         "--config", '{"global": {"mode": "zero_shot"}}', "--lmm", "none", "-o", str(out)],
        capsys,
    )
    assert code not in (0, None) and len(err.strip().splitlines()) == 1, err
    assert "'global'" in err and "'zero_shot' is not supported" in err and "one_class" in err
    assert not out.exists()


def _uniform_grey(half_width, seed):
    rng = np.random.default_rng(seed)
    return np.clip(120 + rng.uniform(-half_width, half_width, (48, 48, 1)).repeat(3, axis=2), 0, 255).astype(np.uint8)


def _varied_normals():
    """12 normals whose noise varies (sigma 6 to 10), so each member's evidence has a tail of some width."""
    return [_images(1, seed=100 + i, noise=float(n))[0] for i, n in enumerate(np.linspace(6, 10, 12))]


def test_findings_locate_a_local_defect_even_when_the_image_level_member_fires_too(toys):
    from myriad.inspection import Inspector

    inspector = Inspector("local-toy+whole-toy", lmm="none").fit(_varied_normals())
    spotted = _spot(_images(1, seed=70)[0])  # spot at rows 10-14, cols 20-24 of 48 px: the "top" cell
    # texture-wide: uniform grey-level noise of +-25, a larger interquartile range than the normals' (whole-toy
    # fires), but no pixel further from the mean than the normals' extremes (local-toy does not)
    wide = _uniform_grey(25, 71)
    # both fire on a slightly noisier image with the spot; the spot is the rarer event among the normals
    both = _spot(_images(1, seed=72, noise=12.0)[0])
    results = inspector.inspect([spotted, wide, both])
    fired = [{n for n, m in r.members.items() if m["anomalous"]} for r in results]
    assert fired[0] == {"local-toy"} and fired[2] == {"local-toy", "whole-toy"}
    assert results[0].findings.region == "top" and not results[0].findings.texture_wide
    assert fired[1] == {"whole-toy"}
    assert results[1].findings.region == "across the whole image" and results[1].findings.texture_wide
    evidence = {n: m["evidence"] for n, m in results[2].members.items()}
    assert evidence["local-toy"] > evidence["whole-toy"]
    # the fused map is above the threshold everywhere (whole-toy's constant map), yet the spot is found
    assert (results[2].anomaly_map > 0.5).all()
    assert results[2].findings.region == "top" and results[2].findings.count >= 1 and not results[2].findings.texture_wide


def test_a_texture_wide_change_that_also_lifts_a_local_members_map_is_texture_wide(toys):
    from myriad.inspection import Inspector

    inspector = Inspector("local-toy+whole-toy", lmm="none").fit(_varied_normals())
    # noise of +-40: a few pixels pass local-toy's threshold, but the spread change is far rarer among the normals
    (result,) = inspector.inspect([_uniform_grey(40, 73)])
    assert {n for n, m in result.members.items() if m["anomalous"]} == {"local-toy", "whole-toy"}
    assert result.members["whole-toy"]["evidence"] > result.members["local-toy"]["evidence"]
    assert result.findings.texture_wide and result.findings.region == "across the whole image"


def test_a_fusion_reports_the_rate_of_any_member_alarming(toys):
    """Max rule: members fitted on 9 normals alarm on about 1 in 10 normals each; the fusion on 1 - 0.9^2.
    Tail rule: one statistic; with 9 held-out normals (fewer than 10) the few-shot target."""
    from myriad.fusion import FEW_SHOT_RATE

    detector = make_detector("local-toy+whole-toy", rule="max").fit(_images(9, seed=2))
    assert detector.false_alarm_rate == pytest.approx(0.19)
    assert detector.detect(_images(1, seed=3))[0].false_alarm_rate == pytest.approx(0.19)
    detector = make_detector("local-toy+whole-toy").fit(_images(9, seed=2))
    assert detector.false_alarm_rate == pytest.approx(FEW_SHOT_RATE)
    assert detector.detect(_images(1, seed=3))[0].false_alarm_rate == pytest.approx(FEW_SHOT_RATE)


def test_few_references_use_the_members_tail_models(toys):
    import math

    from myriad.fusion import FEW_SHOT_RATE

    detector = make_detector("local-toy+whole-toy").fit(_images(4, seed=9))
    assert detector.active_rule == "tail" and detector.false_alarm_rate == pytest.approx(FEW_SHOT_RATE)
    assert detector.calibrator.threshold == pytest.approx(math.log10(2 / FEW_SHOT_RATE))
    normal, spotted = _images(1, seed=90)[0], _spot(_images(1, seed=91)[0])
    assert [d.anomalous for d in detector.detect([normal, spotted])] == [False, True]
    many = make_detector("local-toy+whole-toy").fit(_images(12, seed=9))
    assert many.false_alarm_rate == pytest.approx(1 / 13)  # the paper's rule from 10 normals on
