"""LoRRA, VPG and TPG: shapes, parameter counts at paper dims, key names, init, token order."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from myriad.lmm.lorra import LoRRA  # noqa: E402
from myriad.lmm.parts import count_parameters  # noqa: E402
from myriad.lmm.tpg import TextualPromptGenerator  # noqa: E402
from myriad.lmm.vpg import VisualPromptGenerator  # noqa: E402

SMALL = (1, 2, 4, 4, 8, 8)


def test_lorra_paper_dims_and_keys():
    with torch.device("meta"):
        lorra = LoRRA(1408, 4)
    assert count_parameters(lorra) == 11_264
    shapes = {k: tuple(v.shape) for k, v in lorra.state_dict().items()}
    assert shapes == {"down.weight": (4, 1408), "up.weight": (1408, 4)}


def test_lorra_is_residual_low_rank_and_bias_free():
    torch.manual_seed(0)
    lorra = LoRRA(64, 4)
    x = torch.randn(2, 5, 64)
    expected = x + x @ lorra.down.weight.T @ lorra.up.weight.T
    torch.testing.assert_close(lorra(x), expected)
    assert lorra.down.bias is None and lorra.up.bias is None
    # Per token: changing one token does not change the others.
    y = x.clone()
    y[:, 0] += 1
    torch.testing.assert_close(lorra(y)[:, 1:], lorra(x)[:, 1:])


def test_lorra_init_normal_default_and_zero_option():
    torch.manual_seed(0)
    lorra = LoRRA(1408, 4)
    for w in (lorra.down.weight, lorra.up.weight):
        assert abs(float(w.detach().std()) - 0.02) < 0.002 and abs(float(w.detach().mean())) < 0.002
    zero = LoRRA(64, 4, init="zero")
    assert torch.count_nonzero(zero.up.weight) == 0
    x = torch.randn(3, 64)
    torch.testing.assert_close(zero(x), x)
    with pytest.raises(ValueError):
        LoRRA(8, 2, init="xavier")


def test_lorra_keeps_input_dtype():
    lorra = LoRRA(16, 4)
    x = torch.randn(2, 3, 16, dtype=torch.float16)
    assert lorra(x).dtype == torch.float16


def test_vpg_paper_dims_keys_and_count():
    with torch.device("meta"):
        vpg = VisualPromptGenerator(768)
    keys = {k for k in vpg.state_dict()}
    assert keys == {f"net.{i}.{p}" for i in (0, 3, 6, 9, 12, 15) for p in ("weight", "bias")}
    assert tuple(vpg.net[15].weight.shape) == (768, 1024, 1, 1)
    assert count_parameters(vpg) == 3_305_144  # ~3.31M
    assert vpg.num_tokens == 49


def test_tpg_paper_dims_keys_and_count():
    with torch.device("meta"):
        tpg = TextualPromptGenerator(4096)
        tpg9 = TextualPromptGenerator(4096, base_prompts=False)
    keys = {k for k in tpg.state_dict()}
    assert keys == {f"net.{i}.{p}" for i in (0, 3, 6, 9, 12, 15) for p in ("weight", "bias")} | {"base_prompts"}
    assert tuple(tpg.net[15].weight.shape) == (4096, 1024, 5, 5)
    assert tuple(tpg.base_prompts.shape) == (9, 4096)
    n = count_parameters(tpg)
    assert n == 107_416_504 and 107.3e6 < n < 107.5e6
    assert count_parameters(tpg.net[15]) == 104_861_696
    assert tpg.num_tokens == 18 and tpg9.num_tokens == 9
    assert "base_prompts" not in tpg9.state_dict()


def test_vpg_forward_shape_and_row_major_order():
    torch.manual_seed(0)
    vpg = VisualPromptGenerator(16, SMALL)
    assert vpg(torch.rand(2, 1, 224, 224)).shape == (2, 49, 16)
    # Swap in a net whose 7x7 output is the mean of each 32x32 cell: token i = cell (i // 7, i % 7).
    probe = torch.nn.Conv2d(1, 1, 1, bias=False)
    torch.nn.init.ones_(probe.weight)
    vpg.net = torch.nn.Sequential(probe, torch.nn.AvgPool2d(32))
    cells = torch.arange(49, dtype=torch.float32).view(1, 1, 7, 7)
    maps = cells.repeat_interleave(32, dim=2).repeat_interleave(32, dim=3)
    with torch.no_grad():
        tokens = vpg(maps)
    assert tokens.shape == (1, 49, 1)
    assert tokens[0, :, 0].tolist() == list(range(49))


def test_tpg_forward_prepends_base_prompts():
    torch.manual_seed(0)
    tpg = TextualPromptGenerator(12, SMALL)
    maps = torch.rand(3, 1, 224, 224)
    out = tpg(maps)
    assert out.shape == (3, 18, 12)
    torch.testing.assert_close(out[:, :9], tpg.base_prompts.unsqueeze(0).expand(3, -1, -1))
    assert abs(float(tpg.base_prompts.detach().std()) - 1.0) < 0.5
    small = TextualPromptGenerator(600, SMALL, base_prompt_std=0.1)
    assert 0.08 < float(small.base_prompts.detach().std()) < 0.12
    no_base = TextualPromptGenerator(12, SMALL, base_prompts=False)
    assert no_base(maps).shape == (3, 9, 12)


def test_prompt_generators_refuse_wrong_map_shape():
    vpg = VisualPromptGenerator(8, SMALL)
    with pytest.raises(ValueError, match="224"):
        vpg(torch.rand(1, 1, 112, 112))
    with pytest.raises(ValueError):
        TextualPromptGenerator(8, SMALL, kernel=9)


def test_kaiming_init_lets_the_map_move_the_tokens():
    """With PyTorch's default init a blob barely changes the TPG tokens; He init keeps the signal."""
    blank = torch.zeros(1, 1, 224, 224)
    blob = blank.clone()
    blob[..., 100:140, 60:100] = 1.0
    spread = {}
    for init in ("torch", "kaiming"):
        torch.manual_seed(0)
        tpg = TextualPromptGenerator(out_dim=64, base_prompts=False, init=init)
        with torch.no_grad():
            a, b = tpg(blank), tpg(blob)
        spread[init] = float((a - b).norm() / a.norm().clamp_min(1e-6))
        assert all(float(c.bias.abs().sum()) == 0 for c in list(tpg.net)[:-1:3]) == (init == "kaiming")
    assert spread["kaiming"] > 20 * spread["torch"]
    with pytest.raises(ValueError, match="init"):
        VisualPromptGenerator(init="xavier")


