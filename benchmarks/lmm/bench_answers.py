"""How true are Myriad's text answers? Held-out images, kinds and paraphrases, every question type (run by hand).

For every category of a realistic dev set (``myriad make-devset DATA --preset realistic``; its photos
and defect kinds are disjoint from Myriad-mini's training data) and every expert setting
(one-class on ``--normals`` training images, k-shot on the first k), an :class:`myriad.inspection.Inspector`
with the shipped LMM on the chosen answer route inspects each test image, then answers one held-out
paraphrase of every question type (``benchmarks/lmm/heldout_questions_v3.json``, never used to develop
the question classifier; the first two sets were read while developing it and joined its
development paraphrases) as a follow-up about it. Reported, per setting:

- **verdict accuracy** of the text answers (the Yes / No of the answer to a verdict question) beside
  the expert's thresholded accuracy on the same maps;
- **unknown verdicts** (an answer whose Yes / No the parse rule cannot read) and **degenerate**
  answers (:func:`myriad.answers_text.degeneracy_reasons`), over every answer;
- **region, extent bucket and count** of the answers to "where" / "how large" / "how many" on the
  defective images the answers call defective, against the masks (as ``bench_findings.py``); the
  answer must *state* the true region / bucket / count (checked in its text), so an answer that says
  the map does not locate the defect (the LMM's Yes where the expert saw none) counts as wrong; the
  region is also reported over the located answers only, with the number not located;
- **kind** per dev-set kind (the measured guess against ``bench_findings.EXPECTED_KIND``);
- **question-type accuracy** of the classifier on the held-out paraphrases;
- **time**: the expert and the LMM per image (one inspection), and per follow-up answer by type.

Writes ``OUT.json`` and ``OUT.md``::

    .venv/bin/python benchmarks/lmm/bench_answers.py --data DATA --out benchmarks/results/answers_realistic
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "detection"))

from bench_findings import EXPECTED_KIND, truth  # noqa: E402

QUESTION_FILE = HERE / "heldout_questions_v3.json"
TYPES = ("verdict", "where", "how_large", "how_many", "severity", "describe", "kind", "cause", "unknown")


def load_questions() -> dict[str, list[str]]:
    """The held-out paraphrases by question type."""
    data = json.loads(QUESTION_FILE.read_text())
    return {t: list(data[t]) for t in TYPES}


def setting_images(files: list[dict], setting: str, normals: int) -> list[str]:
    """The normal training images of one setting: ``one_class`` the first ``normals``, ``K_shot`` the first K."""
    train = [f["image"] for f in files if f["split"] == "train"]
    if setting == "one_class":
        return train[:normals]
    return train[: int(setting.split("_")[0])]


def run_category(data: Path, files: list[dict], setting: str, args: argparse.Namespace, model: Any, questions: dict) -> list[dict]:
    """One row per test image: labels, decisions, findings, and every question type's answer."""
    from myriad.answers_text import classify_question
    from myriad.inspection import Inspector

    inspector = Inspector(
        args.expert, json.loads(args.config), model=model, answers=args.answers, lmm="none" if model is None else "mini"
    )
    inspector.fit([data / p for p in setting_images(files, setting, args.normals)])
    tests = [f for f in files if f["split"] == "test"]
    rows = []
    for start in range(0, len(tests), 8):
        chunk = tests[start : start + 8]
        results = inspector.inspect([data / f["image"] for f in chunk])
        for offset, (record, result) in enumerate(zip(chunk, results)):
            index = start + offset
            answers = {}
            for qtype in TYPES:
                question = questions[qtype][index % len(questions[qtype])]
                began = time.perf_counter()
                answer, _ = inspector.follow_up(result, question)
                answers[qtype] = {
                    "question": question, "classified": classify_question(question), "answer": answer,
                    "ms": (time.perf_counter() - began) * 1000,
                }
            defective = record["defect"] != "good"
            rows.append({
                "image": record["image"], "defective": defective, "kind": record.get("kind"),
                "family": record.get("family"), "truth": truth(record, data) if defective else None,
                "expert_decision": result.expert_decision, "decision": result.decision,
                "findings": result.findings.as_dict(), "timings_ms": result.timings_ms, "answers": answers,
            })
    return rows


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 3) if hits else None


