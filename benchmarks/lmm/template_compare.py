"""Which prompt template trains ``mini`` better: the reference ``###Human/###Assistant`` or SmolLM2's chat template?

A short, controlled comparison (not a test): the same seed, data, initial weights and
optimiser for both templates; only ``config.template`` differs. The task is the
binary one Myriad trains on: an image with an anomaly map (a Gaussian blob for
"anomalous", faint noise for "normal") -> the reference Yes/No answer.

Reported per template: loss curve, held-out answer loss, held-out accuracy by
``classify`` (the parse rule on greedy text) and seconds per step.

    .venv/bin/python benchmarks/lmm/template_compare.py [--steps 30] [--batch 4] [--threads 2] [--templates reference chat]

(Run ``--templates reference`` and ``--templates chat`` as two 1-thread processes with
different ``--out`` to use both cores.)

Writes ``benchmarks/results/lmm_template_compare.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_mini.py: spinning threads on a shared CPU


def make_samples(n: int, seed: int):
    """``n`` (pixels, map, answer, label) samples; half anomalous (blob map), half normal."""
    import numpy as np
    import torch
    from skimage import data

    from myriad.lmm.prompting import ANSWER_ANOMALOUS, ANSWER_NORMAL

    rng = np.random.default_rng(seed)
    sources = [data.coffee(), data.chelsea(), data.rocket(), data.astronaut()]
    samples = []
    for i in range(n):
        anomalous = i % 2 == 0
        image = sources[int(rng.integers(len(sources)))]
        y, x = int(rng.integers(0, image.shape[0] - 200)), int(rng.integers(0, image.shape[1] - 200))
        crop = image[y : y + 200, x : x + 200]
        amap = 0.05 * rng.random((224, 224))
        if anomalous:
            cy, cx = rng.integers(30, 194, size=2)
            yy, xx = np.mgrid[0:224, 0:224]
            amap = amap + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(8, 25) ** 2))
        samples.append(
            (crop, torch.from_numpy(amap.astype(np.float32)), ANSWER_ANOMALOUS if anomalous else ANSWER_NORMAL, "anomalous" if anomalous else "normal")
        )
    return samples


def run_template(template: str, steps: int, batch: int, lr: float, train, held_out, seed: int) -> dict:
    import torch

    from myriad.lmm.config import mini_config
    from myriad.lmm.model import MyriadLMM

    torch.manual_seed(seed)
    model = MyriadLMM.mini(mini_config(template=template))
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    pixels_all = model.preprocess([s[0] for s in train])
    maps_all = torch.stack([s[1] for s in train])
    losses, seconds = [], []
    model.train()
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randperm(len(train), generator=g)[:batch]
        start = time.perf_counter()
        out = model(pixels_all[idx], maps_all[idx], [train[int(i)][2] for i in idx])
        optimiser.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        seconds.append(time.perf_counter() - start)
        losses.append(round(float(out.loss), 4))
        print(f"[{template}] step {step + 1}/{steps} loss {losses[-1]:.4f} ({seconds[-1]:.1f} s)", flush=True)
    model.eval()
    pixels = model.preprocess([s[0] for s in held_out])
    maps = torch.stack([s[1] for s in held_out])
    with torch.no_grad():
        eval_losses = []
        for i in range(0, len(held_out), batch):
            out = model(pixels[i : i + batch], maps[i : i + batch], [s[2] for s in held_out[i : i + batch]])
            eval_losses.append(float(out.loss))
        predictions = []
        for i in range(0, len(held_out), batch):
            predictions += model.classify(pixels[i : i + batch], maps[i : i + batch])
        sample = model.generate(pixels[:2], maps[:2], max_new_tokens=16)
    truth = [s[3] for s in held_out]
    correct = sum(p == t for p, t in zip(predictions, truth))
    return {
        "template": template,
        "losses": losses,
        "first_loss": losses[0],
        "last5_mean_loss": round(sum(losses[-5:]) / min(5, len(losses)), 4),
        "held_out_loss": round(sum(eval_losses) / len(eval_losses), 4),
        "held_out_accuracy": round(correct / len(truth), 4),
        "unknown_answers": predictions.count("unknown"),
        "seconds_per_step": round(sum(seconds) / len(seconds), 2),
        "sample_answers": sample,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=64)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--templates", nargs="+", default=["reference", "chat"], choices=["reference", "chat"])
    parser.add_argument("--out", type=Path, default=RESULTS / "lmm_template_compare")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    train = make_samples(args.train_samples, args.seed)
    held_out = make_samples(args.held_out, args.seed + 1)
    results = {
        "settings": vars(args) | {"out": str(args.out), "load_average_at_start": os.getloadavg(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "runs": [run_template(t, args.steps, args.batch, args.lr, train, held_out, args.seed) for t in args.templates],
    }
    results["settings"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    lines = [
        "# mini: reference vs chat template",
        "",
        f"{args.steps} steps, batch {args.batch}, AdamW lr {args.lr}, {args.train_samples} training / {args.held_out} held-out samples, seed {args.seed}, {args.threads} thread(s).",
        "",
        "| template | first loss | last-5 mean loss | held-out loss | held-out accuracy | unknown | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['template']} | {r['first_loss']} | {r['last5_mean_loss']} | {r['held_out_loss']} | "
            f"{r['held_out_accuracy']} | {r['unknown_answers']} | {r['seconds_per_step']} |"
        )
    lines += ["", "Sample answers after training:", ""]
    for r in results["runs"]:
        lines.append(f"- {r['template']}: {r['sample_answers']}")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
