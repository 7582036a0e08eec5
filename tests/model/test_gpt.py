import math
import re

import pytest
import torch
import torch.nn.functional as F

from nvfp4.model import GPT, PRESETS, GPTConfig, config_from_preset, count_parameters
from nvfp4.model.gpt import MLP, Attention, Rotary

MICRO = dict(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, seq_len=16)


def micro_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**MICRO, **overrides}))


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(d_model=30), "not divisible by n_head"),
        (dict(n_kv_head=3), "not divisible by n_kv_head"),
        (dict(d_model=36, n_head=12, n_kv_head=4), "head_dim"),
        (dict(n_layer=0), "n_layer must be positive"),
        (dict(vocab_size=-1), "vocab_size must be positive"),
        (dict(init_std=0.0), "init_std must be positive"),
        (dict(mlp="gelu"), "mlp='gelu' is unknown"),
    ],
)
def test_bad_config_raises_clear_error(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GPTConfig(**{**MICRO, **overrides})


def test_config_from_preset_overrides_and_revalidates():
    config = config_from_preset("tiny", vocab_size=123, mlp="swiglu")
    assert (config.vocab_size, config.mlp, config.d_model) == (123, "swiglu", PRESETS["tiny"].d_model)
    with pytest.raises(ValueError, match="n_head"):
        config_from_preset("tiny", n_head=5)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="base.*small.*tiny"):
        config_from_preset("huge")


@pytest.mark.parametrize(
    "name, non_embedding_range, total_range",
    [
        ("tiny", (0.8e6, 1.3e6), (2e6, 4e6)),
        ("small", (8e6, 12e6), (12e6, 20e6)),
        ("base", (60e6, 90e6), (110e6, 140e6)),
    ],
)
def test_preset_parameter_counts(name, non_embedding_range, total_range):
    with torch.device("meta"):  # no memory for the 125M-parameter base model
        model = GPT.from_preset(name)
    assert non_embedding_range[0] <= count_parameters(model) <= non_embedding_range[1]
    assert total_range[0] <= count_parameters(model, non_embedding=False) <= total_range[1]


@pytest.mark.parametrize("mlp, mlp_matrices", [("relu2", 2), ("swiglu", 3)])
def test_count_parameters_matches_hand_count(mlp, mlp_matrices):
    c = GPTConfig(**{**MICRO, "mlp": mlp})
    kv_width = c.n_kv_head * c.head_dim
    per_block = 2 * c.d_model * c.d_model + 2 * c.d_model * kv_width + mlp_matrices * c.d_model * c.d_ff
    per_block += 2 * c.d_model  # two RMSNorm gains
    non_embedding = c.n_layer * per_block + c.d_model  # + final norm
    model = GPT(c)
    assert count_parameters(model) == non_embedding
    assert count_parameters(model, non_embedding=False) == non_embedding + 2 * c.vocab_size * c.d_model


def test_from_preset_and_num_blocks():
    model = GPT.from_preset("tiny", vocab_size=100, n_layer=3)
    assert model.num_blocks == 3 and model.lm_head.out_features == 100


# --- structure and init --------------------------------------------------------------------------


@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_state_dict_names_and_no_biases(mlp):
    keys = set(micro_model(mlp=mlp).state_dict())
    block_linears = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj"]
    block_linears += ["mlp.up_proj", "mlp.down_proj"]
    if mlp == "swiglu":
        block_linears.append("mlp.gate_proj")
    expected = {"embed.weight", "lm_head.weight", "final_norm.weight"}
    for i in range(MICRO["n_layer"]):
        expected |= {f"blocks.{i}.{name}.weight" for name in block_linears}
        expected |= {f"blocks.{i}.attn_norm.weight", f"blocks.{i}.mlp_norm.weight"}
    assert keys == expected  # also: no biases, no rotary tables


def test_lm_head_is_untied_from_embedding():
    model = micro_model()
    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.embed.weight)


def test_init_is_deterministic_and_scales_residual_projections():
    wide = dict(n_layer=8, d_model=128, n_head=4, d_ff=256)  # enough weights for a stable std estimate
    a, b = micro_model(seed=3, **wide), micro_model(seed=3, **wide)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    std = a.config.init_std
    assert a.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    assert a.embed.weight.std().item() == pytest.approx(std, rel=0.05)
    scaled = std / math.sqrt(2 * 8)
    assert a.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert a.blocks[0].mlp.down_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert not torch.equal(micro_model(seed=4).embed.weight, micro_model(seed=3).embed.weight)


