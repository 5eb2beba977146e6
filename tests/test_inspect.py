"""``myriad inspect`` and the Inspector API: records, overlays, skipped files, errors, LMM answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("myriad_experts_tutorial")

from myriad.testing import run_cli  # noqa: E402
from myriad.testing import image_folders, synthetic_images  # noqa: E402


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    normal, test = image_folders(tmp_path, normal=4, good=2, defect=2)
    (test / "broken.png").write_bytes(b"not an image")
    return normal, test




def test_inspect_expert_only_writes_records_and_overlays(folders, tmp_path, capsys):
    normal, test = folders
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["inspect", str(test), "--normal", str(normal), "--expert", "colour-stats", "--config", '{"size": 32}', "--lmm", "none", "-o", str(out)],
        capsys,
    )
    assert code == 0, stderr
    assert "warning:" in stderr and "broken.png: not a readable image" in stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    errors = [r for r in rows if "error" in r]  # an unreadable image is an error row; the run goes on
    assert len(errors) == 1 and errors[0]["image"].endswith("broken.png") and "not a readable image" in errors[0]["error"]
    assert "5 images: 2 flagged, 2 normal, 1 errors" in stdout
    records = [r for r in rows if "error" not in r]
    assert len(records) == 4
    keys = {"image", "expert", "mode", "score", "threshold", "expert_decision", "decision", "answer", "timings_ms", "overlay"}
    assert all(keys <= set(r) for r in records)
    assert all(r["mode"] == "few_shot" and r["threshold"] == 0.5 and "total" in r["timings_ms"] for r in records)
    assert [r["expert_decision"] for r in records] == ["normal", "normal", "anomalous", "anomalous"]
    for r in records:
        assert (out / r["overlay"]).is_file()
    assert len([line for line in stdout.splitlines() if line.startswith("t")]) == 4
    # how often the expert's alarms are false, in the records and in the run's last line (n normals: 1/(n+1))
    n = len(list(normal.glob("*.png")))
    assert all(r["false_alarm_rate"] == round(1 / (n + 1), 4) for r in records)
    assert stdout.splitlines()[-1].startswith(f"calibrated on {n} normal images, colour-stats is expected to flag about")


def test_overlay_and_shown_names_follow_the_folder_layout(folders, tmp_path, capsys):
    """MVTec-style trees (good/000.png, scratch/000.png, good/001.png): names relative to the common folder, one rule."""
    normal, _ = folders
    tree = tmp_path / "tree"
    images = synthetic_images(4, 48, seed=4)
    for sub, name, img in [("good", "000.png", images[0]), ("good", "001.png", images[1]), ("scratch", "000.png", images[2])]:
        (tree / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(tree / sub / name)
    Image.fromarray(images[3]).save(tree / "scratch" / "000.jpg")  # same stem, other suffix
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(
        ["inspect", str(tree), "--normal", str(normal), "--expert", "colour-stats", "--config", '{"size": 32}', "--lmm", "none", "-o", str(out)],
        capsys,
    )
    assert code == 0, stderr
    overlays = sorted(json.loads(line)["overlay"] for line in (out / "results.jsonl").read_text().splitlines())
    assert overlays == ["good_000_overlay.png", "good_001_overlay.png", "scratch_000_jpg_overlay.png", "scratch_000_png_overlay.png"]
    lines = stdout.splitlines()
    shown = sorted(line.split(":")[0] for line in lines
                   if ": " in line and "overlays" not in line and not line.startswith(" ") and " images: " not in line)
    assert shown == ["good/000.png", "good/001.png", "scratch/000.jpg", "scratch/000.png"]
    # every image's line is followed by the grounded answer measured on its map, verdict first
    grounded = [line for line in lines if line.startswith("  from the map: ")]
    assert len(grounded) == 4 and all(g.split(": ", 1)[1].startswith(("Yes", "No")) for g in grounded)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["answer_degenerate"] == [] and r["findings"]["verdict"] == r["expert_decision"] for r in records)


def test_inspect_errors_are_clear_and_nonzero(folders, tmp_path, capsys):
    normal, _ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["inspect", str(empty), "--normal", str(normal), "--expert", "colour-stats", "--lmm", "none", "-o", str(tmp_path / "o")], capsys)
    assert code != 0 and "no readable images" in err
    assert not (tmp_path / "o" / "results.jsonl").exists()
    code, _, err = run_cli(["inspect", str(normal), "--normal", str(normal), "--expert", "nope", "--lmm", "none"], capsys)
    assert code != 0 and "unknown expert 'nope'" in err and "Traceback" not in err


def test_missing_weights_for_a_preset(monkeypatch, folders, capsys, tmp_path):
    import myriad.lmm_loading as lmm_loading

    monkeypatch.setattr(lmm_loading, "SHIPPED_MINI_WEIGHTS", tmp_path / "missing.safetensors")
    normal, test = folders
    code, _, err = run_cli(["inspect", str(test), "--normal", str(normal), "--expert", "colour-stats", "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and "missing.safetensors" in err and "mini" in err


def test_inspector_with_a_tiny_lmm_answers_and_follows_up(folders):
    torch = pytest.importorskip("torch")
    from myriad.inspection import Inspector
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = MyriadLMM(tiny_paper_config(len(tokenizer), max_new_tokens=6), tokenizer).eval()
    normal, test = folders
    inspector = Inspector("colour-stats", {"size": 32}, model=model, answers="lmm").fit(sorted(normal.glob("*.png")))
    results = inspector.inspect([str(p) for p in sorted(test.glob("t*.png"))])
    assert len(results) == 4
    for r in results:
        assert isinstance(r.answer, str) and r.decision in ("anomalous", "normal", "unknown")
        assert r.timings_ms["lmm"] > 0 and r.answer_route == "lmm" and r.lmm_answer == r.answer
    answer, conversation = inspector.follow_up(results[0], "Describe the defect in detail.")
    assert isinstance(answer, str) and len(conversation.turns) == 1
    inspector.follow_up(results[0], "What could cause it?", conversation)
    assert len(conversation.turns) == 2


def test_the_facts_route_takes_the_lmm_verdict_and_states_the_map_facts(folders, monkeypatch):
    """Route ``facts`` (the default): the LMM answers the paper's question (its verdict wins, also against the
    expert), the answer states the map's facts for the question asked, and follow-ups agree without the LMM."""
    torch = pytest.importorskip("torch")
    from myriad.answers_text import ONLY_ABOUT_THE_IMAGE, degeneracy_reasons
    from myriad.inspection import Inspector
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.prompting import ANSWER_ANOMALOUS, parse_answer
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = MyriadLMM(tiny_paper_config(len(tokenizer), max_new_tokens=6), tokenizer).eval()
    asked = []

    rates = []

    def says_yes(images, maps, question=None, **generation):
        asked.append(question)
        rates.append(generation.get("false_alarm_rates"))
        return [ANSWER_ANOMALOUS] * len(images), torch.full((len(images),), 5.0)

    monkeypatch.setattr(model, "answer_with_margin", says_yes)
    normal, test = folders
    inspector = Inspector("colour-stats", {"size": 32}, model=model, verdict="lmm").fit(sorted(normal.glob("*.png")))
    assert inspector.answers == "facts"
    results = inspector.inspect([str(p) for p in sorted(test.glob("t*.png"))], ask="Where is the defect?")
    assert asked == [None]  # the question it was trained on, not the one asked
    # each map goes with how often its expert's alarms are false (1/(n+1) for n normals held out in calibration)
    assert rates == [[pytest.approx(1 / (len(list(normal.glob("*.png"))) + 1))] * len(results)]
    for r in results:
        assert r.decision == "anomalous" and r.findings.verdict == "anomalous" and r.lmm_answer == ANSWER_ANOMALOUS
        assert r.answer == r.grounded_answer and parse_answer(r.answer) == "anomalous" and not degeneracy_reasons(r.answer)
        if r.expert_decision == "anomalous":  # the expert flagged it: the answer names the map's place
            assert r.findings.located and (f"in the {r.findings.region} of the image" in r.answer or "across the whole image" in r.answer)
        else:  # the LMM's Yes alone: the map has no defect to locate, and the answer says so
            assert not r.findings.located and "does not locate it" in r.answer
        record = r.as_record()
        assert record["answer_route"] == "facts" and record["lmm_answer"] == ANSWER_ANOMALOUS
    normal_by_expert = [r for r in results if r.expert_decision == "normal"]
    assert normal_by_expert, "the toy test set has normal images; the LMM's Yes overrides the expert there"
    first = results[0]
    for question in ("How large is it?", "How many defects are there?", "Is it severe?", "Wie groß ist der Fehler?"):
        answer, conversation = inspector.follow_up(first, question)
        body = answer.removeprefix(ONLY_ABOUT_THE_IMAGE)
        assert conversation is None and parse_answer(body) == "anomalous" and not degeneracy_reasons(answer)
    assert len(asked) == 1  # follow-ups did not call the LMM
    expert_only = Inspector("colour-stats", {"size": 32}, lmm="none").fit(sorted(normal.glob("*.png")))
    (plain,) = expert_only.inspect([str(sorted(test.glob("t*.png"))[0])], ask="Where is the defect?")
    answer, _ = expert_only.follow_up(plain, "How many defects are there?")
    assert answer.startswith("Yes" if plain.decision == "anomalous" else "No") and plain.answer == ""
    from myriad.errors import ConfigError

    with pytest.raises(ConfigError, match="answers='poem'"):
        Inspector("colour-stats", lmm="none", answers="poem")