def test_mini_preset_matches_llm_embedding_scale():
    from myriad.lmm.config import mini_config, paper_config

    mini, paper = mini_config(), paper_config()
    assert (mini.prompt_generators.init, mini.prompt_generators.tpg_base_prompt_std) == ("kaiming", 0.135)
    assert mini.qformer.projection_init_std == pytest.approx(0.007)
    assert (mini.prompt_generators.head_gain, mini.prompt_generators.tpg_head_bias_std) == (0.3, 0.135)
    # the paper preset keeps the published code's choices
    assert (paper.prompt_generators.init, paper.prompt_generators.tpg_base_prompt_std) == ("torch", 1.0)
    assert paper.qformer.projection_init_std is None


def test_head_bias_keeps_tokens_of_a_flat_map_away_from_zero():
    flat = torch.zeros(2, 1, 224, 224)
    torch.manual_seed(0)
    plain = TextualPromptGenerator(out_dim=64, base_prompts=False, init="kaiming")
    torch.manual_seed(0)
    biased = TextualPromptGenerator(out_dim=64, base_prompts=False, init="kaiming", head_bias_std=0.5, head_gain=0.3)
    with torch.no_grad():
        assert float(plain(flat).norm(dim=-1).mean()) < 0.5
        assert float(biased(flat).norm(dim=-1).mean()) == pytest.approx(0.5 * 8, rel=0.3)  # std * sqrt(64)
        torch.testing.assert_close(biased.net[-1].weight, plain.net[-1].weight * 0.3)