def _stated_extent(answer: str, bucket: str) -> bool:
    return f"({bucket})" in answer


def _stated_count(answer: str, count: int) -> bool:
    return f"I count {count} separate defective region" in answer


def summarise(rows: list[dict]) -> dict[str, Any]:
    """The metrics of one setting (see the module docstring)."""
    from myriad.answers_text import ONLY_ABOUT_THE_IMAGE, degeneracy_reasons
    from myriad.lmm.prompting import parse_answer

    def verdict_of(text: str) -> str:
        return parse_answer(text[len(ONLY_ABOUT_THE_IMAGE):] if text.startswith(ONLY_ABOUT_THE_IMAGE) else text)

    label = {True: "anomalous", False: "normal"}
    all_answers = [a["answer"] for r in rows for a in r["answers"].values()]
    called = [r for r in rows if r["defective"] and verdict_of(r["answers"]["where"]["answer"]) == "anomalous"]
    local = [r for r in called if not r["truth"]["texture_wide"]]
    by_kind: dict[str, list[bool]] = {}
    for r in called:
        by_kind.setdefault(r["kind"], []).append(r["findings"].get("kind") == EXPECTED_KIND.get(r["kind"]))
    typed = [a["classified"] == t for r in rows for t, a in r["answers"].items()]
    times = {t: round(sum(r["answers"][t]["ms"] for r in rows) / len(rows), 2) for t in TYPES}
    return {
        "images": len(rows),
        "defective": sum(r["defective"] for r in rows),
        "text_verdict_accuracy": _share([verdict_of(r["answers"]["verdict"]["answer"]) == label[r["defective"]] for r in rows]),
        "expert_accuracy": _share([r["expert_decision"] == label[r["defective"]] for r in rows]),
        "answers": len(all_answers),
        "unknown_verdicts": sum(verdict_of(a) == "unknown" for a in all_answers),
        "degenerate_answers": sum(bool(degeneracy_reasons(a)) for a in all_answers),
        "called_defective": len(called),
        "not_located": sum(not r["findings"].get("located", True) for r in called),
        "region_located": _share([r["truth"]["region"] in r["answers"]["where"]["answer"] for r in called if r["findings"].get("located", True)]),
        "region": _share([r["truth"]["region"] in r["answers"]["where"]["answer"] for r in called]),
        "region_local": _share([r["truth"]["region"] in r["answers"]["where"]["answer"] for r in local]),
        "local_called": len(local),
        "extent_bucket": _share([_stated_extent(r["answers"]["how_large"]["answer"], r["truth"]["extent_bucket"]) for r in called]),
        "count": _share([_stated_count(r["answers"]["how_many"]["answer"], r["truth"]["count"]) for r in called]),
        "kind_by_kind": {k: {"called": len(v), "kind": _share(v)} for k, v in sorted(by_kind.items())},
        "question_type_accuracy": _share(typed),
        "expert_ms_per_image": round(sum(r["timings_ms"]["expert"] for r in rows) / len(rows), 1),
        "lmm_verdict_ms_per_image": round(sum(r["timings_ms"]["lmm"] for r in rows) / len(rows), 1),
        "follow_up_ms_by_type": times,
    }


