"""Model conversion: which linears get quantized, run-time precision switches, SR state."""

from __future__ import annotations

import dataclasses

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


def test_edge_recipe_runs_the_first_and_last_blocks():
    """nvfp4-mxfp8-edges: the blocks nvfp4 keeps in BF16 run the mxfp8 recipe, the others nvfp4, the head BF16."""
    depth = 12
    model = nvfp4.convert(_tower(depth), "nvfp4-mxfp8-edges")
    edges = nvfp4.recipes.get("nvfp4").layers.bf16_blocks(depth)
    assert edges == {0, 10, 11}  # 2/62 and 8/62 of 12 blocks, rounded half up, at least one each
    for i, block in enumerate(model.blocks):
        for layer in block:
            assert isinstance(layer, nvfp4.Linear)
            assert layer.recipe.fprop_x.format == ("mxfp8" if i in edges else "nvfp4"), i
            if i in edges:  # the edge layers' own recipe: mxfp8, with no layer policy of its own
                assert layer.recipe.name == "mxfp8" and layer.recipe.layers.edge_recipe is None
    assert type(model.lm_head) is nn.Linear
    report = str(nvfp4.conversion_report(model))
    assert "quantized (mxfp8, first blocks)" in report and "quantized (mxfp8, last blocks)" in report
    x = torch.randn(3, 16)
    y = model.blocks[0](x)  # an MXFP8 block trains: its output and gradients are finite
    y.sum().backward()
    assert torch.isfinite(model.blocks[0][0].weight.grad).all()


def test_edge_recipe_errors_are_clear():
    policy = nvfp4.recipes.get("nvfp4").layers
    bad = nvfp4.recipes.get("nvfp4").replace(name="bad", layers=dataclasses.replace(policy, edge_recipe="nope"))
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        nvfp4.convert(_tower(4), bad)
    nested = nvfp4.recipes.get("nvfp4").replace(
        name="nested", layers=dataclasses.replace(policy, edge_recipe="nvfp4-mxfp8-edges")
    )
    with pytest.raises(ValueError, match="names an edge recipe of its own"):
        nvfp4.convert(_tower(4), nested)


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
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
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


def test_exclude_adds_to_the_default_exclusions_and_can_drop_them():
    model = nvfp4.convert(_tower(4), "nvfp4-all-fp4", exclude=("blocks.2.*",))
    assert type(model.lm_head) is nn.Linear and type(model.blocks[2][0]) is nn.Linear  # both kept
    assert isinstance(model.blocks[1][0], nvfp4.Linear)
    bare = nvfp4.convert(_tower(4), "nvfp4-all-fp4", default_exclusions=False)
    assert isinstance(bare.lm_head, nvfp4.Linear)
    with pytest.raises(ValueError, match="not the string"):
        nvfp4.convert(_tower(2), "nvfp4", exclude="lm_head")


@pytest.mark.parametrize("head", ["embed_out", "output_layer", "score", "classifier", "output", "lm_head"])
def test_common_head_names_stay_high_precision(head):
    model = _tower(2)
    setattr(model, head, nn.Linear(16, 10))
    nvfp4.convert(model, "nvfp4-all-fp4")
    assert type(getattr(model, head)) is nn.Linear
    assert "excluded by name" in next(r.treatment for r in nvfp4.conversion_report(model) if r.name == head)


def test_filter_fn_keeps_what_it_rejects():
    model = nvfp4.convert(_tower(4), "nvfp4-all-fp4", filter_fn=lambda module, fqn: module.out_features != 16)
    assert all(isinstance(b[0], nvfp4.Linear) and type(b[1]) is nn.Linear for b in model.blocks)
    report = nvfp4.conversion_report(model)
    assert {r.treatment for r in report if r.name.endswith(".1")} == {"bf16 (filter_fn)"}


def test_report_counts_parameters_and_grouped_expert_weights_are_named():
    model = _tower(4)
    report = nvfp4.conversion_report(nvfp4.convert(model, "nvfp4"))
    assert report.quantized_parameters == 2 * (16 * 32 + 32 * 16)  # blocks 1 and 2
    assert report.model_parameters == sum(p.numel() for p in model.parameters())
    assert f"{report.quantized_parameters:,} of {report.model_parameters:,} parameters" in str(report)
    moe = _tower(2)
    moe.experts = nn.Module()
    moe.experts.gate_up_proj = nn.Parameter(torch.randn(4, 16, 64))  # transformers 5.x stores experts like this
    with pytest.warns(UserWarning, match=r"1 3-D \(grouped expert\) weight parameters, \d+\.\d% .*experts.gate_up"):
        nvfp4.convert(moe, "nvfp4")
