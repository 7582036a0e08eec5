"""A small decoder-only transformer (GPT) in plain PyTorch.

The model knows nothing about quantization on purpose: every matmul goes through a named
``nn.Linear(bias=False)`` submodule, so a converter can swap those modules for NVFP4 ones by
name (``embed`` and ``lm_head`` stay high precision, as in the paper).

Presets (parameter counts from ``count_parameters`` with the preset's vocab):

============  ==================  ===============  =====  ===========================
preset        non-embedding       total            vocab  use
============  ==================  ===============  =====  ===========================
``tiny``      1,083,008 (1.1M)    3,180,160        8192   CPU smoke tests
``small``     9,442,176 (9.4M)    15,733,632       8192   CPU experiments
``base``      75,516,672 (75.5M)  125,848,320      32768  GPU, GPT-2-small sized total
============  ==================  ===============  =====  ===========================
"""

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, noop_context_fn

MLP_KINDS = ("relu2", "swiglu")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 8192
    n_layer: int = 6
    n_head: int = 4
    n_kv_head: int = 2  # grouped-query attention: each K/V head serves n_head // n_kv_head query heads
    d_model: int = 128
    d_ff: int = 512  # hidden width of the MLP
    seq_len: int = 256  # longest context the rotary tables cover
    mlp: str = "relu2"  # "relu2" (squared ReLU, as in the paper's models) or "swiglu"
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("rope_base", "norm_eps", "init_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.mlp not in MLP_KINDS:
            raise ValueError(f"GPTConfig.mlp={self.mlp!r} is unknown; use one of {MLP_KINDS}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; pick n_head that divides d_model"
            )
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}; "
                "pick n_kv_head that divides n_head (n_kv_head == n_head is plain multi-head attention)"
            )
        if self.head_dim % 2:
            raise ValueError(
                f"head_dim = d_model / n_head = {self.head_dim} is odd, but rotary embeddings rotate "
                "pairs of channels; choose d_model and n_head so that head_dim is even"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(vocab_size=8192, n_layer=6, n_head=4, n_kv_head=2, d_model=128, d_ff=512, seq_len=256),
    "small": GPTConfig(vocab_size=8192, n_layer=6, n_head=6, n_kv_head=2, d_model=384, d_ff=1536, seq_len=512),
    "base": GPTConfig(vocab_size=32768, n_layer=12, n_head=12, n_kv_head=4, d_model=768, d_ff=3072, seq_len=1024),
}


def config_from_preset(name: str, **overrides) -> GPTConfig:
    """A preset with some fields replaced (validation runs again on the result)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def count_parameters(model: nn.Module, non_embedding: bool = True) -> int:
    """Parameter count; non-embedding leaves out ``embed`` and ``lm_head``, the vocab-sized matrices
    whose size depends on the tokenizer rather than on the model's capacity."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not (non_embedding and name.split(".")[0] in ("embed", "lm_head"))
    )


class Rotary(nn.Module):
    """Rotary position embeddings: rotating q and k by position-dependent angles makes q.k depend
    only on the offset between positions."""

    def __init__(self, head_dim: int, seq_len: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)  # (seq_len, head_dim/2)
        # Non-persistent: derived from the config, so checkpoints need not carry them. model.to(bf16)
        # would round them too; mixed precision should come from autocast, which leaves them in fp32.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, head_dim). Rotates channel i with channel i + head_dim/2, in fp32."""
        seq = x.shape[-2]
        cos, sin = self.cos[:seq].float(), self.sin[:seq].float()
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        kv_width = config.n_kv_head * config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k_proj = nn.Linear(config.d_model, kv_width, bias=False)
        self.v_proj = nn.Linear(config.d_model, kv_width, bias=False)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.rotary = Rotary(config.head_dim, config.seq_len, config.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q = self.q_proj(x).view(batch, seq, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(batch, seq, width))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.mlp
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            hidden = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            hidden = F.relu(self.up_proj(x)).square()
        return self.down_proj(hidden)


class Block(nn.Module):
    """Pre-norm residual block: the residual stream itself is never normalized, which keeps deep
    stacks trainable."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # untied from embed
        # Activation checkpointing (a run-time choice, not architecture): recompute each block in backward instead
        # of keeping its activations. ``checkpoint_context(block)`` gives the context_fn pair for the recompute;
        # nvfp4.convert installs one that replays the layers' stochastic-rounding counters.
        self.activation_checkpointing = False
        self.checkpoint_context: Callable[[nn.Module], tuple] | None = None
        self.reset_parameters()

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPT":
        return cls(config_from_preset(name, **overrides))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 style init; the residual output projections are shrunk by 1/sqrt(2 n_layer) so the
        residual stream's variance does not grow with depth (each block adds two branches)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                is_residual_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx, targets: (B, T) token ids; targets may use -100 to skip positions.
        Returns logits (B, T, vocab) and the mean FP32 cross-entropy (None without targets)."""
        seq = idx.shape[1]
        if seq > self.config.seq_len:
            raise ValueError(
                f"sequence length {seq} exceeds the model's seq_len={self.config.seq_len}; "
                "crop the input or build the model with a larger seq_len"
            )
        return language_model_head(self, run_blocks(self, self.embed(idx)), targets)


def run_blocks(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.blocks`` in order, each recomputed in backward when ``model.activation_checkpointing`` is set (with the
    ``model.checkpoint_context`` that replays the SR counters). Shared by the GPT and the hybrid."""
    for block in model.blocks:
        if model.activation_checkpointing and torch.is_grad_enabled():
            context = model.checkpoint_context
            context_fn = noop_context_fn if context is None else functools.partial(context, block)
            x = checkpoint(block, x, use_reentrant=False, context_fn=context_fn)
        else:
            x = block(x)
    return x


def language_model_head(model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None):
    """Final norm, output head, and the mean FP32 cross-entropy against ``targets`` (None without targets)."""
    logits = model.lm_head(model.final_norm(x))
    if targets is None:
        return logits, None
    # Upcast: a bf16 softmax over a large vocab loses the small probabilities the loss depends on.
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    return logits, loss
