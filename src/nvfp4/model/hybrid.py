"""A Nemotron-H-style hybrid language model: Mamba-2, attention and FFN blocks in one residual stream.

The paper's 12B model is this architecture (Nemotron-Nano-12B-v2: 62 blocks, 28 Mamba-2, 28 FFN, 6 attention). A
pattern string lists the blocks: ``M`` a Mamba-2 mixer, ``*`` self-attention, ``-`` an FFN. Every block is
``x + mixer(RMSNorm(x))``; a final RMSNorm and an untied output head close the stack. There are no positional
embeddings (the Mamba blocks carry position) and no biases in linears.

- FFN: down(relu(up·x)²), not gated.
- Attention: grouped-query, causal, no rotary embeddings.
- Mamba-2: one ``in_proj`` makes [z, x, B, C, dt]; a depthwise causal conv1d (kernel 4, with bias) and SiLU over
  [x, B, C]; the SSD scan (``ssd_scan``, FP32) with dt = softplus(dt + dt_bias) and A = −exp(A_log); a per-head D
  skip on the conv's x; a gated RMSNorm per group (x·silu(z), then normalised over each group of d_inner/G
  channels); ``out_proj``. Heads share B and C within a group of H/G heads.

Under a recipe exactly the linears run in FP4 (Mamba in_proj/out_proj, attention q/k/v/o, FFN up/down); the conv,
the scan, the norms, the embedding and the head stay in high precision. Blocks are one class with a ``kind``, so
``nvfp4.convert`` counts them by pattern position, as Megatron's ``first_last_layers_bf16`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from nvfp4.model.gpt import language_model_head, run_blocks

KINDS = {"M": "mamba", "*": "attention", "-": "mlp"}


@dataclass(frozen=True)
class HybridConfig:
    pattern: str = "M-M-M-M*-"
    vocab_size: int = 8192
    d_model: int = 128
    seq_len: int = 256
    # attention blocks
    n_head: int = 4
    n_kv_head: int = 2
    head_dim: int | None = None  # default d_model / n_head
    # FFN blocks
    d_ff: int = 512
    # Mamba-2 blocks: d_inner = mamba_heads * mamba_head_dim (2 * d_model in Nemotron-H)
    mamba_heads: int = 16
    mamba_head_dim: int = 16
    mamba_groups: int = 1
    state_size: int = 64
    conv_kernel: int = 4
    chunk_size: int = 64  # 128 on GPUs; 64 is faster on the CPU
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_floor: float = 1e-4
    a_init_range: tuple[float, float] = (1.0, 16.0)
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "a_init_range", tuple(self.a_init_range))
        bad = sorted(set(self.pattern) - set(KINDS))
        if not self.pattern or bad:
            raise ValueError(
                f"hybrid pattern {self.pattern!r} must be made of M (Mamba-2), * (attention) and - (FFN)"
                + (f"; got {bad}" if bad else "")
            )
        for name in (
            "vocab_size",
            "d_model",
            "seq_len",
            "n_head",
            "n_kv_head",
            "d_ff",
            "mamba_heads",
            "mamba_head_dim",
            "mamba_groups",
            "state_size",
            "conv_kernel",
            "chunk_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"HybridConfig.{name} must be positive, got {getattr(self, name)}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        if self.head_dim is None and self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}; set head_dim")
        if self.mamba_heads % self.mamba_groups:
            raise ValueError(f"mamba_heads={self.mamba_heads} is not divisible by mamba_groups={self.mamba_groups}")

    @property
    def kinds(self) -> list[str]:
        return [KINDS[c] for c in self.pattern]

    @property
    def n_layer(self) -> int:
        return len(self.pattern)

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def d_inner(self) -> int:
        return self.mamba_heads * self.mamba_head_dim

    @property
    def in_proj_width(self) -> int:
        """[z, x, B, C, dt]: 2·d_inner + 2·G·N + H."""
        return 2 * self.d_inner + 2 * self.mamba_groups * self.state_size + self.mamba_heads


_12B = "M-M-M-M*-" * 6 + "M-M-M-M-"
_8B = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"

HYBRID_PRESETS: dict[str, HybridConfig] = {
    "hybrid-tiny": HybridConfig(
        pattern="M-M-M-M*-",
        d_model=128,
        d_ff=512,
        n_head=4,
        n_kv_head=2,
        mamba_heads=16,
        mamba_head_dim=16,
        mamba_groups=1,
        state_size=64,
    ),
    "hybrid-small": HybridConfig(
        pattern="M-M-M-M*-M-M-M-M-",
        d_model=256,
        d_ff=1024,
        n_head=4,
        n_kv_head=2,
        mamba_heads=16,
        mamba_head_dim=32,
        mamba_groups=2,
        state_size=64,
    ),
    "hybrid-half12b": HybridConfig(
        pattern="M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-",
        d_model=256,
        d_ff=1024,
        n_head=4,
        n_kv_head=2,
        mamba_heads=16,
        mamba_head_dim=32,
        mamba_groups=2,
        state_size=64,
    ),
    # shape-only (build on the meta device): the layer policy, parameter counts, GPU users
    "nemotron-h-8b": HybridConfig(
        pattern=_8B,
        vocab_size=131072,
        d_model=4096,
        seq_len=8192,
        n_head=32,
        n_kv_head=8,
        head_dim=128,
        d_ff=21504,
        mamba_heads=128,
        mamba_head_dim=64,
        mamba_groups=8,
        state_size=128,
        chunk_size=128,
    ),
    "nemotron-h-12b": HybridConfig(
        pattern=_12B,
        vocab_size=131072,
        d_model=5120,
        seq_len=8192,
        n_head=40,
        n_kv_head=8,
        head_dim=128,
        d_ff=20480,
        mamba_heads=128,
        mamba_head_dim=80,
        mamba_groups=8,
        state_size=128,
        chunk_size=128,
    ),
}


def hybrid_config(name: str, **overrides) -> HybridConfig:
    if name not in HYBRID_PRESETS:
        raise ValueError(f"unknown hybrid preset {name!r}; valid presets: {sorted(HYBRID_PRESETS)}")
    return replace(HYBRID_PRESETS[name], **overrides)


# -- the SSD scan -------------------------------------------------------------------------------------------------


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """S[..., i, j] = a[..., j+1] + … + a[..., i] for j ≤ i (0 on the diagonal), −inf above it.

    Built by a masked cumulative sum, not as a difference of two cumsums, which would cancel catastrophically when
    the decays are large."""
    n = a.shape[-1]
    below = torch.tril(torch.ones(n, n, dtype=torch.bool, device=a.device), diagonal=-1)
    terms = a[..., None, :].expand(*a.shape[:-1], n, n).transpose(-1, -2)  # terms[..., k, j] = a[k]
    sums = torch.cumsum(terms.masked_fill(~below, 0.0), dim=-2)  # sums[..., i, j] = Σ_{j<k≤i} a[k]
    keep = torch.tril(torch.ones(n, n, dtype=torch.bool, device=a.device))
    return sums.masked_fill(~keep, -math.inf)


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """The Mamba-2 recurrence h_t = exp(dt_t·A)·h_{t−1} + dt_t·B_t ⊗ x_t, y_t = C_t·h_t + D·x_t, in chunks, FP32.

    x: (b, t, H, P); dt: (b, t, H), already softplus'ed; A, D: (H,); B, C: (b, t, G, N) shared by the H/G heads of
    a group. Within a chunk the scan is a masked attention-like product; between chunks the states are carried by a
    loop over the t/chunk_size chunks. Returns y: (b, t, H, P) in FP32 (float64 for float64 inputs)."""
    b, t, heads, p = x.shape
    groups = B.shape[2]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 only for the tests
    x, dt, A, D = x.to(work), dt.to(work), A.to(work), D.to(work)
    B = B.to(work).repeat_interleave(heads // groups, dim=2)  # (b, t, H, N)
    C = C.to(work).repeat_interleave(heads // groups, dim=2)
    pad = -t % chunk_size
    if pad:
        x, dt, B, C = (F.pad(v, (0, 0) * (v.dim() - 2) + (0, pad)) for v in (x, dt, B, C))
    n_chunks = x.shape[1] // chunk_size

    def chunks(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(b, n_chunks, chunk_size, *v.shape[2:])

    xd = chunks(x * dt[..., None])  # dt-weighted inputs (b, c, l, H, P)
    decay = chunks(dt * A)  # log decay per step (b, c, l, H), <= 0
    Bc, Cc = chunks(B), chunks(C)
    decay = decay.permute(0, 3, 1, 2)  # (b, H, c, l)
    decay_cum = torch.cumsum(decay, dim=-1)
    # 1. within each chunk: y_l = Σ_{s≤l} (C_l·B_s) exp(Σ_{s<k≤l} decay_k) xd_s
    weights = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * torch.exp(segment_sums(decay))
    y = torch.einsum("bhcls,bcshp->bclhp", weights, xd)
    # 2. each chunk's own end state, and 3. the states carried into each chunk
    to_end = torch.exp(decay_cum[..., -1:] - decay_cum)  # (b, H, c, l)
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, xd)
    chunk_decay = torch.exp(decay_cum[..., -1])  # (b, H, c)
    carried = []
    state = torch.zeros_like(chunk_states[:, 0])
    for c in range(n_chunks):
        carried.append(state)
        state = state * chunk_decay[:, :, c, None, None] + chunk_states[:, c]
    carried = torch.stack(carried, dim=1)  # (b, c, H, P, N)
    # 4. the carried state's contribution: y_l += exp(Σ_{k≤l} decay_k) C_l · state
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, carried, torch.exp(decay_cum))
    y = y.reshape(b, n_chunks * chunk_size, heads, p)[:, :t]
    return y + D[:, None] * x[:, :t]


def sequential_scan(x, dt, A, B, C, D) -> torch.Tensor:
    """The same recurrence, one step at a time (the test oracle, run in float64)."""
    b, t, heads, p = x.shape
    groups = B.shape[2]
    B = B.repeat_interleave(heads // groups, dim=2)
    C = C.repeat_interleave(heads // groups, dim=2)
    h = torch.zeros(b, heads, p, B.shape[-1], dtype=x.dtype)
    ys = []
    for i in range(t):
        h = h * torch.exp(dt[:, i] * A)[..., None, None] + (
            dt[:, i, :, None, None] * x[:, i, :, :, None] * B[:, i, :, None, :]
        )
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, i]) + D[:, None] * x[:, i])
    return torch.stack(ys, dim=1)


# -- the mixers ---------------------------------------------------------------------------------------------------


class GatedRMSNorm(nn.Module):
    """RMSNorm of x·silu(z), normalised over each group of channels (Mamba-2's per-group norm), in FP32."""

    def __init__(self, width: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.group_size, self.eps = group_size, eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.float() * F.silu(z.float())
        g = h.reshape(*h.shape[:-1], -1, self.group_size)
        g = g * torch.rsqrt(g.square().mean(-1, keepdim=True) + self.eps)
        return (self.weight.float() * g.reshape(h.shape)).to(dtype)


class Mamba2(nn.Module):
    def __init__(self, c: HybridConfig):
        super().__init__()
        self.c = c
        conv_width = c.d_inner + 2 * c.mamba_groups * c.state_size
        self.in_proj = nn.Linear(c.d_model, c.in_proj_width, bias=False)
        self.conv1d = nn.Conv1d(conv_width, conv_width, c.conv_kernel, groups=conv_width, padding=c.conv_kernel - 1)
        self.dt_bias = nn.Parameter(torch.empty(c.mamba_heads))
        self.A_log = nn.Parameter(torch.empty(c.mamba_heads))
        self.D = nn.Parameter(torch.empty(c.mamba_heads))
        self.norm = GatedRMSNorm(c.d_inner, c.d_inner // c.mamba_groups, c.norm_eps)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """dt log-uniform on [dt_min, dt_max] (floored) through the inverse softplus; A uniform on a_init_range."""
        c = self.c
        dev = self.dt_bias.device
        u = torch.rand(c.mamba_heads, device=dev)
        dt = torch.exp(u * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min)).clamp(min=c.dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        lo, hi = c.a_init_range
        self.A_log.copy_(torch.log(torch.empty(c.mamba_heads, device=dev).uniform_(lo, hi)))
        self.D.fill_(1.0)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        c = self.c
        b, t, _ = u.shape
        gn = c.mamba_groups * c.state_size
        z, xbc, dt = self.in_proj(u).split([c.d_inner, c.d_inner + 2 * gn, c.mamba_heads], dim=-1)
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :t].transpose(1, 2))
        x, B, C = xbc.split([c.d_inner, gn, gn], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float())
        A = -torch.exp(self.A_log.float())
        y = ssd_scan(
            x.reshape(b, t, c.mamba_heads, c.mamba_head_dim),
            dt,
            A,
            B.reshape(b, t, c.mamba_groups, c.state_size),
            C.reshape(b, t, c.mamba_groups, c.state_size),
            self.D,
            c.chunk_size,
        )
        y = self.norm(y.reshape(b, t, c.d_inner).to(u.dtype), z)
        return self.out_proj(y)


class Attention(nn.Module):
    """Causal grouped-query attention without positional embeddings (the Mamba blocks carry position)."""

    def __init__(self, c: HybridConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = c.n_head, c.n_kv_head, c.attn_head_dim
        self.q_proj = nn.Linear(c.d_model, c.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_head * self.head_dim, c.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_head != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """down(relu(up·x)²): the squared-ReLU FFN, not gated."""

    def __init__(self, c: HybridConfig):
        super().__init__()
        self.up_proj = nn.Linear(c.d_model, c.d_ff, bias=False)
        self.down_proj = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


_MIXERS = {"mamba": Mamba2, "attention": Attention, "mlp": MLP}


class HybridBlock(nn.Module):
    """x + mixer(RMSNorm(x)), the mixer chosen by ``kind`` (mamba, attention or mlp)."""

    def __init__(self, c: HybridConfig, kind: str):
        super().__init__()
        self.kind = kind
        self.norm = nn.RMSNorm(c.d_model, eps=c.norm_eps)
        self.mixer = _MIXERS[kind](c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))

    def extra_repr(self) -> str:
        return f"kind={self.kind}"


class HybridLM(nn.Module):
    def __init__(self, config: HybridConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(HybridBlock(config, kind) for kind in config.kinds)
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.activation_checkpointing = False
        self.checkpoint_context: Callable[[nn.Module], tuple] | None = None
        if self.embed.weight.device.type != "meta":
            self.reset_parameters()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) linears and embedding; the residual outputs (o_proj, down_proj, out_proj) shrunk by
        1/sqrt(blocks), as each block adds one branch; Mamba's dt, A and D as in Mamba-2."""
        std = self.config.init_std
        residual_std = std / math.sqrt(self.num_blocks)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                out = name.endswith(("o_proj", "down_proj", "out_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if out else std)
            elif isinstance(module, nn.RMSNorm | GatedRMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, nn.Conv1d):
                module.reset_parameters()
            elif isinstance(module, Mamba2):
                module.reset_ssm_parameters()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: (B, T) token ids (targets may use -100). Returns logits and the mean FP32 cross-entropy."""
        if idx.shape[1] > self.config.seq_len:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds the model's seq_len={self.config.seq_len}; "
                "crop the input or build the model with a larger seq_len"
            )
        return language_model_head(self, run_blocks(self, self.embed(idx)), targets)