def markdown(report: dict) -> str:
    """Tables per setting."""
    lines = [
        "# Myriad's text answers on held-out images, kinds and paraphrases (realistic dev set)",
        "",
        f"Data: `{report['data']}`; expert `{report['expert']}` (config `{json.dumps(report['config'])}`); LMM `{report['lmm']}`, answer route `{report['answers']}`; "
        f"machine: {report['machine']}; {report['seconds']} s. Generated by `benchmarks/lmm/bench_answers.py`.",
        "Every test image gets one held-out paraphrase of every question type (`benchmarks/lmm/heldout_questions_v3.json`). "
        "Region / extent bucket / count: over defective images whose answer says Yes, the true value stated in the "
        "answer's text (3 x 3 cell of the mask or 'across the whole image'; small < 1 %, medium 1-10 %, large > 10 %; "
        "connected regions of the mask).",
        "",
        "| setting | images | text verdict acc. | expert acc. | unknown verdicts | degenerate | called defective | not located | region | region (located) | region (local) | extent bucket | count | question type acc. |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in report["settings"].items():
        lines.append(
            f"| {name} | {s['images']} | {s['text_verdict_accuracy']} | {s['expert_accuracy']} | {s['unknown_verdicts']} of "
            f"{s['answers']} | {s['degenerate_answers']} | {s['called_defective']} of {s['defective']} | {s['not_located']} | "
            f"{s['region']} | {s['region_located']} | "
            f"{s['region_local']} ({s['local_called']}) | {s['extent_bucket']} | {s['count']} | {s['question_type_accuracy']} |"
        )
    lines += ["", "## Kind (measured guess) per dev-set kind, over the defective images the answers call defective", ""]
    kinds = sorted({k for s in report["settings"].values() for k in s["kind_by_kind"]})
    lines += ["| setting | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for name, s in report["settings"].items():
        cells = [f"{s['kind_by_kind'][k]['kind']} ({s['kind_by_kind'][k]['called']})" if k in s["kind_by_kind"] else "-" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Time (ms)", "", "| setting | expert / image | LMM verdict / image | " + " | ".join(TYPES) + " |",
              "|---|---|---|" + "---|" * len(TYPES)]
    for name, s in report["settings"].items():
        lines.append(f"| {name} | {s['expert_ms_per_image']} | {s['lmm_verdict_ms_per_image']} | "
                     + " | ".join(str(s["follow_up_ms_by_type"][t]) for t in TYPES) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run every setting and category, then write the report."""
    import torch

    from myriad.defaults import DEFAULT_EXPERT
    from myriad.inspection import load_lmm
    from myriad.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--expert", default=DEFAULT_EXPERT)
    parser.add_argument("--config", default="{}", help="the expert's settings, JSON")
    parser.add_argument("--lmm", default="mini", help="'mini', a weights file, or 'none' (the expert's verdict)")
    parser.add_argument("--answers", default="facts", choices=("facts", "lmm"))
    parser.add_argument("--settings", default="one_class,4_shot,1_shot")
    parser.add_argument("--normals", type=int, default=100)
    parser.add_argument("--categories", default=None, help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_lmm(args.lmm)
    questions = load_questions()
    manifest = json.loads((args.data / "devset.json").read_text())
    categories = args.categories.split(",") if args.categories else sorted({f["category"] for f in manifest["files"]})
    started = time.perf_counter()
    settings, all_rows = {}, {}
    for setting in args.settings.split(","):
        rows: list[dict] = []
        for category in categories:
            files = [f for f in manifest["files"] if f["category"] == category]
            rows += run_category(args.data, files, setting, args, model, questions)
            print(f"{setting} {category}: {len(rows)} images, {time.perf_counter() - started:.0f} s", flush=True)
        settings[setting] = summarise(rows)
        all_rows[setting] = rows
        print(json.dumps({setting: {k: v for k, v in settings[setting].items() if k != "kind_by_kind"}}), flush=True)
    report = {
        "data": manifest.get("command", str(args.data)), "expert": args.expert, "config": json.loads(args.config), "lmm": args.lmm, "answers": args.answers, "normals": args.normals,
        "categories": categories, "machine": f"{platform.machine()}, {args.threads} threads",
        "seconds": round(time.perf_counter() - started, 1), "settings": settings, "rows": all_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(report, separators=(",", ":")))
    atomic_write_text(args.out.with_suffix(".md"), markdown(report))


if __name__ == "__main__":
    main()
