"""The orchestrator: every file of the paper preset onto an empty (meta) model, then a forward pass."""

from __future__ import annotations

import pytest
import torch

from myriad.errors import WeightsError
from myriad.lmm.checkpoints import LoadReport, load_paper_weights

from .conftest import (
    IMAGE,
    assert_equal,
    eva_state,
    lavis_blip2_state,
    minigpt4_state,
    myriad_checkpoint,
    myriad_model_state,
    write_hf_blip2_dir,
    write_vicuna_dir,
)


def test_all_files_onto_an_empty_model(empty_model, cfg, tmp_path) -> None:
    eva, blip2, mg4, my = tmp_path / "eva_vit_g.pth", tmp_path / "blip2.pth", tmp_path / "minigpt4.pth", tmp_path / "myriad.pth"
    eva_s, blip2_s, mg4_s, my_s = eva_state(), lavis_blip2_state(), minigpt4_state(), myriad_model_state()
    torch.save(eva_s, eva)
    torch.save({"model": blip2_s}, blip2)
    torch.save(mg4_s, mg4)
    torch.save(myriad_checkpoint(my_s), my)
    vicuna = tmp_path / "vicuna"
    llm = write_vicuna_dir(vicuna, cfg)

    reports = load_paper_weights(empty_model, eva_vit=eva, blip2=blip2, minigpt4=mg4, vicuna_dir=vicuna, myriad=my)
    assert [r.layout for r in reports] == ["eva_vit", "lavis_blip2", "minigpt4", "vicuna", "myriad"]
    assert all(isinstance(r, LoadReport) and r.complete for r in reports)
    loaded = sorted(k for r in reports for k in r.loaded)
    assert loaded == sorted(empty_model.state_dict())  # every tensor of the model came from a file

    model = empty_model.finalize()
    assert_equal(model.vision_encoder.query_tokens, blip2_s["query_tokens"])
    assert_equal(model.language_model.model.embed_tokens.weight, llm["model.embed_tokens.weight"])
    pixels = torch.rand(1, 3, IMAGE, IMAGE)
    maps = torch.rand(1, 1, 224, 224)
    with torch.no_grad():
        tokens = model.encode_image(pixels, maps)
    assert tokens.shape == (1, cfg.image_tokens, cfg.llm.hidden_size) and torch.isfinite(tokens.float()).all()


def test_hf_blip2_instead_of_lavis(model, cfg, tmp_path) -> None:
    directory = tmp_path / "blip2-hf"
    write_hf_blip2_dir(directory, cfg)
    reports = load_paper_weights(model, blip2_hf_dir=directory)
    assert reports[0].layout == "hf_blip2" and sorted(reports[0].parts) == ["backbone", "ln_vision", "qformer", "query_tokens"]


def test_nothing_given_and_errors_propagate(model, tmp_path) -> None:
    with pytest.raises(WeightsError, match="no file given"):
        load_paper_weights(model)
    with pytest.raises(WeightsError, match="not found"):
        load_paper_weights(model, eva_vit=tmp_path / "eva_vit_g.pth")