def test_the_lmm_route_takes_no_verdict_from_a_junk_answer(folders, monkeypatch):
    """Route ``lmm``: the verdict is parsed from the LMM's own text, except from a degenerate text ("No, no, no."),
    which is withheld: the expert's decision stands there. An honest answer's verdict still wins over the expert's."""
    torch = pytest.importorskip("torch")
    from myriad.inspection import Inspector
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.prompting import ANSWER_NORMAL
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = MyriadLMM(tiny_paper_config(len(tokenizer), max_new_tokens=6), tokenizer).eval()
    reply = {"text": "No, no, no."}
    monkeypatch.setattr(model, "answer_with_margin", lambda images, maps, question=None, **generation: (
        [reply["text"]] * len(images), torch.zeros(len(images))))
    normal, test = folders
    inspector = Inspector("colour-stats", {"size": 32}, model=model, answers="lmm").fit(sorted(normal.glob("*.png")))
    images = [str(p) for p in sorted(test.glob("t*.png"))]
    junk = inspector.inspect(images, ask="Describe the defect.")
    assert any(r.expert_decision == "anomalous" for r in junk)
    assert all(r.decision == r.expert_decision and r.answer_problems == ["repeated n-grams"] for r in junk)
    reply["text"] = ANSWER_NORMAL
    honest = inspector.inspect(images)
    assert all(r.decision == "normal" and not r.answer_problems for r in honest)


