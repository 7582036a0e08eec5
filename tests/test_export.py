"""``nvfp4 export``: the HF model gives our logits; the compressed-tensors export loads back through transformers +
compressed-tensors with every NVFP4 weight bit-identical to ours and the ignore list equal to the conversion."""

from __future__ import annotations

import json

import pytest
import torch

import nvfp4
from nvfp4.analysis.probe import unconverted_copy
from nvfp4.cli import main
from nvfp4.data import default_dataset, prepare_dataset
from nvfp4.export import _fused_amax, export_compressed_tensors, export_hf, hf_names
from nvfp4.formats.nvfp4 import tensor_amax
from nvfp4.inference import load_trained
from nvfp4.quantize import quantize_nvfp4
from nvfp4.train import TrainConfig, train

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")
from transformers.utils.quantization_config import CompressedTensorsConfig  # noqa: E402

TINY = dict(
    model="tiny",
    n_layer=4,
    d_model=64,
    d_ff=128,
    n_head=2,
    n_kv_head=1,
    batch_size=2,
    seq_len=32,
    max_steps=3,
    eval_batches=1,
    quiet=True,
)


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory) -> str:
    return str(default_dataset(cache_dir=tmp_path_factory.mktemp("cache"), tokenizer="byte").path)


@pytest.fixture(scope="module", params=["relu2", "swiglu"])
def run(request, byte_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / request.param
    train(TrainConfig(**TINY, mlp=request.param, recipe="nvfp4", data=[byte_data], out=str(out)))
    return out


def _ours_fp32(run) -> torch.nn.Module:
    return unconverted_copy(load_trained(run, device="cpu").model).float()


def test_hf_export_gives_our_logits(run, tmp_path):
    export_hf(run, tmp_path / "hf", dtype="float32", tokenizer=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        ours, _ = _ours_fp32(run)(x)
        theirs = hf(x).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)  # FP32; rotary tables differ in the last bits
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["nvfp4"]["recipe"] == "nvfp4" and config["nvfp4"]["step"] == 3


def _dequantized_reference(trained, fuse: bool) -> dict[str, torch.Tensor]:
    """Our dequantized NVFP4 weights (BF16) under HF names, tensor scales shared as the export shares them."""
    layers = {n: m for n, m in trained.model.named_modules() if isinstance(m, nvfp4.Linear)}
    shared, _ = _fused_amax({n: tensor_amax(m.weight.detach().float()) for n, m in layers.items()}, fuse)
    out = {}
    for n, m in layers.items():
        q = quantize_nvfp4(m.weight.detach().float(), tile=(16, 16), global_amax=shared[n])
        for h in hf_names(n + ".weight", trained.model.config.mlp):
            out[h] = q.dequantize().to(torch.bfloat16)
    return out


@pytest.mark.parametrize("fuse", [True, False])
def test_compressed_tensors_export_loads_back_bit_exactly(run, tmp_path, fuse):
    report = export_compressed_tensors(run, tmp_path / "ct", fuse_scales=fuse, tokenizer=False)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    state = loaded.state_dict()
    trained = load_trained(run, device="cpu")
    reference = _dequantized_reference(trained, fuse)
    assert sorted(h[: -len(".weight")] for h in reference) == report.quantized
    for name, weight in reference.items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], weight), name
    if not fuse:  # its own tensor scale: the very numbers the training forward's GEMM used
        for n, m in trained.model.named_modules():
            if isinstance(m, nvfp4.Linear):
                forward = m._weight_operand("fprop_w")
                used = (forward.values().float() * forward.decode_scale).to(torch.bfloat16)
                assert torch.equal(state[hf_names(n + ".weight", trained.model.config.mlp)[-1]], used)
    plain = {h: v for n, v in _ours_fp32(run).state_dict().items() for h in hf_names(n, trained.model.config.mlp)}
    for name, value in plain.items():
        if name not in reference:
            assert torch.equal(state[name], value.to(torch.bfloat16)), name
    # the ignore list is what the conversion kept in high precision (BF16 edge blocks and the head)
    kept = {
        h[: -len(".weight")]
        for r in nvfp4.conversion_report(trained.model)
        if not r.treatment.startswith("quantized")
        for h in hf_names(r.name + ".weight", trained.model.config.mlp)
    }
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert set(config["quantization_config"]["ignore"]) == kept == set(report.ignore)
    # logits: the HF export (BF16) loaded the same way, with our dequantized weights in place of its own
    export_hf(run, tmp_path / "hf", tokenizer=False)
    dense = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    missing, unexpected = dense.load_state_dict(reference, strict=False)
    assert not unexpected and set(missing).isdisjoint(reference)
    x = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, dense(x).logits, rtol=2**-8, atol=0)


