"""The core's shared weight helpers: checkpoint reading, strict loading, ViT taps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from myriad.errors import WeightsError
from myriad.io import CHECKPOINT_WRAPPERS, is_torchscript, load_state_dict_strict, load_torch_checkpoint
from myriad.vit_taps import resize_positional_embedding, vit_tokens


def test_plain_checkpoint_is_returned_as_saved(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save({"w": torch.ones(2), "epoch": 3}, path)
    assert set(load_torch_checkpoint(path)) == {"w", "epoch"}
    assert list(load_torch_checkpoint(path, tensors_only=True)) == ["w"]


def test_containers_are_unwrapped_depth_first_and_prefixes_stripped(tmp_path: Path) -> None:
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 1, "model": {}, "state_dict": {"module": {"module.a": torch.zeros(1), "n": 2}}}, path)
    state = load_torch_checkpoint(path, unwrap=CHECKPOINT_WRAPPERS, tensors_only=True, strip_prefix="module.")
    assert list(state) == ["a"]
    torch.save({"epoch": 1, "config": {"a": 1}}, path)
    with pytest.raises(WeightsError, match=r"wrapped\.pth: no tensors found.*'epoch', 'config'"):
        load_torch_checkpoint(path, unwrap=CHECKPOINT_WRAPPERS)


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"gone\.pth: CLIP weights not found; download it"):
        load_torch_checkpoint(tmp_path / "gone.pth", what="CLIP weights", hint="download it")
    with pytest.raises(WeightsError, match=r"gone\.pth: checkpoint file not found$"):
        load_torch_checkpoint(tmp_path / "gone.pth")
    with pytest.raises(WeightsError, match="is a directory"):
        load_torch_checkpoint(tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"garbage\.pth: cannot load checkpoint safely"):
        load_torch_checkpoint(garbage, mmap=True)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(WeightsError, match=r"list\.pth: expected a state dict.*found list"):
        load_torch_checkpoint(listed)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*TorchScript archive:UserWarning")
def test_torchscript_archives_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 3)).save(str(path))
    assert is_torchscript(path)
    state = load_torch_checkpoint(path, torchscript=True)
    assert set(state) == {"weight", "bias"} and state["weight"].shape == (3, 2)
    with pytest.raises(WeightsError, match=r"scripted\.pt: cannot load checkpoint safely"):
        load_torch_checkpoint(path)


def test_strict_load_lists_every_kind_of_mismatch() -> None:
    module = torch.nn.Linear(2, 3)
    state = {"weight": torch.zeros(3, 3), "extra": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"f\.pth: the adapter does not match.*1 missing.*bias.*1 unexpected.*extra.*1 misshaped"):
        load_state_dict_strict(module, state, "f.pth", "adapter")
    with pytest.raises(WeightsError, match=r"f\.pth: weights do not match"):
        load_state_dict_strict(module, state, "f.pth")
    load_state_dict_strict(module, {"weight": torch.ones(3, 2), "bias": torch.ones(3)}, "f.pth")
    assert torch.equal(module.weight, torch.ones(3, 2))


def test_vit_taps_and_positional_embedding() -> None:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(0)
    visual = VisionTransformer(image_size=32, patch_size=8, width=16, layers=3, heads=2, mlp_ratio=2.0, output_dim=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, pooled = vit_tokens(visual, x, [2, 0])
        early, none = vit_tokens(visual, x, [0], pooled=False)
        reference = visual(x)
    assert [t.shape for t in tokens] == [(2, 17, 16)] * 2 and none is None
    torch.testing.assert_close(early[0], tokens[1])
    torch.testing.assert_close(pooled, reference if not isinstance(reference, tuple) else reference[0])
    pos = visual.positional_embedding.data
    assert resize_positional_embedding(pos, 4) is pos
    bigger = resize_positional_embedding(pos, 6)
    assert bigger.shape == (37, 16) and torch.equal(bigger[0], pos[0])
    torch.testing.assert_close(bigger, resize_positional_embedding(pos, (6, 6)))
    with pytest.raises(WeightsError, match="not a square grid"):
        resize_positional_embedding(pos[:-1], 6)
