"""``nvfp4 export``: an ``nvfp4 train`` checkpoint as a Hugging Face model, or as vLLM's NVFP4 checkpoint.

    nvfp4 export runs/small-nvfp4 --format hf --out exported/hf                  # transformers LlamaForCausalLM
    nvfp4 export runs/hybrid-small --format hf --out exported/hybrid             # transformers NemotronH
    nvfp4 export runs/small-nvfp4 --format compressed-tensors --out exported/ct  # nvfp4-pack-quantized (vLLM)

**The GPT as Llama.** Our GPT is Llama's architecture (pre-norm RMSNorm, rotary with the half-split convention,
GQA, untied embeddings, no biases), so it maps onto ``LlamaForCausalLM`` name for name. The SwiGLU MLP is Llama's.
The squared-ReLU MLP, down(relu(up·x)²), is written as Llama's gated MLP with ``hidden_act="relu"`` and
``gate_proj = up_proj``: down(relu(up·x) · up·x) is the same function, bit for bit (relu(u)·u and relu(u)² are the
same product u·u where u > 0, and 0 elsewhere), at the price of storing the up projection twice.

**compressed-tensors.** The HF model with every linear the recipe quantizes stored as NVFP4 (``weight_packed``:
two E2M1 codes per byte, even element in the low nibble; ``weight_scale``: E4M3 per 16-group of a row;
``weight_global_scale``: the FP32 *encode* scale 448·6/amax), written from the FP32 master weights with the
recipe's own forward weight quantizer (16×16 tiles for the paper's recipe: the tile's scale is repeated over its
16 rows), so the exported bits are the bits the training forward used. The ``quantization_config`` names the
layers kept in high precision (the recipe's BF16 blocks and the head) in ``ignore``.

vLLM runs q/k/v as one GEMM and gate/up as one, with one tensor scale each. With ``fuse_scales`` (the default)
those groups are quantized with the group's largest amax: a layer whose own amax is smaller then gets coarser
block scales than in training (its bits differ from the training forward's; the report lists how many layers
that touches). Weight-only by default (W4A16); ``calibrate=N`` also writes each quantized layer's
``input_global_scale`` from the activation amax over N validation batches (W4A4, dynamic per-16 activation scales).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nvfp4
from nvfp4._io import atomic_write
from nvfp4.formats.nvfp4 import global_encode_scale, tensor_amax
from nvfp4.inference import TrainedModel, load_trained
from nvfp4.model import GPT, HybridLM
from nvfp4.quantize import quantize_nvfp4

FORMATS = ("hf", "compressed-tensors")
# the linears vLLM runs as one GEMM with one tensor scale (our names; relu2's up is both gate and up)
_FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _require_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("nvfp4 export needs transformers and safetensors: pip install transformers") from None
    return transformers


def llama_config(model: GPT, eot_id: int, dtype: str) -> Any:
    """The ``transformers.LlamaConfig`` of our GPT (see the module doc for the squared-ReLU MLP)."""
    transformers = _require_transformers()
    c = model.config
    return transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        head_dim=c.head_dim,
        hidden_act="silu" if c.mlp == "swiglu" else "relu",
        max_position_embeddings=c.seq_len,
        rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_base,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        torch_dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def hf_names(ours: str, mlp: str) -> list[str]:
    """The HF Llama parameter name(s) of one of our parameter names."""
    if ours == "embed.weight":
        return ["model.embed_tokens.weight"]
    if ours == "final_norm.weight":
        return ["model.norm.weight"]
    if ours == "lm_head.weight":
        return ["lm_head.weight"]
    parts = ours.split(".")
    if parts[0] != "blocks":
        raise ValueError(f"no Llama name for parameter {ours!r}")
    prefix = f"model.layers.{parts[1]}."
    rest = ".".join(parts[2:])
    if rest == "attn_norm.weight":
        return [prefix + "input_layernorm.weight"]
    if rest == "mlp_norm.weight":
        return [prefix + "post_attention_layernorm.weight"]
    if parts[2] == "attn":
        return [prefix + f"self_attn.{parts[3]}.weight"]
    if parts[2] == "mlp":
        if parts[3] == "up_proj" and mlp == "relu2":
            return [prefix + "mlp.gate_proj.weight", prefix + "mlp.up_proj.weight"]
        return [prefix + f"mlp.{parts[3]}.weight"]
    raise ValueError(f"no Llama name for parameter {ours!r}")


def hf_state_dict(model: GPT, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our GPT's parameters under Llama's names (copies, in ``dtype``)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict().items():
        for hf in hf_names(name, model.config.mlp):
            out[hf] = p.detach().to(dtype).clone().contiguous()
    return out


@dataclass
class ExportReport:
    """What an export wrote: the format, the quantized and the high-precision (ignored) linears."""

    format: str
    out: Path
    quantized: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    fused_scale_layers: list[str] = field(default_factory=list)  # layers whose tensor scale the fusion changed
    calibrated: bool = False

    def summary(self) -> str:
        text = f"wrote {self.out} ({self.format})"
        if self.format == "compressed-tensors":
            text += (
                f": {len(self.quantized)} NVFP4 linears, {len(self.ignore)} kept in high precision "
                f"({'W4A4, calibrated input scales' if self.calibrated else 'weight-only, W4A16'})"
            )
            if self.fused_scale_layers:
                text += (
                    f"; {len(self.fused_scale_layers)} layers share a fused group's tensor scale, so their bits "
                    "differ from the training forward's (--no-fuse-scales keeps them)"
                )
        return text


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} exists and is not empty: choose another --out, or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)


def _save_weights(state: dict[str, torch.Tensor], out: Path) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ImportError("nvfp4 export needs safetensors: pip install safetensors") from None
    tmp = out / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")


def _check_tokenizer(trained: TrainedModel) -> None:
    from nvfp4.data.tokenizer import BPETokenizer

    if not isinstance(trained.tokenizer, BPETokenizer):
        raise ValueError(
            f"the run's {trained.tokenizer.name} tokenizer has no transformers equivalent: pass "
            "--no-tokenizer to export the model alone"
        )


def _save_tokenizer(trained: TrainedModel, out: Path) -> None:
    from nvfp4.data.tokenizer import EOT_TOKEN

    tok = trained.tokenizer
    tok.save(out / "tokenizer.json")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOT_TOKEN,
        "bos_token": EOT_TOKEN,
        "unk_token": None,
        "model_max_length": trained.model.config.seq_len,
        "clean_up_tokenization_spaces": False,
    }
    atomic_write(out / "tokenizer_config.json", json.dumps(config, indent=2).encode())


def _write_config(config: Any, out: Path, extra: dict[str, Any] | None = None) -> None:
    data = config.to_dict()
    data.update(extra or {})
    atomic_write(out / "config.json", json.dumps(data, indent=2, default=str).encode())


def _check_exportable(model: GPT) -> None:
    if not isinstance(model, GPT):
        raise ValueError(
            f"nvfp4 export writes the GPT of `nvfp4 train` checkpoints; a {type(model).__name__} has no "
            "transformers mapping here yet"
        )


def export_hf(
    where: str | Path, out: str | Path, *, dtype: str = "bfloat16", tokenizer: bool = True, overwrite: bool = False
) -> ExportReport:
    """A transformers ``LlamaForCausalLM`` directory (config.json, model.safetensors, tokenizer) of a checkpoint's
    FP32 master weights cast to ``dtype``."""
    out = Path(out)
    trained = load_trained(where, device="cpu", precision="bf16")
    torch_dtype = _dtype(dtype)
    if isinstance(trained.model, HybridLM):  # the paper's architecture: transformers' NemotronH
        config = nemotron_h_config(trained.model, trained.tokenizer.eot_id, dtype)
        state = nemotron_h_state_dict(trained.model, torch_dtype)
    else:
        _check_exportable(trained.model)
        config = llama_config(trained.model, trained.tokenizer.eot_id, dtype)
        state = hf_state_dict(trained.model, torch_dtype)
    _write_export(trained, out, state, config, {}, tokenizer, overwrite)
    return ExportReport("hf", out)


def _write_export(
    trained: TrainedModel,
    out: Path,
    state: dict[str, torch.Tensor],
    config: Any,
    extra: dict[str, Any],
    tokenizer: bool,
    overwrite: bool,
) -> None:
    """Everything checked first, then the directory: tokenizer, model.safetensors, config.json (+ ``extra``)."""
    if tokenizer:
        _check_tokenizer(trained)
    _prepare_out(out, overwrite)
    if tokenizer:
        _save_tokenizer(trained, out)
    _save_weights(state, out)
    _write_config(config, out, {**extra, "nvfp4": _provenance(trained)})


_NEMOTRON_KINDS = {"mamba": "linear_attention", "attention": "full_attention", "mlp": "mlp"}


def nemotron_h_config(model: HybridLM, eot_id: int, dtype: str) -> Any:
    """The ``transformers.NemotronHConfig`` of our hybrid (same blocks, names and arithmetic; tested)."""
    transformers = _require_transformers()
    if not hasattr(transformers, "NemotronHConfig"):
        raise ImportError(
            "exporting the hybrid needs transformers with NemotronH (>= 5.3): pip install -U transformers"
        )
    c = model.config
    return transformers.NemotronHConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        layers_block_type=[_NEMOTRON_KINDS[k] for k in c.kinds],
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
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        torch_dtype=dtype,
        architectures=["NemotronHForCausalLM"],
    )


def nemotron_h_state_dict(model: HybridLM, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our hybrid's parameters under NemotronH's names: blocks.i.* is model.layers.i.* (mixers named alike)."""
    top = {
        "embed.weight": "model.embeddings.weight",
        "final_norm.weight": "model.norm_f.weight",
        "lm_head.weight": "lm_head.weight",
    }
    return {
        top.get(n, "model.layers." + n[len("blocks.") :]): p.detach().to(dtype).clone().contiguous()
        for n, p in model.state_dict().items()
    }