def test_calibrated_export_writes_input_scales(run, tmp_path):
    report = export_compressed_tensors(run, tmp_path / "ct", calibrate=2, tokenizer=False)
    assert report.calibrated
    from safetensors.torch import load_file

    state = load_file(tmp_path / "ct" / "model.safetensors")
    scales = {k: v for k, v in state.items() if k.endswith("input_global_scale")}
    assert len(scales) == len(report.quantized) and all(float(v) > 0 for v in scales.values())
    q, k = (state[f"model.layers.1.self_attn.{p}_proj.input_global_scale"] for p in "qk")
    assert torch.equal(q, k)  # one GEMM in vLLM, one input: one scale
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["input_activations"]["dynamic"] == "local"
    transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=True)
    )


def test_tokenizer_is_exported_for_bpe_runs(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": f"Doc {i}: in the beginning was the word. " * 8}) for i in range(30))
    )
    data = prepare_dataset([str(corpus)], tmp_path / "data", tokenizer="bpe", vocab_size=300)
    run = tmp_path / "run"
    train(TrainConfig(**TINY, recipe="nvfp4", data=[str(data.path)], vocab_size=300, out=str(run)))
    export_hf(run, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = load_trained(run).tokenizer
    text = "in the beginning was the word"
    assert tok(text)["input_ids"] == ours.encode(text)
    assert tok.eos_token_id == ours.eot_id


def test_export_errors_are_one_line(byte_data, run, tmp_path, capsys):
    def error(args) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "no transformers equivalent" in error(["export", str(run), "--out", str(tmp_path / "a")])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert "not empty" in error(["export", str(run), "--out", str(tmp_path / "full"), "--no-tokenizer"])
    assert (tmp_path / "full" / "x").read_text() == "mine"
    mx = tmp_path / "mx"
    train(TrainConfig(**TINY, recipe="mxfp4", data=[byte_data], out=str(mx)))
    assert "not plain NVFP4" in error(
        ["export", str(mx), "--format", "compressed-tensors", "--out", str(tmp_path / "b"), "--no-tokenizer"]
    )
    odd = tmp_path / "odd"
    train(TrainConfig(**{**TINY, "d_model": 40, "d_ff": 72}, recipe="nvfp4", data=[byte_data], out=str(odd)))
    assert "multiples of 16" in error(
        ["export", str(odd), "--format", "compressed-tensors", "--out", str(tmp_path / "c"), "--no-tokenizer"]
    )
    assert (
        main(["export", str(run), "--format", "compressed-tensors", "--out", str(tmp_path / "ok"), "--no-tokenizer"])
        == 0
    )
    assert "NVFP4 linears" in capsys.readouterr().out


def test_the_hybrid_exports_as_nemotron_h(byte_data, tmp_path):
    if not hasattr(transformers, "NemotronHForCausalLM"):
        pytest.skip("transformers without NemotronH")
    run = tmp_path / "hybrid"
    train(
        TrainConfig(
            model="hybrid-tiny",
            d_model=64,
            d_ff=128,
            n_head=2,
            n_kv_head=1,
            batch_size=2,
            seq_len=32,
            max_steps=2,
            eval_batches=1,
            recipe="nvfp4",
            data=[byte_data],
            out=str(run),
            quiet=True,
        )
    )
    export_hf(run, tmp_path / "hf", dtype="float32", tokenizer=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "NemotronHForCausalLM"
    x = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        ours, _ = _ours_fp32(run)(x)
        torch.testing.assert_close(hf(input_ids=x).logits, ours, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="HybridLM has no transformers mapping"):
        export_compressed_tensors(run, tmp_path / "ct", tokenizer=False)


def test_four_over_six_weights_export_as_trained(byte_data, tmp_path):
    """nvfp4-4over6: the exported weights (4/6 scales, tensor scale 256·6/amax) load back through transformers +
    compressed-tensors equal to the training forward's own GEMM operands."""
    out = tmp_path / "run"
    train(TrainConfig(**TINY, mlp="relu2", recipe="nvfp4-4over6", data=[byte_data], out=str(out)))
    export_compressed_tensors(out, tmp_path / "ct", fuse_scales=False, tokenizer=False)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "ct", quantization_config=CompressedTensorsConfig(dequantize=True)
    )
    state = loaded.state_dict()
    trained = load_trained(out, device="cpu")
    checked = 0
    for n, m in trained.model.named_modules():
        if isinstance(m, nvfp4.Linear) and m.recipe.fprop_w.four_over_six:
            forward = m._weight_operand("fprop_w")
            used = (forward.values().float() * forward.decode_scale).to(torch.bfloat16)
            assert torch.equal(state[hf_names(n + ".weight", trained.model.config.mlp)[-1]], used), n
            checked += 1
    assert checked > 0