def test_zero_shot_expert_without_normals_warns_that_it_is_uncalibrated(folders, tmp_path, capsys, myriad_plugin):
    """A zero-shot expert inspects without --normal, but nothing calibrates it then: the CLI says so."""
    from myriad.testing import constant_expert_plugin

    myriad_plugin(constant_expert_plugin("flat"), name="flat-plugin")
    normal, test = folders
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["inspect", str(test), "--expert", "flat", "--lmm", "none", "-o", str(out)], capsys)
    assert code == 0, stderr
    assert "no --normal images" in stderr and "not calibrated" in stderr
    assert stdout.count("NORMAL") == 4  # raw 0.25 < 0.5
    code, _, stderr = run_cli(["inspect", str(test), "--normal", str(normal), "--expert", "flat", "--lmm", "none", "-o", str(out)], capsys)
    assert code == 0 and "not calibrated" not in stderr


def test_cli_withholds_a_degenerate_lmm_answer_and_prints_the_grounded_one(monkeypatch, folders, capsys, tmp_path):
    torch = pytest.importorskip("torch")
    import myriad.inspection as inspection
    from myriad.lmm.model import MyriadLMM
    from myriad.lmm.tiny import build_tiny_tokenizer, tiny_paper_config

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = MyriadLMM(tiny_paper_config(len(tokenizer), max_new_tokens=6), tokenizer).eval()  # random weights: junk text
    monkeypatch.setattr(inspection, "load_lmm", lambda *args, **kwargs: model)
    normal, test = folders
    out = tmp_path / "o"
    code, stdout, stderr = run_cli(
        ["inspect", str(test), "--normal", str(normal), "--expert", "colour-stats", "--config", '{"size": 32}',
         "--ask", "Where is the defect?", "-o", str(out), "--answers", "lmm"],
        capsys,
    )
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    records = [r for r in records if "error" not in r]  # broken.png is an error row
    assert records and all(r["answer_degenerate"] for r in records)  # the random model's text fails the check
    for r in records:
        assert r["answer"] not in stdout  # never shown
    assert stdout.count("Myriad's answer withheld") == len(records)
    assert stdout.count("  from the map: ") == len(records)
    # the default route: the random model gives no verdict, so the expert's stands; the answer is the map's facts
    code, stdout, stderr = run_cli(
        ["inspect", str(test), "--normal", str(normal), "--expert", "colour-stats", "--config", '{"size": 32}',
         "--ask", "Where is the defect?", "-o", str(out)],
        capsys,
    )
    assert code == 0, stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    records = [r for r in records if "error" not in r]
    for r in records:
        assert r["answer"] == r["grounded_answer"] and not r["answer_degenerate"] and r["answer_route"] == "facts"
        assert r["decision"] == r["expert_decision"] and f'"{r["answer"]}"' in stdout
    assert "withheld" not in stdout and "from the map" not in stdout


