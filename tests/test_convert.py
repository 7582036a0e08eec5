"""Model conversion: which linears get quantized, run-time precision switches, SR state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nvfp4
from nvfp4.model import GPT, config_from_preset


def _tower(depth: int) -> nn.Module:
    model = nn.Module()
    model.embed = nn.Embedding(10, 16)
    model.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16)) for _ in range(depth))
    model.norms = nn.ModuleList([nn.LayerNorm(16)])
    model.lm_head = nn.Linear(16, 10)
    return model


@pytest.mark.parametrize("depth", [4, 12, 62])
def test_policy_picks_expected_layers(depth):
    model = nvfp4.convert(_tower(depth), "nvfp4")
    expected_bf16 = nvfp4.recipes.get("nvfp4").layers.bf16_blocks(depth)
    for i, block in enumerate(model.blocks):
        for layer in block:
            assert isinstance(layer, nvfp4.Linear) == (i not in expected_bf16), (depth, i)
    assert type(model.lm_head) is nn.Linear
    report = nvfp4.conversion_report(model)
    assert len(report) == 2 * depth + 1
    assert "lm_head" in str(report) and "excluded by name" in str(report)


def test_bf16_recipe_converts_nothing():
    model = nvfp4.convert(_tower(4), "bf16")
    assert not any(isinstance(m, nvfp4.Linear) for m in model.modules())


def test_explicit_blocks_and_exclude_globs():
    model = _tower(4)
    nvfp4.convert(model, "nvfp4-all-fp4", blocks=model.blocks, exclude=("lm_head", "blocks.2.*"))
    assert type(model.blocks[2][0]) is nn.Linear
    assert isinstance(model.blocks[1][0], nvfp4.Linear)
    with pytest.raises(ValueError, match="not a submodule"):
        nvfp4.convert(_tower(2), "nvfp4", blocks=nn.ModuleList())


def test_converted_layers_share_parameters_and_get_distinct_seeds():
    model = _tower(4)
    w = model.blocks[1][0].weight
    nvfp4.convert(model, "nvfp4-all-fp4", seed=7)
    assert model.blocks[1][0].weight is w
    seeds = {m.sr_seed for m in model.modules() if isinstance(m, nvfp4.Linear)}
    assert len(seeds) == 8


def test_gpt_converts_and_trains_a_step():
    torch.manual_seed(0)
    model = GPT(config_from_preset("tiny", vocab_size=64, n_layer=4, seq_len=32))
    nvfp4.convert(model, "nvfp4")
    x = torch.randint(0, 64, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(x, x)
    loss.backward()
    quantized = [n for n, m in model.named_modules() if isinstance(m, nvfp4.Linear)]
    assert quantized and all(n.startswith(("blocks.1.", "blocks.2.")) for n in quantized)


def test_set_precision_and_schedule():
    model = nvfp4.convert(_tower(4), "nvfp4-switch-both")
    layers = [m for m in model.modules() if isinstance(m, nvfp4.Linear)]
    assert not nvfp4.apply_precision_schedule(model, "nvfp4-switch-both", progress=0.5, tokens=0)
    assert all(m.precision == {"forward": "recipe", "backward": "recipe"} for m in layers)
    assert nvfp4.apply_precision_schedule(model, "nvfp4-switch-both", progress=0.8, tokens=0)
    assert all(m.precision == {"forward": "bf16", "backward": "bf16"} for m in layers)
    with pytest.raises(ValueError, match="passes"):
        nvfp4.set_precision(model, ("sideways",))


def test_sr_state_round_trip():
    model = nvfp4.convert(_tower(4), "nvfp4-all-fp4")
    model.blocks[0][0](torch.randn(3, 16))
    state = nvfp4.sr_state_dict(model)
    assert state["blocks.0.0"] == 1
    other = nvfp4.convert(_tower(4), "nvfp4-all-fp4")
    nvfp4.load_sr_state_dict(other, state)
    assert nvfp4.sr_state_dict(other) == state
    with pytest.raises(ValueError, match="SR state lacks"):
        nvfp4.load_sr_state_dict(other, {})


def test_huggingface_llama_converts():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    nvfp4.convert(model, "nvfp4")
    names = [n for n, m in model.named_modules() if isinstance(m, nvfp4.Linear)]
    # 4 layers: block 0 and block 3 stay BF16; 7 linears per Llama layer.
    assert len(names) == 14 and all(n.startswith(("model.layers.1.", "model.layers.2.")) for n in names)
    assert type(model.lm_head) is nn.Linear
    ids = torch.randint(0, 128, (2, 16))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert torch.isfinite(out.loss)
