"""Profiles: ``myriad fit`` once, ``myriad inspect --profile`` without refitting; tampered or incompatible ones refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("myriad_experts_tutorial")

from myriad.testing import image_folders, run_cli  # noqa: E402

EXPERT = ["--expert", "colour-stats", "--config", '{"size": 32}']


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return image_folders(tmp_path, normal=12, good=3, defect=3, digits=2)


@pytest.fixture
def profile(folders, tmp_path, capsys) -> Path:
    normal, _ = folders
    out = tmp_path / "profile"
    code, stdout, stderr = run_cli(["fit", str(normal), *EXPERT, "--lmm", "none", "-o", str(out)], capsys)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote profile {out}: colour-stats fitted on 12 normal images, expected to flag about")
    return out


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def test_a_profile_inspects_as_fitting_does_in_a_new_process(folders, profile, tmp_path, capsys):
    normal, test = folders
    fitted = tmp_path / "fitted"
    code, _, stderr = run_cli(["inspect", str(test), "--normal", str(normal), *EXPERT, "--lmm", "none", "-o", str(fitted)], capsys)
    assert code == 0, stderr
    loaded = tmp_path / "loaded"
    run = subprocess.run(
        [sys.executable, "-m", "myriad", "inspect", str(test), "--profile", str(profile), "--lmm", "none", "-o", str(loaded)],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1].startswith(f"profile {profile}: colour-stats fitted on 12 normal images")
    a, b = _records(fitted), _records(loaded)
    assert [r["image"] for r in a] == [r["image"] for r in b]
    assert [r["decision"] for r in a] == [r["decision"] for r in b]
    assert np.allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-6)
    assert [r["false_alarm_rate"] for r in a] == [r["false_alarm_rate"] for r in b]


def test_profile_show_states_what_it_holds(profile, capsys):
    code, stdout, stderr = run_cli(["profile", "show", str(profile)], capsys)
    assert code == 0, stderr
    assert "every file matches its sha256" in stdout
    assert "expert: colour-stats (few_shot), fitted on 12 normal images" in stdout
    assert "member colour-stats: myriad-experts-tutorial" in stdout and "state format 1" in stdout
    assert "refit with: myriad fit" in stdout and "--expert colour-stats" in stdout
    record = json.loads(run_cli(["profile", "show", str(profile), "--json"], capsys)[1])
    assert record["format"] == "myriad-profile" and record["num_normals"] == 12
    assert record["members"][0]["name"] == "colour-stats" and "class" not in record["members"][0]


@pytest.mark.parametrize("damage, message", [
    ("change", "changed since the profile was written"),
    ("remove", "missing (listed in manifest.json)"),
    ("add", "not part of the profile"),
    ("newer", "is newer than this Myriad reads"),
    ("state_format", "state format 99"),
    ("manifest", "lists a path outside the profile"),
])
def test_tampered_and_incompatible_profiles_are_refused_in_one_line(profile, folders, tmp_path, capsys, damage, message):
    from myriad.profiles import MANIFEST_FILE, PROFILE_FILE, file_sha256

    state = next(profile.rglob("state.safetensors"), None) or next(profile.rglob("expert.json"))
    if damage == "change":
        data = bytearray(state.read_bytes())
        data[-1] ^= 1
        state.write_bytes(bytes(data))
    elif damage == "remove":
        state.unlink()
    elif damage == "add":
        (profile / "detector" / "extra.json").write_text("{}")
    else:
        record = json.loads((profile / PROFILE_FILE).read_text())
        manifest = json.loads((profile / MANIFEST_FILE).read_text())
        if damage == "newer":
            record["format_version"] = 99
        elif damage == "state_format":
            record["members"][0]["state_format"] = 99
        else:
            manifest["files"]["../outside.json"] = "0" * 64
        (profile / PROFILE_FILE).write_text(json.dumps(record))
        manifest["files"][PROFILE_FILE] = file_sha256(profile / PROFILE_FILE)  # a consistent manifest: the check is the version's
        (profile / MANIFEST_FILE).write_text(json.dumps(manifest))
    _, test = folders
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["inspect", str(test), "--profile", str(profile), "--lmm", "none", "-o", str(out)], capsys)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], stderr
    if damage in ("newer", "state_format"):
        assert "myriad fit" in lines[0]  # the command that refits it
    assert not out.exists()


def test_fit_refuses_to_overwrite_and_replaces_only_with_force(profile, folders, capsys):
    normal, _ = folders
    before = (profile / "profile.json").read_text()
    code, _, stderr = run_cli(["fit", str(normal), *EXPERT, "--lmm", "none", "-o", str(profile)], capsys)
    assert code != 0 and "already exists" in stderr and (profile / "profile.json").read_text() == before
    code, _, stderr = run_cli(["fit", str(normal), *EXPERT, "--lmm", "none", "-o", str(profile), "--force"], capsys)
    assert code == 0, stderr
    assert json.loads((profile / "profile.json").read_text())["created"] >= json.loads(before)["created"]
    assert not [p for p in profile.parent.iterdir() if p.name.startswith(".profile")]  # no staging folder left


def test_inspect_with_a_profile_refuses_fitting_options(profile, folders, tmp_path, capsys):
    normal, test = folders
    code, _, stderr = run_cli(["inspect", str(test), "--profile", str(profile), "--normal", str(normal), "--false-alarm-rate",
                               "0.01", "--lmm", "none", "-o", str(tmp_path / "o")], capsys)
    assert code != 0 and "--normal, --false-alarm-rate: set when the profile was fitted" in stderr


def test_a_profile_keeps_the_verdict_calibration_only_for_the_same_lmm(folders, tmp_path):
    """The verdict's threshold is a margin of one LMM's weights: another LMM falls back to the expert's decision."""
    torch = pytest.importorskip("torch")
    from myriad.inspection import Inspector
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config
    from myriad.profiles import load_profile, save_profile
    from myriad.verdict import VerdictCalibration

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = MyriadLMM(tiny_paper_config(len(tokenizer), max_new_tokens=2), tokenizer).eval()
    normal, _ = folders
    inspector = Inspector("colour-stats", {"size": 32}, model=model).fit(sorted(normal.glob("*.png")))
    calibrated = VerdictCalibration(rule="either", active="either", threshold=1.5, num_normals=12, added_rate=1 / 13)
    inspector.verdict = calibrated
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"pretend weights")
    inspector.lmm_source = str(weights)
    saved = save_profile(inspector, tmp_path / "p", 12)
    profile = load_profile(saved)
    assert profile.verdict == calibrated and profile.record["verdict_lmm"]["name"] == str(weights)

    same = Inspector("colour-stats", model=model)
    same.lmm_source = str(weights)
    assert same.use_profile(profile).verdict == calibrated
    weights.write_bytes(b"other weights")
    other = Inspector("colour-stats", model=model)
    other.lmm_source = str(weights)
    verdict = other.use_profile(profile).verdict
    assert verdict.active == "expert" and "other LMM weights" in verdict.fallback
    assert Inspector("colour-stats", model=model, verdict="lmm").use_profile(profile).verdict.active == "lmm"


def test_a_saved_expert_is_read_by_its_state_format_not_its_module_path(folders, tmp_path):
    """Moving a plugin's code never orphans a saved state; a changed state format is refused with 'fit it again'."""
    from myriad.errors import WeightsError
    from myriad.plugins import get_expert, get_expert_info

    normal, _ = folders
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(normal.glob("*.png"))]
    expert = get_expert("colour-stats", {"size": 32}).fit(images)
    saved = expert.save(tmp_path / "e")
    meta = json.loads((saved / "expert.json").read_text())
    assert meta["state_format"] == 1
    meta["class"] = "an_old_package.somewhere:ColourStats"  # the code moved since it was saved
    (saved / "expert.json").write_text(json.dumps(meta))
    cls = get_expert_info("colour-stats").load_factory()
    loaded = cls.load(saved)
    assert loaded.fitted and loaded.predict(images[:1])[0].score == pytest.approx(expert.predict(images[:1])[0].score)
    meta["state_format"] = 2
    (saved / "expert.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="saved in state format 2.*reads format 1; fit it again"):
        cls.load(saved)