def _dtype(name: str) -> torch.dtype:
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in dtypes:
        raise ValueError(f"--dtype must be one of {', '.join(dtypes)}, got {name!r}")
    return dtypes[name]


def _provenance(trained: TrainedModel) -> dict[str, Any]:
    return {
        "checkpoint": str(trained.checkpoint),
        "step": trained.step,
        "tokens": trained.tokens,
        "recipe": trained.recipe,
        "nvfp4_version": nvfp4.__version__,
    }


def _quantized_linears(model: nn.Module) -> dict[str, nvfp4.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nvfp4.Linear)}


def export_compressed_tensors(
    where: str | Path,
    out: str | Path,
    *,
    fuse_scales: bool = True,
    calibrate: int = 0,
    dtype: str = "bfloat16",
    tokenizer: bool = True,
    overwrite: bool = False,
) -> ExportReport:
    """compressed-tensors ``nvfp4-pack-quantized`` (what vLLM serves as NVFP4) of a checkpoint (see the module doc)."""
    out = Path(out)
    trained = load_trained(where, device="cpu", precision="recipe")
    model = trained.model
    _check_exportable(model)
    torch_dtype = _dtype(dtype)
    layers = _quantized_linears(model)
    if not layers:
        raise ValueError(f"recipe {trained.recipe} quantizes none of this model's linears: export --format hf")
    for name, layer in layers.items():
        cfg = layer.recipe.fprop_w
        if cfg.format != "nvfp4" or cfg.hadamard:
            raise ValueError(
                f"recipe {trained.recipe}'s forward weights are {cfg.format}"
                f"{' with an RHT' if cfg.hadamard else ''}, not plain NVFP4: compressed-tensors "
                "nvfp4-pack-quantized cannot hold them (export --format hf)"
            )
        if layer.in_features % 16 or layer.out_features % 16:
            raise ValueError(
                f"{name} is {layer.out_features}x{layer.in_features}; NVFP4 export needs both "
                "dimensions multiples of 16"
            )
    state = hf_state_dict(model, torch_dtype)
    amax = {n: tensor_amax(layer.weight.detach().float()) for n, layer in layers.items()}
    hf_of = {n: hf_names(n + ".weight", model.config.mlp) for n in layers}
    shared, fused = _fused_amax(amax, fuse_scales)
    input_scales = _calibrate(trained, layers, calibrate, fuse_scales) if calibrate else {}
    for n, layer in layers.items():
        cfg = layer.recipe.fprop_w
        # Four Over Six weights export as they are: vLLM's value * scale / global_scale with the 4/6 tensor scale
        q = quantize_nvfp4(
            layer.weight.detach().float(),
            tile=cfg.tile,
            global_amax=shared[n],
            backend="reference",
            four_over_six=cfg.four_over_six,
        )
        for hf in hf_of[n]:
            base = hf[: -len(".weight")]
            del state[hf]
            state[base + ".weight_packed"] = q.packed.clone()  # a copy each: gate and up may share the bits
            state[base + ".weight_scale"] = q.scales.clone()
            s_enc = global_encode_scale(q.global_amax, q.encode_numerator)
            state[base + ".weight_global_scale"] = s_enc.reshape(1).float().clone()
            if n in input_scales:
                state[base + ".input_global_scale"] = input_scales[n].reshape(1).float().clone()
    quantized_hf = sorted(h[: -len(".weight")] for n in layers for h in hf_of[n])
    all_linears = sorted(
        {h[: -len(".weight")] for h in state if h.endswith(".weight") and "norm" not in h and "embed_tokens" not in h}
        - set(quantized_hf)
    )
    config = llama_config(model, trained.tokenizer.eot_id, dtype)
    qconfig = quantization_config(all_linears, calibrated=bool(calibrate))
    _write_export(trained, out, state, config, {"quantization_config": qconfig}, tokenizer, overwrite)
    report = ExportReport(
        "compressed-tensors",
        out,
        quantized_hf,
        all_linears,
        sorted(hf_of[n][0][: -len(".weight")] for n in fused),
        bool(calibrate),
    )
    return report


