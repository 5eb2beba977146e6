"""How PatchCore's image score is taken from its patch z-scores, and how the fused members are combined.

One default fit per category (``patchcore+global``, one-class on up to 200 normals): PatchCore's held-out
(leave-one-out) and test z-grids and ``global``'s held-out and test scores are saved to ``--cache``
(``<category>.npz`` + ``.json``; an existing cache is reused). Then, offline on those scores:

- image-score reductions: the raw maximum (``s0``), the maximum after a Gaussian of sigma ``sX`` grid cells
  (``score_sigma``), the mean of the top k patches (``topK``); PatchCore alone and fused with ``global`` by the
  default tail-evidence rule (evidence = ``-log10`` tail probability under the held-out normals, fused = the
  larger), calibrated at the paper's threshold (the largest held-out normal's fused evidence, each judged against
  the others);
- fusion rules at the default sigma: the maximum of the evidence with ``global``'s shifted by ``d`` (``max
  d=+0.3``: ``global`` needs 0.3 more evidence), their sum, and ``log10(10^a + 10^b)``.

Per family: image AUROC, detection at 1 % false alarms on the test normals, balanced accuracy and false alarms at
the calibrated threshold; per kind: AUROC.

    python benchmarks/detection/bench_score_reduction.py --data DATA --cache DIR --out benchmarks/results/NAME
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

REDUCTIONS = ("s0", "s0.5", "s1", "s1.5", "s2", "top4")
SHIFTS = (-0.6, -0.3, 0.0, 0.3, 0.6)


def collect(data: Path, cache: Path, normals: int) -> None:
    """Fit the default per category and save PatchCore's z-grids and global's scores (held-out and test)."""
    import numpy as np

    from myriad.calibration import fit_calibrated
    from myriad.datasets import read_mvtec
    from myriad.expert_settings import resolve_config
    from myriad.images import load_image
    from myriad.plugins import get_expert
    from myriad_experts_patchcore.expert import PatchCoreExpert

    manifest = json.loads((data / "devset.json").read_text()) if (data / "devset.json").is_file() else {"files": []}
    index = {"/".join(Path(f["image"]).parts[-4:]): f for f in manifest["files"]}
    captured: list[Any] = []
    original = PatchCoreExpert._grid_predictions

    def grab(self: Any, chunk: Any, grids: Any, weights: Any = None) -> Any:
        z = self.baseline.apply(grids) if self.baseline is not None else grids
        captured.append(np.asarray(z, dtype=np.float32))
        return original(self, chunk, grids, weights)

    PatchCoreExpert._grid_predictions = grab  # type: ignore[method-assign]
    cache.mkdir(parents=True, exist_ok=True)
    for category in read_mvtec(data):
        if (cache / f"{category.name}.npz").is_file():
            continue
        started = time.perf_counter()
        train = [load_image(s.path) for s in category.train[:normals]]
        config = resolve_config("patchcore+global", {}, num_normal=len(train))
        patchcore = get_expert("patchcore", config["patchcore"]).fit(train)
        captured.clear()
        patchcore.heldout_predictions(train)
        held = np.concatenate(captured)
        glob, glob_calibration = fit_calibrated(lambda: get_expert("global", config["global"]), train)
        captured.clear()
        glob_scores: list[float] = []
        meta = []
        for start in range(0, len(category.test), 16):
            chunk = category.test[start : start + 16]
            images = [load_image(s.path) for s in chunk]
            patchcore.predict(images)
            glob_scores += [p.score for p in glob.predict(images)]
            for sample in chunk:
                record = index.get("/".join(Path(sample.path).parts[-4:]), {})
                meta.append({"label": int(sample.label), "kind": sample.defect,
                             "family": (record.get("family") or "all") if sample.label else "good"})
        np.savez_compressed(cache / f"{category.name}.npz", held=held, test=np.concatenate(captured),
                            gheld=np.asarray(glob_calibration.heldout), gtest=np.asarray(glob_scores))
        (cache / f"{category.name}.json").write_text(json.dumps(meta))
        print(f"{category.name}: {held.shape[0]} held-out, {len(meta)} test ({time.perf_counter() - started:.0f} s)", flush=True)
    PatchCoreExpert._grid_predictions = original  # type: ignore[method-assign]


def reduce(grids: Any, how: str) -> Any:
    """Image scores of ``N x h x w`` z-grids by one reduction (``s<sigma>`` or ``top<k>``)."""
    import numpy as np
    import torch

    from myriad_experts_patchcore.scoring import gaussian_blur

    if how.startswith("top"):
        return np.sort(grids.reshape(len(grids), -1), axis=1)[:, -int(how[3:]) :].mean(axis=1)
    sigma = float(how[1:])
    if sigma == 0:
        return grids.reshape(len(grids), -1).max(axis=1)
    return gaussian_blur(torch.from_numpy(grids), sigma).flatten(1).max(dim=1).values.numpy()


def evaluate(cache: Path, default_sigma: float = 1.0) -> dict:
    """Per variant and family: AUROC, det@1 %, calibrated balanced accuracy and false alarms (means over categories)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from myriad.tail_evidence import TailModel, heldout_evidence

    per: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    kinds: dict[tuple[str, str], list[float]] = {}

    def record(name: str, labels: Any, families: Any, kind: Any, scores: Any, decisions: Any) -> None:
        for family in sorted(set(families[labels == 1])):
            keep = (labels == 0) | (families == family)
            y, s, d = labels[keep], scores[keep], decisions[keep]
            cut = np.quantile(s[y == 0], 0.99, method="higher")
            tpr, fpr = float(d[y == 1].mean()), float(d[y == 0].mean())
            per.setdefault((name, family), []).append(
                (roc_auc_score(y, s), float((s[y == 1] > cut).mean()), 0.5 * (tpr + 1 - fpr), fpr))
        for k in sorted(set(kind[labels == 1])):
            keep = (labels == 0) | (kind == k)
            kinds.setdefault((name, k), []).append(roc_auc_score(labels[keep], scores[keep]))

    for path in sorted(cache.glob("*.npz")):
        z = np.load(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        labels = np.array([m["label"] for m in meta])
        families = np.array([m["family"] for m in meta])
        kind = np.array([str(m["kind"]) for m in meta])
        g_held, g_test = z["gheld"], z["gtest"]
        g_tail = TailModel.fit(g_held)
        for how in REDUCTIONS:
            p_held, p_test = reduce(z["held"], how), reduce(z["test"], how)
            p_tail = TailModel.fit(p_held)
            alone = p_tail.evidence(p_test)
            record(f"PatchCore alone, {how}", labels, families, kind, alone, p_test > p_held.max())
            fused = np.maximum(alone, g_tail.evidence(g_test))
            record(f"fused, {how}", labels, families, kind, fused, fused > heldout_evidence([p_held, g_held]).max())
        p_held, p_test = reduce(z["held"], f"s{default_sigma:g}"), reduce(z["test"], f"s{default_sigma:g}")
        ep, eg = TailModel.fit(p_held).evidence(p_test), g_tail.evidence(g_test)
        for shift in SHIFTS:
            record(f"fusion max, global shifted {shift:+.1f}", labels, families, kind, np.maximum(ep, eg - shift), np.zeros_like(ep, bool))
        record("fusion sum", labels, families, kind, ep + eg, np.zeros_like(ep, bool))
        record("fusion log10(10^a + 10^b)", labels, families, kind, np.logaddexp(ep * np.log(10), eg * np.log(10)), np.zeros_like(ep, bool))
        record("global alone", labels, families, kind, g_tail.evidence(g_test), g_test > g_held.max())
    table = {f"{n} | {f}": dict(zip(("auroc", "det_at_1", "balanced", "false_alarms"), np.mean(v, axis=0).tolist()))
             for (n, f), v in per.items()}
    table_kinds = {f"{n} | {k}": float(np.mean(v)) for (n, k), v in kinds.items()}
    return {"families": table, "kinds": table_kinds, "categories": sorted(p.stem for p in cache.glob("*.npz"))}


def render(name: str, result: dict) -> str:
    """Markdown tables of :func:`evaluate`'s result."""
    lines = [f"# Image-score reductions and fusion rules: {name}", "",
             "Means over categories " + ", ".join(result["categories"]) + ". Calibrated columns: the paper's threshold "
             "(largest held-out normal); fusion-rule rows rank only (no calibration).", "",
             "| variant | family | AUROC | det@1% | balanced | false alarms |", "|---|---|---:|---:|---:|---:|"]
    for key, v in result["families"].items():
        variant, family = key.split(" | ")
        calibrated = not variant.startswith("fusion ")
        lines.append(f"| {variant} | {family} | {v['auroc']:.3f} | {v['det_at_1']:.3f} | "
                     + (f"{v['balanced']:.3f} | {v['false_alarms']:.3f} |" if calibrated else "- | - |"))
    kinds = sorted({k.split(" | ")[1] for k in result["kinds"]})
    variants = list(dict.fromkeys(k.split(" | ")[0] for k in result["kinds"]))
    lines += ["", "AUROC per kind:", "", "| variant | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for variant in variants:
        lines.append(f"| {variant} | " + " | ".join(
            f"{result['kinds'].get(f'{variant} | {k}', float('nan')):.3f}" for k in kinds) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--cache", required=True, type=Path, help="folder for the per-category scores (reused)")
    parser.add_argument("--out", required=True, type=Path, help="output path without extension")
    parser.add_argument("--normals", type=int, default=200)
    args = parser.parse_args()
    collect(args.data, args.cache, args.normals)
    result = evaluate(args.cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    Path(f"{args.out}.md").write_text(render(args.data.name, result))
    print(render(args.data.name, result))


if __name__ == "__main__":
    main()