# --- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mlp", ["relu2", "swiglu"])
def test_forward_shapes(mlp):
    model = micro_model(mlp=mlp)
    idx = torch.randint(0, MICRO["vocab_size"], (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, MICRO["vocab_size"]) and loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and loss.dtype == torch.float32


def test_too_long_sequence_raises():
    with pytest.raises(ValueError, match="exceeds the model's seq_len=16"):
        micro_model()(torch.zeros(1, 17, dtype=torch.long))


def test_initial_loss_is_near_uniform():
    model = micro_model(vocab_size=512)
    idx = torch.randint(0, 512, (4, 16))
    _, loss = model(idx, torch.randint(0, 512, (4, 16)))
    assert loss.item() == pytest.approx(math.log(512), abs=0.1)


def test_ignored_targets_do_not_count():
    model = micro_model()
    idx = torch.randint(0, MICRO["vocab_size"], (2, 8))
    targets = torch.randint(0, MICRO["vocab_size"], (2, 8))
    targets[:, :5] = -100
    logits, loss = model(idx, targets)
    expected = F.cross_entropy(logits[:, 5:].reshape(-1, MICRO["vocab_size"]), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_causality():
    model = micro_model()
    idx = torch.randint(0, MICRO["vocab_size"], (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % MICRO["vocab_size"]
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=1e-6)
    assert (before[:, 7:] - after[:, 7:]).abs().amax(-1).min() > 1e-4  # every later position sees it


@pytest.mark.parametrize("n_kv", [1, 2, 4])  # multi-query, grouped-query, multi-head
def test_attention_matches_manual_float64(n_kv):
    """Independent reference: complex-number rotary, explicit K/V head sharing, masked softmax."""
    config = GPTConfig(**{**MICRO, "n_head": 4, "n_kv_head": n_kv, "d_model": 32})
    torch.manual_seed(0)
    attn = Attention(config).double()
    for linear in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
        torch.nn.init.normal_(linear.weight, std=0.3)
    batch, seq, n_head, hd = 2, 9, 4, config.head_dim
    x = torch.randn(batch, seq, config.d_model, dtype=torch.float64)

    def heads(t, n):
        return t.view(batch, seq, n, hd)

    q = heads(x @ attn.q_proj.weight.T, n_head)
    k = heads(x @ attn.k_proj.weight.T, n_kv)
    v = heads(x @ attn.v_proj.weight.T, n_kv)
    freqs = config.rope_base ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    phase = torch.polar(
        torch.ones(seq, hd // 2, dtype=torch.float64), torch.arange(seq, dtype=torch.float64)[:, None] * freqs
    )[None, :, None]

    def rotate(t):  # channel i pairs with channel i + hd/2 (real, imaginary)
        z = torch.complex(t[..., : hd // 2], t[..., hd // 2 :]) * phase
        return torch.cat((z.real, z.imag), dim=-1)

    q, k = rotate(q), rotate(k)
    out = torch.empty(batch, seq, n_head, hd, dtype=torch.float64)
    mask = torch.ones(seq, seq).tril().bool()
    for h in range(n_head):
        kv = h // (n_head // n_kv)
        scores = q[:, :, h] @ k[:, :, kv].transpose(-1, -2) / math.sqrt(hd)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out[:, :, h] = weights @ v[:, :, kv]
    # The rotary tables are stored in fp32, so agreement is to fp32 rounding of cos/sin.
    expected = out.reshape(batch, seq, -1) @ attn.o_proj.weight.T
    torch.testing.assert_close(attn(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["relu2", "swiglu"])
def test_mlp_computes_its_activation(kind):
    torch.manual_seed(0)
    mlp = MLP(GPTConfig(**{**MICRO, "mlp": kind}))
    x = torch.randn(3, MICRO["d_model"])
    up = x @ mlp.up_proj.weight.T
    if kind == "relu2":
        hidden = torch.where(up > 0, up * up, torch.zeros_like(up))
    else:
        gate = x @ mlp.gate_proj.weight.T
        hidden = gate * torch.sigmoid(gate) * up
    torch.testing.assert_close(mlp(x), hidden @ mlp.down_proj.weight.T)


def test_rotary_scores_depend_only_on_relative_offset():
    rotary = Rotary(head_dim=16, seq_len=64, base=10000.0)
    torch.manual_seed(0)
    q_vec, k_vec = torch.randn(16), torch.randn(16)
    q = rotary(q_vec.expand(1, 1, 64, 16)).squeeze()
    k = rotary(k_vec.expand(1, 1, 64, 16)).squeeze()
    scores = q @ k.T  # scores[i, j] = <q at position i, k at position j>
    for offset in (0, 3, 17):
        diagonal = torch.diagonal(scores, offset=-offset)  # all pairs with i - j == offset
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-4, atol=1e-4)
    assert abs(scores[3, 0] - scores[0, 0]) > 1e-2  # but it does depend on the offset
    torch.testing.assert_close(q.norm(dim=-1), q_vec.norm().expand(64))  # rotations keep lengths


# --- training and precision ----------------------------------------------------------------------


def test_adamw_overfits_a_repeated_batch():
    model = micro_model()
    idx = torch.randint(0, MICRO["vocab_size"], (4, 16))
    targets = torch.roll(idx, -1, dims=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    _, first = model(idx, targets)
    for _ in range(40):
        _, loss = model(idx, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first.item()


def test_bf16_autocast_is_close_to_fp32():
    model = micro_model(vocab_size=256)
    idx = torch.randint(0, 256, (2, 16))
    ref_logits, ref_loss = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    relative_error = (logits.float() - ref_logits).norm() / ref_logits.norm()
    assert 0 < relative_error < 0.02
    assert loss.item() == pytest.approx(ref_loss.item(), abs=0.02)
    loss.backward()
    assert model.blocks[0].attn.q_proj.weight.grad is not None


def test_loss_is_fp32_even_for_a_bf16_model():
    model = micro_model().to(torch.bfloat16)
    idx = torch.randint(0, MICRO["vocab_size"], (2, 8))
    logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32


def test_compiles_without_graph_breaks():
    model = micro_model()
    idx = torch.randint(0, MICRO["vocab_size"], (2, 8))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(idx, idx)[1], model(idx, idx)[1])


@pytest.mark.slow
def test_compiles_with_inductor():
    model = GPT.from_preset("tiny", vocab_size=512)
    idx = torch.randint(0, 512, (2, 32))
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(idx, idx)[1], model(idx, idx)[1], rtol=1e-4, atol=1e-4)
