"""Fixtures of the multimodal-model tests: a tiny offline tokenizer and a tiny ``paper`` model."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from myriad.lmm.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_config(tiny_tokenizer):
    from myriad.lmm.tiny import tiny_paper_config

    return tiny_paper_config(len(tiny_tokenizer))


@pytest.fixture()
def tiny_model(tiny_config, tiny_tokenizer):
    from myriad.lmm.model import MyriadLMM

    torch.manual_seed(0)
    return MyriadLMM(tiny_config, tiny_tokenizer).eval()


@pytest.fixture()
def tiny_inputs(tiny_config):
    g = torch.Generator().manual_seed(1)
    size = tiny_config.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=g)
    maps = torch.rand(2, 1, 224, 224, generator=g)
    return pixels, maps


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 spinning threads run tiny ops ~10-30x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