def _fused_amax(amax: dict[str, torch.Tensor], fuse: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Each quantized layer's tensor amax for export: its own, or its fused group's largest (q/k/v, gate/up)."""
    shared = dict(amax)
    changed: list[str] = []
    if not fuse:
        return shared, changed
    groups: dict[tuple[str, int], list[str]] = {}
    for name in amax:
        prefix, leaf = name.rsplit(".", 1)
        for g, members in enumerate(_FUSED_GROUPS):
            if leaf in members:
                groups.setdefault((prefix, g), []).append(name)
    for members in groups.values():
        top = torch.stack([amax[m] for m in members]).max()
        for m in members:
            if not torch.equal(amax[m], top):
                changed.append(m)
            shared[m] = top
    return shared, changed


@torch.no_grad()
def _calibrate(
    trained: TrainedModel, layers: dict[str, nvfp4.Linear], batches: int, fuse: bool
) -> dict[str, torch.Tensor]:
    """Each quantized layer's input encode scale 448·6/amax, the amax over ``batches`` validation batches."""
    from nvfp4.data.loader import val_batches
    from nvfp4.train import TrainConfig
    from nvfp4.train.trainer import load_data

    run = trained.run_config
    config = TrainConfig.from_dict({k: v for k, v in run.items() if k in TrainConfig.field_names()})
    data = load_data(config)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        layer.register_forward_pre_hook(
            lambda module, args, name=name: seen.__setitem__(
                name, torch.maximum(seen.get(name, torch.zeros(())), args[0].detach().abs().amax().float())
            )
        )
        for name, layer in layers.items()
    ]
    try:
        for x, _ in val_batches(data.val, config.batch_size, config.seq_len, batches):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                trained.model(x)
    finally:
        for h in handles:
            h.remove()
    amax, _ = _fused_amax(seen, fuse)
    return {n: global_encode_scale(a) for n, a in amax.items()}


def quantization_config(ignore: list[str], calibrated: bool) -> dict[str, Any]:
    """compressed-tensors' ``quantization_config`` for NVFP4 weights (and, calibrated, NVFP4 activations)."""
    fp4 = {
        "num_bits": 4,
        "type": "float",
        "symmetric": True,
        "group_size": 16,
        "strategy": "tensor_group",
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
        "block_structure": None,
    }
    activations = {**fp4, "dynamic": "local"} if calibrated else None
    return {
        "quant_method": "compressed-tensors",
        "format": "nvfp4-pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": fp4,
                "input_activations": activations,
                "output_activations": None,
                "format": "nvfp4-pack-quantized",
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
    }


def export(where: str | Path, out: str | Path, format: str = "hf", **options: Any) -> ExportReport:
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "hf":
        options.pop("fuse_scales", None)
        if options.pop("calibrate", 0):
            raise ValueError("--calibrate applies to --format compressed-tensors only")
        return export_hf(where, out, **options)
    return export_compressed_tensors(where, out, **options)