def test_cli_names_the_file_of_another_size_in_a_tiled_run(tmp_path, capsys):
    """Tiled scoring needs one size: an odd normal image stops the fit, named, nothing written; an odd test image is
    an error row naming it, and the others are inspected."""
    rng = np.random.default_rng(0)

    def save(path: Path, side: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(90, 160, (side, side, 3), dtype=np.uint8)).save(path)

    for i in range(4):
        save(tmp_path / "good" / f"{i}.png", 400)
    save(tmp_path / "good" / "odd.png", 300)
    save(tmp_path / "test" / "a.png", 400)
    args = ["--expert", "colour-stats", "--config", '{"size": 32}', "--lmm", "none", "-o", str(tmp_path / "out")]
    code, _, err = run_cli(["inspect", str(tmp_path / "test"), "--normal", str(tmp_path / "good"), *args], capsys)
    assert code not in (0, None) and len(err.strip().splitlines()) == 1
    assert "odd.png" in err and "300 x 300" in err and "4 of 400 x 400" in err
    (tmp_path / "good" / "odd.png").unlink()
    save(tmp_path / "test" / "b.png", 300)
    code, _, err = run_cli(["inspect", str(tmp_path / "test"), "--normal", str(tmp_path / "good"), *args], capsys)
    assert code == 0 and len(err.strip().splitlines()) == 1
    assert "b.png" in err and "a.png" not in err and "fitted on 400 x 400" in err
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [("error" in r, Path(r["image"]).name) for r in rows] == [(False, "a.png"), (True, "b.png")]
