"""The Nemotron-H-style hybrid: the SSD scan against the plain recurrence, the model against transformers'
NemotronH, the paper's layer policy on the 8B/12B patterns, and training with every recipe."""

from __future__ import annotations

import pytest
import torch

import nvfp4
from nvfp4.model import build, count_parameters, model_config
from nvfp4.model.hybrid import HybridConfig, HybridLM, segment_sums, sequential_scan, ssd_scan


def scan_inputs(b=2, t=37, heads=4, p=3, groups=2, n=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, heads, p, generator=g, dtype=dtype)
    dt = torch.rand(b, t, heads, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(heads, generator=g, dtype=dtype) * 3
    B = torch.randn(b, t, groups, n, generator=g, dtype=dtype)
    C = torch.randn(b, t, groups, n, generator=g, dtype=dtype)
    D = torch.randn(heads, generator=g, dtype=dtype)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("chunk", [1, 4, 16, 64])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_scan_is_the_recurrence(chunk, groups):
    inputs = scan_inputs(groups=groups)
    torch.testing.assert_close(ssd_scan(*inputs, chunk), sequential_scan(*inputs), rtol=1e-12, atol=1e-12)


def test_chunked_scan_gradients_are_the_recurrences():
    inputs = [t.requires_grad_() for t in scan_inputs(t=20)]
    out = ssd_scan(*inputs, 8)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), inputs)
    ref = torch.autograd.grad((sequential_scan(*inputs) * weights).sum(), inputs)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_segment_sums_are_stable_for_large_decays():
    a = torch.full((1, 64), -50.0)
    s = segment_sums(a)
    assert torch.isfinite(s.diagonal(dim1=-2, dim2=-1)).all() and (s.diagonal(dim1=-2, dim2=-1) == 0).all()
    assert s[0, 63, 0].item() == pytest.approx(-50.0 * 63)
    assert torch.isneginf(s[0, 0, 1])
    x, dt, A, B, C, D = scan_inputs(t=64)
    y = ssd_scan(x.float(), dt.float() * 100, A.float() * 10, B.float(), C.float(), D.float(), 32)
    assert torch.isfinite(y).all()


def test_presets_and_the_papers_policy_on_the_8b_and_12b_patterns():
    c12 = model_config("nemotron-h-12b")
    assert len(c12.pattern) == 62 and [i for i, k in enumerate(c12.pattern) if k == "*"] == [7, 16, 25, 34, 43, 52]
    assert (c12.kinds.count("mamba"), c12.kinds.count("mlp"), c12.kinds.count("attention")) == (28, 28, 6)
    assert c12.in_proj_width == 2 * 10240 + 2 * 8 * 128 + 128 and c12.in_proj_width % 16 == 0
    model = build("nemotron-h-12b", device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert 12.0e9 < sum(p.numel() for p in model.parameters()) < 12.5e9
    nvfp4.convert(model, "nvfp4")
    report = nvfp4.conversion_report(model)
    kept = sorted({r.block for r in report if r.block is not None and not r.treatment.startswith("quantized")})
    assert kept == [0, 1, *range(54, 62)]  # the paper's first two and last eight, counted by pattern position
    assert all(r.treatment.startswith("quantized") for r in report if r.kind == "attention")
    assert "kind" in str(report).splitlines()[0]
    c8 = model_config("nemotron-h-8b")
    assert len(c8.pattern) == 52 and c8.pattern.count("*") == 4
    assert 7.5e6 < count_parameters(build("hybrid-small")) < 8.5e6  # ~8M non-embedding
    with pytest.raises(ValueError, match="pattern"):
        HybridConfig(pattern="M-X")
    with pytest.raises(ValueError, match="no n_layer override"):
        model_config("hybrid-tiny", n_layer=3)


TINY = dict(
    pattern="M-*-M",
    vocab_size=97,
    d_model=64,
    d_ff=128,
    n_head=4,
    n_kv_head=2,
    mamba_heads=8,
    mamba_head_dim=16,
    mamba_groups=2,
    state_size=16,
    chunk_size=8,
    seq_len=64,
)


@pytest.mark.parametrize("recipe", nvfp4.recipes.names())
def test_a_converted_hybrid_trains_with_every_recipe(recipe):
    torch.manual_seed(0)
    model = HybridLM(HybridConfig(**{**TINY, "pattern": "M-*-M-M-"}))
    nvfp4.convert(model, nvfp4.recipes.get(recipe).replace(layers=nvfp4.LayerPolicy()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 97, (2, 32))
    losses = []
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, torch.roll(x, -1, 1))
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    quantized = {r.kind for r in nvfp4.conversion_report(model) if r.treatment.startswith("quantized")}
    assert quantized == ({"mamba", "attention", "mlp"} if nvfp4.recipes.get(recipe).quantized else set())


def test_matches_transformers_nemotron_h():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "NemotronHForCausalLM"):
        pytest.skip("transformers without NemotronH (needs >= 5.3)")
    torch.manual_seed(0)
    ours = HybridLM(HybridConfig(**TINY)).float()
    c = ours.config
    hf_config = transformers.NemotronHConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        layers_block_type=[
            {"mamba": "linear_attention", "attention": "full_attention", "mlp": "mlp"}[k] for k in c.kinds
        ],
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        head_dim=c.attn_head_dim,
        intermediate_size=c.d_ff,
        mlp_hidden_act="relu2",
        ssm_state_size=c.state_size,
        mamba_num_heads=c.mamba_heads,
        mamba_head_dim=c.mamba_head_dim,
        n_groups=c.mamba_groups,
        conv_kernel=c.conv_kernel,
        chunk_size=c.chunk_size,
        layer_norm_epsilon=c.norm_eps,
        max_position_embeddings=c.seq_len,
        tie_word_embeddings=False,
        use_bias=False,
        use_conv_bias=True,
        mlp_bias=False,
        attention_bias=False,
        residual_in_fp32=False,
    )
    hf = transformers.NemotronHForCausalLM(hf_config).float()
    names = {
        "embed.weight": "model.embeddings.weight",
        "final_norm.weight": "model.norm_f.weight",
        "lm_head.weight": "lm_head.weight",
    }
    state = {names.get(k, "model.layers." + k[len("blocks.") :]): v for k, v in ours.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not [m for m in missing if "inv_freq" not in m], (missing, unexpected)
    x = torch.randint(0, c.vocab_size, (2, 40))  # 40: not a multiple of the chunk
    ours_logits, ours_loss = ours(x, torch.roll(x, -1, 1))
    hf_out = hf(input_ids=x)
    torch.testing.assert_close(hf_out.logits, ours_logits, rtol=1e-4, atol=1e-4)
    hf_loss = torch.nn.functional.cross_entropy(hf_out.logits.view(-1, c.vocab_size), torch.roll(x, -1, 1).view(-1))
    ours_loss.backward()
    hf_loss.backward()
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        theirs = hf_params[names.get(name, "model.layers." + name[len("blocks.") :])]
        torch.testing.assert_close(theirs.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
