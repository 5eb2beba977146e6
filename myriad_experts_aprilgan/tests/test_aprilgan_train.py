"""Training AprilGAN's adapters (focal + dice) on a folder with masks, then loading them strictly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from myriad.plugins import get_expert
from myriad_experts_aprilgan.train import dice_loss, focal_loss, train_adapters


def test_losses() -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    perfect = torch.stack([1 - target.float(), target.float()], dim=1)
    assert float(focal_loss(perfect, target)) < 1e-6
    assert float(dice_loss(perfect[:, 1], target)) < 1e-6
    wrong = 1 - perfect
    assert float(focal_loss(wrong, target)) > 5 and float(dice_loss(wrong[:, 1], target)) > 0.5
    half = torch.full((1, 2, 2, 2), 0.5)
    assert abs(float(focal_loss(half, target)) - 0.25 * -np.log(0.5 + 1e-5)) < 1e-3  # (1 - pt)^2 log pt


@pytest.fixture
def folder(tmp_path: Path, kit) -> Path:
    """normal/, abnormal/ and masks/ (``<stem>_mask.png``) of brick crops: a layout ``read_folder`` reads."""
    from PIL import Image

    images, masks = kit.brick_crops(2, 3, size=64, seed=2)
    for sub in ("normal", "abnormal", "masks"):
        (tmp_path / sub).mkdir()
    for i, image in enumerate(images[:2]):
        Image.fromarray(image).save(tmp_path / "normal" / f"n{i}.png")
    for i, (image, mask) in enumerate(zip(images[2:], masks[2:])):
        Image.fromarray(image).save(tmp_path / "abnormal" / f"a{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"a{i}_mask.png")
    return tmp_path


def test_train_adapters_on_a_folder_with_masks(kit, tiny_weights, folder: Path, tmp_path: Path) -> None:
    from myriad.datasets import read_folder

    category = read_folder(folder / "normal", folder / "abnormal", folder / "masks", name="brick")
    config = kit.tiny_config(tiny_weights, adapter_weights=None, class_name="brick")
    log: list[str] = []
    out = tmp_path / "my_adapters.pth"
    train_adapters(config, [category], epochs=6, batch_size=3, output=out, log=log.append)
    losses = [float(line.rsplit(" ", 1)[1]) for line in log]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    saved = torch.load(out, weights_only=True)
    assert sorted(saved) == ["trainable_linearlayer"]
    assert sorted(saved["trainable_linearlayer"]) == sorted(f"fc.{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    expert = get_expert("aprilgan", {**config, "adapter_weights": str(out)})
    preds = expert.predict(category_images(category))
    assert len(preds) == 5 and all(np.isfinite(p.anomaly_map).all() for p in preds)


def category_images(category) -> list:
    from myriad.images import load_image

    return [load_image(s.path) for s in category.test]


def test_train_adapters_from_arrays(kit, tiny_weights) -> None:
    images, masks = kit.brick_crops(1, 2, size=48, seed=3)
    data = [(img, m, "brick") for img, m in zip(images, masks)]
    module = train_adapters(kit.tiny_config(tiny_weights, adapter_weights=None), data, epochs=1, batch_size=2, log=None)
    expert = get_expert("aprilgan", kit.tiny_config(tiny_weights, adapter_weights=None, class_name="brick"))
    expert.set_adapters(module)
    assert len(expert.predict(images)) == 3
    from myriad.errors import DatasetError

    with pytest.raises(DatasetError, match="no samples"):
        train_adapters(kit.tiny_config(tiny_weights), [], epochs=1)
