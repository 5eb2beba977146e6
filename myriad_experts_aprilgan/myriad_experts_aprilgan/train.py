"""Train AprilGAN's linear adapters (focal + dice), as the reference does, on images with masks.

The reference trains on the OTHER dataset's test split (VisA adapters are used on MVTec and
vice versa): CLIP stays frozen, only ``4 x Linear(1024 -> 768)`` learn; per tapped layer the
map ``softmax(upsample(100 * <adapted token, text>))`` gets a focal loss (gamma 2) on both
channels and a dice loss on the abnormal channel; Adam, lr 1e-3, betas (0.5, 0.999), batch 8.

Data: :class:`myriad.datasets.Category` objects (``read_mvtec`` / ``read_visa`` /
``read_folder`` with a mask folder; their test samples are used, the category name is the
prompt's class name), or ``(image, mask, class_name)`` triples of arrays.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from myriad.api import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from torch import nn

    from myriad.api import Category
    from myriad_experts_aprilgan.plugin import AprilGANConfig


def focal_loss(probs: "torch.Tensor", target: "torch.Tensor", gamma: float = 2.0, smooth: float = 1e-5) -> "torch.Tensor":
    """Focal loss of ``B x C x H x W`` probabilities against integer ``B x H x W`` targets (label smoothing ``smooth``)."""
    import torch

    classes = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, classes)
    one_hot = torch.zeros_like(p).scatter_(1, target.reshape(-1, 1).long(), 1.0)
    one_hot = one_hot.clamp(smooth / (classes - 1), 1.0 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(prob: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    """``1 - mean((2 |P T| + 1) / (|P| + |T| + 1))`` over the batch (soft dice, smoothing 1)."""
    p = prob.reshape(prob.shape[0], -1)
    t = target.reshape(target.shape[0], -1).float()
    return 1.0 - ((2.0 * (p * t).sum(1) + 1.0) / (p.sum(1) + t.sum(1) + 1.0)).mean()


def _samples(data: Iterable[Any]) -> list[tuple[Any, Any, str]]:
    """Normalise the data argument into (image or path, mask or Sample, class name) triples."""
    from myriad.api import Category

    out: list[tuple[Any, Any, str]] = []
    for item in data:
        if isinstance(item, Category):
            for sample in item.test:
                if sample.is_anomalous and sample.mask_path is None:
                    raise DatasetError(f"{sample.path}: anomalous training sample without a mask")
                out.append((sample.path, sample, item.name))
        else:
            image, mask, name = item
            out.append((image, mask, str(name)))
    if not out:
        raise DatasetError("train_adapters got no samples (a dataset with test images and masks is needed)")
    return out


def _load(image: Any, mask: Any) -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np

    from myriad.api import Sample, as_rgb, load_image, load_mask

    img = load_image(image) if isinstance(image, (str, Path)) else as_rgb(image)
    if isinstance(mask, Sample):
        m = load_mask(mask, img.shape[:2])
    else:
        m = np.asarray(mask) > 0.5 if mask is not None else np.zeros(img.shape[:2], dtype=bool)
    return img, m


def train_adapters(
    config: "AprilGANConfig | dict[str, Any]",
    data: "Iterable[Category] | Sequence[tuple[Any, Any, str]]",
    epochs: int = 3,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    seed: int = 111,
    output: str | Path | None = None,
    log: Any = print,
) -> "nn.Module":
    """Train the adapters of ``config``'s CLIP on ``data``; save ``{'trainable_linearlayer': ...}`` to ``output``.

    Returns the trained module (load it with ``adapter_weights=output`` or
    :meth:`AprilGANExpert.set_adapters`). The per-epoch mean loss is passed to ``log``.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from myriad.api import to_tensor, vit_tokens
    from myriad_experts_aprilgan.clip import build_adapters
    from myriad_experts_aprilgan.expert import AprilGANExpert
    from myriad_experts_aprilgan.plugin import AprilGANConfig

    cfg = AprilGANConfig.model_validate(config) if isinstance(config, dict) else config
    cfg = cfg.model_copy(update={"mode": "zero_shot", "zero_shot_branch": True})
    expert = AprilGANExpert(cfg)
    samples = _samples(data)
    model = expert.clip()
    device = torch.device(cfg.device)
    size = expert.image_size
    visual = model.visual
    torch.manual_seed(seed)
    adapters = build_adapters(visual.conv1.weight.shape[0], visual.proj.shape[1], len(cfg.layers)).to(device).train()
    optimiser = torch.optim.Adam(adapters.parameters(), lr=learning_rate, betas=(0.5, 0.999))
    taps = [layer - 1 for layer in cfg.layers]
    texts = {name: expert.text_features(name) for name in sorted({s[2] for s in samples})}
    order = list(range(len(samples)))
    rng = random.Random(seed)
    for epoch in range(epochs):
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), batch_size):
            batch = [samples[i] for i in order[start : start + batch_size]]
            loaded = [_load(image, mask) for image, mask, _ in batch]
            x = to_tensor([img for img, _ in loaded], size, "clip", interpolation="bicubic").to(device)
            masks = [torch.from_numpy(m.astype(np.float32))[None, None] for _, m in loaded]
            gt = torch.cat([F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False) for m in masks])
            gt = (gt[:, 0] > 0.5).float().to(device)
            text = torch.stack([texts[name] for _, _, name in batch])  # B x E x 2
            with torch.no_grad():
                tokens, _ = vit_tokens(visual, x, taps)
            loss = torch.zeros((), device=device)
            for fc, tok in zip(adapters.fc, tokens):
                adapted = F.normalize(fc(tok[:, 1:].float()), dim=-1)
                logits = 100.0 * torch.bmm(adapted, text)
                side = int(round(logits.shape[1] ** 0.5))
                logits = logits.transpose(1, 2).reshape(-1, 2, side, side)
                probs = torch.softmax(F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True), dim=1)
                loss = loss + focal_loss(probs, gt) + dice_loss(probs[:, 1], gt)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        if log is not None:
            log(f"aprilgan adapters: epoch {epoch + 1}/{epochs}, loss {np.mean(losses):.4f}")
    adapters.eval().requires_grad_(False)
    if output is not None:
        from myriad.api import atomic_path

        with atomic_path(output) as tmp:
            torch.save({"trainable_linearlayer": {k: v.cpu() for k, v in adapters.state_dict().items()}}, tmp)
    return adapters
