"""The probe's arithmetic on hand-built cases whose answer is known, and ``nvfp4 probe`` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nvfp4
from nvfp4.analysis.probe import (
    GradientEstimate,
    _pass,
    concentration_ks,
    fwd_bwd_weight_difference,
    gemm_estimate,
    gradient_figures,
    loglog_slope,
    operand_error,
    probe_recipe,
    reference_pass,
)
from nvfp4.cli import main
from nvfp4.convert import quantized_layers
from nvfp4.data import default_dataset
from nvfp4.model import GPT
from nvfp4.recipe import OperandConfig
from nvfp4.train import TrainConfig, train

NV_RN = OperandConfig("nvfp4", (1, 16), "nearest")
NV_SR = OperandConfig("nvfp4", (1, 16), "stochastic")


def feed(reference: torch.Tensor, draws: list[torch.Tensor]) -> dict:
    est = GradientEstimate(reference, len(draws))
    for d in draws:
        est.add(d)
    return est.result()


def test_unbiased_estimator_concentrates_with_slope_minus_one():
    torch.manual_seed(0)
    g = torch.randn(20_000)
    draws = [g + 2.0 * torch.randn_like(g) for _ in range(64)]
    r = feed(g, draws)
    assert r["concentration"]["k"] == [1, 2, 4, 8, 16, 32, 64]
    assert r["concentration_slope"] == pytest.approx(-1.0, abs=0.05)
    assert r["relative_bias"] < 0.05
    assert r["relative_variance"] == pytest.approx(4.0, rel=0.03)
    assert r["alignment"] == pytest.approx(1.0, abs=0.02)


def test_biased_estimator_flattens_to_its_bias():
    torch.manual_seed(1)
    g = torch.randn(20_000)
    draws = [0.8 * g + 0.5 * torch.randn_like(g) for _ in range(64)]
    r = feed(g, draws)
    assert r["alignment"] == pytest.approx(0.8, abs=0.01)
    assert r["relative_bias"] == pytest.approx(0.2, abs=0.01)
    assert r["concentration"]["error"][-1] == pytest.approx(0.04 + 0.25 / 64, rel=0.03)  # bias^2 + variance/K
    assert r["concentration_slope"] > -0.6


def test_deterministic_rounding_gives_a_flat_curve():
    g = torch.randn(1000)
    q = nvfp4.quantize_nvfp4(g.reshape(10, 100)).dequantize().reshape(-1)
    r = feed(g, [q] * 8)
    errors = r["concentration"]["error"]
    assert max(errors) == min(errors) > 0
    assert r["concentration_slope"] == pytest.approx(0.0, abs=1e-9)
    assert r["relative_variance"] == 0.0
    assert r["relative_bias"] == pytest.approx(math.sqrt(errors[0]))


def test_figures_of_several_gradients_are_those_of_their_concatenation():
    torch.manual_seed(2)
    a, b = torch.randn(300), 3 * torch.randn(500)
    da = [a + torch.randn_like(a) for _ in range(4)]
    db = [b * 0.9 + torch.randn_like(b) for _ in range(4)]
    parts = []
    for ref, draws in ((a, da), (b, db)):
        est = GradientEstimate(ref, 4)
        for d in draws:
            est.add(d)
        parts.append(est.raw())
    joint = feed(torch.cat([a, b]), [torch.cat([x, y]) for x, y in zip(da, db, strict=True)])
    combined = gradient_figures(parts)
    for key in ("cosine", "alignment", "relative_bias", "relative_variance", "concentration_slope"):
        assert combined[key] == pytest.approx(joint[key], rel=1e-9, abs=1e-12)


def test_slope_and_ks_edge_cases():
    assert concentration_ks(32) == [1, 2, 4, 8, 16, 32]
    assert concentration_ks(5) == [1, 2, 4, 5]
    assert loglog_slope([1, 2, 4], [1.0, 0.0, 0.5]) is None
    assert loglog_slope([1, 10], [1.0, 0.1]) == pytest.approx(-1.0)
    est = GradientEstimate(torch.ones(3), 2)
    est.add(torch.ones(3))
    with pytest.raises(ValueError, match="1 of its 2 draws"):
        est.result()
    with pytest.raises(ValueError, match="shape"):
        est.add(torch.ones(4))


def test_nvfp4_sqnr_on_gaussian_data_and_exact_values():
    torch.manual_seed(3)
    x = torch.randn(256, 1024)
    rn = operand_error(x, NV_RN)
    assert 19.5 < rn["sqnr_db"] < 21.0  # NVFP4 on Gaussian data: ~20 dB (Quartet II, TE)
    assert rn["relative_mse"] == pytest.approx(10 ** (-rn["sqnr_db"] / 10))
    assert 0 < rn["underflow_fraction"] == rn["zero_fraction"] < 0.1
    assert rn["block_scale_underflow_fraction"] == 0.0
    mx = operand_error(x, OperandConfig("mxfp4", (1, 32)))
    assert mx["sqnr_db"] < rn["sqnr_db"] - 1  # power-of-two 32-block scales lose more
    assert mx["clamped_fraction"] == 0.0  # scales rounded up: nothing is ever clamped
    # values already on the E2M1 grid (one block, amax 6): exact up to the FP32 decode scale
    exact = torch.tensor([[6.0, -4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.0] * 2])
    e = operand_error(exact, NV_RN)
    assert e["sqnr_db"] > 120 and e["underflow_fraction"] == 0.0  # only the FP32 tensor scale's rounding is left
    assert e["saturated_fraction"] == pytest.approx(2 / 16)


def test_clamping_and_scale_underflow_are_counted():
    # a block whose amax/6 rounds *down* in E4M3 (the tensor scale maps 6*448 to amax): its top value is clamped
    row = torch.full((1, 16), 0.01)
    row[0, 0] = 1.0
    tensor = torch.cat([row, torch.full((1, 16), 0.01)])
    tensor[1, 0] = 0.0995  # 0.0995/6 * (448*6/1) ... lands between two E4M3 values and rounds down
    e = operand_error(tensor, NV_RN)
    assert e["clamped_fraction"] > 0
    # a block 2^-20 below the tensor's amax: its E4M3 scale underflows to 0 and every value becomes 0
    tiny = torch.full((2, 16), 1.0)
    tiny[1] = 2.0**-20
    u = operand_error(tiny, NV_RN)
    assert u["block_scale_underflow_fraction"] == pytest.approx(0.5)
    assert u["underflow_fraction"] == pytest.approx(0.5)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 40), st.sampled_from([16, 48, 100]), st.floats(1e-3, 1e3))
def test_sqnr_does_not_depend_on_the_tensors_scale_much(rows, cols, scale):
    torch.manual_seed(rows * cols)
    x = torch.randn(rows, cols)
    a, b = operand_error(x, NV_RN)["sqnr_db"], operand_error(x * scale, NV_RN)["sqnr_db"]
    assert abs(a - b) < 1.5  # the tensor scale adapts; only E4M3 scale rounding differs


def test_rht_operand_is_measured_in_the_gemms_basis():
    torch.manual_seed(4)
    rht16 = OperandConfig("nvfp4", (1, 16), "nearest", hadamard=16)
    gauss = torch.randn(64, 160)  # 160 columns: padded to 10 chunks of 16
    assert operand_error(gauss, rht16)["sqnr_db"] == pytest.approx(operand_error(gauss, NV_RN)["sqnr_db"], abs=0.5)
    heavy = torch.distributions.StudentT(2.0).sample((64, 512))
    # the RHT makes blocks Gaussian-like: far fewer small values flushed to zero next to a large one
    assert operand_error(heavy, rht16)["underflow_fraction"] < 0.6 * operand_error(heavy, NV_RN)["underflow_fraction"]


def test_weight_inconsistency_is_zero_with_2d_tiles_only():
    torch.manual_seed(5)
    base = torch.nn.Linear(64, 48, bias=False)
    two_d = nvfp4.Linear.from_linear(base, "nvfp4")
    one_d = nvfp4.Linear.from_linear(base, "nvfp4-no-2d")
    assert fwd_bwd_weight_difference(two_d) == 0.0
    assert fwd_bwd_weight_difference(one_d) > 0.01
    assert fwd_bwd_weight_difference(nvfp4.Linear.from_linear(base, "mxfp4")) > 0.001
    bf16 = nvfp4.Linear.from_linear(base, "nvfp4")
    nvfp4.set_precision(torch.nn.Sequential(bf16), ("forward", "backward"), "bf16")
    assert fwd_bwd_weight_difference(bf16) == 0.0


def test_gemm_estimate_sr_concentrates_and_rn_does_not():
    torch.manual_seed(6)
    dy, x = torch.randn(48, 512), torch.randn(32, 512)
    rn = gemm_estimate(dy, x, NV_RN, OperandConfig("bf16", (1, 1)), 16)
    sr = gemm_estimate(dy, x, NV_SR, OperandConfig("bf16", (1, 1)), 16)
    assert rn["concentration_slope"] == pytest.approx(0.0, abs=1e-6)
    assert sr["concentration_slope"] < -0.8  # SR alone (the other operand in BF16) is nearly unbiased
    assert sr["relative_bias"] < rn["relative_bias"] / 2


@pytest.fixture(scope="module")
def small_model_and_batch():
    torch.manual_seed(7)
    model = GPT.from_preset("tiny", n_layer=3, d_model=64, d_ff=128, n_head=2, n_kv_head=1, vocab_size=97)
    x = torch.randint(0, 97, (2, 32))
    return model, (x, torch.roll(x, -1, 1))


def test_recipe_without_sr_draws_the_same_gradient_every_time(small_model_and_batch):
    model, (x, y) = small_model_and_batch
    q = nvfp4.convert(GPT(model.config), "nvfp4-no-sr")
    q.load_state_dict(model.state_dict())
    names = [n for n, _ in quantized_layers(q)]
    grads = []
    for call in (0, 5):
        for _, layer in quantized_layers(q):
            layer.sr_calls = call
            layer.invalidate_weight_cache()
        grads.append(_pass(q, names, x, y, autocast=True)[0])
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in names)


def test_probe_recipe_figures(small_model_and_batch):
    model, batch = small_model_and_batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = reference_pass(model, batch)
    nv = probe_recipe(model, "nvfp4", batch, draws=4, reference=ref)
    no_sr = probe_recipe(model, "nvfp4-no-sr", batch, draws=4, reference=ref)
    bf16 = probe_recipe(model, "bf16", batch, draws=4, reference=ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not touched
    assert (nv["passes"], no_sr["passes"], bf16["passes"]) == (4, 1, 1)
    layer = nv["layers"]["blocks.1.attn.q_proj"]
    assert layer["quantized"] and set(layer["operands"]) == set(nvfp4.recipe.OPERANDS)
    assert not nv["layers"]["blocks.0.attn.q_proj"]["quantized"]  # the paper's first block stays BF16
    for key in ("sqnr_db", "relative_mse", "underflow_fraction", "saturated_fraction", "clamped_fraction"):
        assert key in layer["operands"]["wgrad_x"]
    assert layer["fwd_bwd_weight_difference"] == 0.0
    for key in ("cosine", "alignment", "relative_bias", "relative_variance", "concentration_slope"):
        assert key in layer["weight_grad"] and key in layer["weight_grad"]["backward_only"]
        assert key in layer["input_grad"]
    assert 0.5 < layer["weight_grad"]["cosine"] < 1.0
    assert bf16["model"]["weight_grad"]["all_layers"]["cosine"] > 0.999
    assert no_sr["model"]["weight_grad"]["all_layers"]["concentration_slope"] == pytest.approx(0, abs=1e-6)
    assert layer["gemm_estimates"]["wgrad"]["concentration_slope"] < -0.05  # SR on dy averages away
    with pytest.raises(ValueError, match="at least 2"):
        probe_recipe(model, "nvfp4", batch, draws=1)


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory) -> str:
    return str(default_dataset(cache_dir=tmp_path_factory.mktemp("cache"), tokenizer="byte").path)


def test_probe_cli_on_a_checkpoint_and_bad_input(byte_data, tmp_path, capsys):
    run = tmp_path / "run"
    train(
        TrainConfig(
            model="tiny",
            n_layer=4,
            d_model=64,
            d_ff=128,
            batch_size=2,
            seq_len=32,
            max_steps=2,
            eval_batches=1,
            data=[byte_data],
            out=str(run),
            quiet=True,
        )
    )
    out = tmp_path / "probe"
    argv = ["probe", "--checkpoint", str(run), "--recipes", "nvfp4,nvfp4-no-2d,bf16", "--draws", "2", "--out", str(out)]
    assert main(argv) == 0
    probe = json.loads((out / "probe.json").read_text())
    assert probe["meta"]["source"] == "checkpoint" and probe["meta"]["step"] == 2
    assert list(probe["recipes"]) == ["nvfp4", "nvfp4-no-2d", "bf16"]
    diffs = [v.get("fwd_bwd_weight_difference") for v in probe["recipes"]["nvfp4-no-2d"]["layers"].values()]
    assert any(d and d > 0 for d in diffs)
    for name in ("report.md", "probe_concentration.png", "probe_sqnr.png", "probe_depth.png"):
        assert (out / name).stat().st_size > 0
    assert "| nvfp4-no-2d |" in (out / "report.md").read_text()
    capsys.readouterr()

    def error(args) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "exists" in error(argv)  # nothing is overwritten without --overwrite
    assert "unknown recipe" in error([*argv[:-1], str(tmp_path / "p2"), "--recipes", "nvfp5"])
    assert "at least 2" in error(["probe", "--checkpoint", str(run), "--draws", "1", "--out", str(tmp_path / "p3")])
    assert "not --model small" in error(
        ["probe", "--checkpoint", str(run), "--model", "small", "--out", str(tmp_path / "p4")]
    )
    assert "no readable checkpoint" in error(["probe", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "p5")])