def test_map_shift_and_scale_centre_the_trunk_input():
    torch.manual_seed(0)
    plain = TextualPromptGenerator(out_dim=16, base_prompts=False)
    torch.manual_seed(0)
    centred = TextualPromptGenerator(out_dim=16, base_prompts=False, map_shift=0.5, map_scale=2.0)
    maps = torch.rand(2, 1, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(centred(maps), plain((maps - 0.5) * 2.0))


def test_tpg_token_norm_bounds_map_tokens_only():
    """``token_norm``: every map token has exactly that norm, however large the map drives it; base prompts untouched."""
    torch.manual_seed(0)
    free = TextualPromptGenerator(out_dim=32, channels=SMALL, init="kaiming", head_gain=5.0)
    torch.manual_seed(0)
    bounded = TextualPromptGenerator(out_dim=32, channels=SMALL, init="kaiming", head_gain=5.0, token_norm=3.2)
    disk = torch.zeros(2, 1, 224, 224)
    disk[0, :, 40:200, 40:200] = 1.0
    with torch.no_grad():
        loose, tight = free(disk), bounded(disk)
    torch.testing.assert_close(tight[:, 9:].norm(dim=-1), torch.full((2, 9), 3.2))
    torch.testing.assert_close(tight[:, :9], bounded.base_prompts.unsqueeze(0).expand(2, -1, -1))
    # the direction is the free token's: the map's information is kept
    torch.testing.assert_close(tight[:, 9:], loose[:, 9:] / loose[:, 9:].norm(dim=-1, keepdim=True) * 3.2)
    with pytest.raises(ValueError, match="token_norm"):
        TextualPromptGenerator(out_dim=8, channels=SMALL, token_norm=0.0)


def test_token_norm_is_a_mini_default_and_off_in_the_paper_preset():
    from myriad.lmm.config import mini_config, paper_config

    assert mini_config().prompt_generators.tpg_token_norm == pytest.approx(3.2)
    assert paper_config().prompt_generators.tpg_token_norm is None


def test_tpg_head_matches_the_conv_it_replaces():
    """The TPG head runs as unfold + matmul (faster on CPU); it must equal its ``nn.Conv2d`` exactly, with gradients."""
    torch.manual_seed(0)
    tpg = TextualPromptGenerator(out_dim=24, channels=SMALL, init="kaiming")
    features = torch.randn(3, SMALL[-1], 7, 7, requires_grad=True)
    fast, conv = tpg._head(features), tpg.net[-1](features)
    torch.testing.assert_close(fast, conv)
    fast.sum().backward()
    grad_fast = features.grad.clone()
    features.grad = None
    conv.sum().backward()
    torch.testing.assert_close(grad_fast, features.grad)


def test_tpg_rate_film_starts_as_the_identity_and_then_reads_the_rate():
    """``rate_film``: zero-initialised, so a model gains the input without changing; once trained, the tokens
    depend on log10(rate) + 1 (unknown rates read as 10 %)."""
    from myriad.lmm.tpg import rate_feature

    torch.manual_seed(0)
    tpg = TextualPromptGenerator(out_dim=32, channels=SMALL, init="kaiming", rate_film=True, token_norm=3.2)
    maps = torch.rand(3, 1, 224, 224)
    rates = torch.tensor([0.01, 0.5, float("nan")])
    with torch.no_grad():
        torch.testing.assert_close(tpg(maps, rates), tpg(maps))
        torch.nn.init.normal_(tpg.rate_film.weight, std=0.5)
        moved = tpg(maps, rates)
        assert not torch.allclose(moved[:2, 9:], tpg(maps)[:2, 9:])
        torch.testing.assert_close(moved[2], tpg(maps)[2])  # unknown: the 10 % point
        torch.testing.assert_close(moved[:, :9], tpg(maps)[:, :9])  # base prompts untouched
    torch.testing.assert_close(rate_feature(torch.tensor([0.01, 0.1, 1.0, 1e-6, float("nan")]), 5, torch.device("cpu")),
                               torch.tensor([-1.0, 0.0, 1.0, -2.0, 0.0]))
    assert TextualPromptGenerator(out_dim=8, channels=SMALL).rate_film is None  # off by default (the paper's TPG)
    with pytest.raises(ValueError, match="false-alarm rates"):
        rate_feature(torch.tensor([0.1]), 2, torch.device("cpu"))
