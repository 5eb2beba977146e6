"""``myriad check-backbone``: prove the embedded backbone holds real ImageNet weights."""

from __future__ import annotations

import click

# ImageNet-1k class indices used by the check.
CAT_CLASSES = range(281, 286)
ESPRESSO = 967


def classify_samples() -> dict[str, tuple[int, float]]:
    """Top-1 ImageNet class and probability for scikit-image's ``chelsea`` and ``coffee``."""
    import torch
    from skimage import data

    from myriad.backbone import EMBEDDED, load_timm_model
    from myriad.images import to_tensor

    model = load_timm_model(EMBEDDED)
    out = {}
    for name in ("chelsea", "coffee"):
        batch = to_tensor([getattr(data, name)()], 224, normalisation="half")
        with torch.inference_mode():
            probs = model(batch).softmax(-1)[0]
        top = int(probs.argmax())
        out[name] = (top, float(probs[top]))
    return out


@click.command("check-backbone")
def check_backbone_command() -> None:
    """Classify two bundled photos with the embedded EfficientNet-Lite0 (real weights check)."""
    results = classify_samples()
    chelsea, coffee = results["chelsea"], results["coffee"]
    ok = chelsea[0] in CAT_CLASSES and coffee[0] == ESPRESSO
    click.echo(f"chelsea -> ImageNet class {chelsea[0]} (p={chelsea[1]:.2f}; cats are 281-285)")
    click.echo(f"coffee  -> ImageNet class {coffee[0]} (p={coffee[1]:.2f}; espresso is 967)")
    click.echo("backbone OK: real ImageNet weights" if ok else "backbone FAILED: unexpected classes")
    if not ok:
        raise SystemExit(1)
