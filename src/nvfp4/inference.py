"""A trained checkpoint, used: load it as trained, sample text from it, evaluate it on any text.

    nvfp4 generate runs/quickstart --prompt "In the beginning" --max-tokens 60 --temperature 0.8 --top-k 40
    nvfp4 eval runs/quickstart --data my_texts/            # loss, perplexity, bits per byte

The model is rebuilt from the checkpoint's own config and converted with the run's recipe and seed, so its
forward GEMMs quantize exactly as in training (``--precision bf16`` runs them in BF16 instead); a recipe whose late
switch had begun by the checkpoint's step runs its forward as it did then. Under ``no_grad`` only the forward
operands are quantized (see ``nvfp4.Linear``). Bits per byte divide the summed cross-entropy (in bits) by the UTF-8
bytes of the evaluated tokens' text, so runs with different tokenizers compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import nvfp4
from nvfp4.data.tokenizer import Tokenizer
from nvfp4.model import config_from_dict, from_config
from nvfp4.recipe import Recipe

PRECISIONS = ("recipe", "bf16")


@dataclass
class TrainedModel:
    """A checkpoint's model (converted as trained), its tokenizer and where it came from."""

    model: torch.nn.Module  # nvfp4.model.GPT or HybridLM, converted
    tokenizer: Tokenizer
    recipe: str
    checkpoint: Path
    step: int
    tokens: int
    run_config: dict[str, Any]


def load_trained(where: str | Path, *, device: str = "auto", precision: str = "recipe") -> TrainedModel:
    """The model of an ``nvfp4 train`` run directory (its newest readable checkpoint) or checkpoint file."""
    from nvfp4.train import TrainConfig
    from nvfp4.train.checkpoint import resolve_checkpoint
    from nvfp4.train.trainer import load_data

    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path, state = resolve_checkpoint(where)
    run = dict(state["config"])
    config = TrainConfig.from_dict({k: v for k, v in run.items() if k in TrainConfig.field_names()})
    data = load_data(config)
    try:
        tokenizer = data.load_tokenizer()
    except ValueError as e:
        raise ValueError(f"{path}: the run's data has no tokenizer ({e})") from None
    model = from_config(config_from_dict(state["model_config"]))
    model.load_state_dict(state["model"])
    recipe = Recipe.from_dict(state["recipe"])
    nvfp4.convert(model, recipe, seed=config.seed, backend=config.backend)
    if state.get("sr"):
        nvfp4.load_sr_state_dict(model, state["sr"])
    total = config.total_steps()
    nvfp4.apply_precision_schedule(model, recipe, state["step"] / max(total, 1), state["tokens"])
    if precision == "bf16":
        nvfp4.set_precision(model, ("forward", "backward"), "bf16")
    model.eval().to(_device(device))
    return TrainedModel(model, tokenizer, recipe.name, path, state["step"], state["tokens"], run)


def _device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device: use --device cpu")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def _autocast(trained: TrainedModel, device: torch.device):
    """The autocast the run trained with (``--autocast bf16`` or ``none``)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=trained.run_config.get("autocast") != "none")


def generate(
    trained: TrainedModel,
    prompt: str,
    *,
    max_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> str:
    """Sample up to ``max_tokens`` tokens after ``prompt`` (stops at end-of-text); returns the generated text only.
    Temperature 0 is greedy; ``top_k`` keeps the k most likely tokens. The same seed gives the same text."""
    tok = trained.tokenizer
    ids = tok.encode(prompt) if prompt else [tok.eot_id]
    return tok.decode(
        generate_ids(trained, ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
    )


@torch.no_grad()
def generate_ids(
    trained: TrainedModel,
    ids: list[int],
    *,
    max_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> list[int]:
    """``generate`` on token ids: the sampled ids (end-of-text not included)."""
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {max_tokens}")
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    model, tok = trained.model, trained.tokenizer
    device = next(model.parameters()).device
    if not ids:
        raise ValueError("generate_ids needs at least one prompt token")
    context = model.config.seq_len
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out: list[int] = []
    for _ in range(max_tokens):
        window = torch.tensor([(ids + out)[-context:]], device=device)
        with _autocast(trained, device):
            logits, _ = model(window)
        logits = logits[0, -1].float().cpu()
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, -math.inf)
            nxt = int(torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator))
        if nxt == tok.eot_id:
            break
        out.append(nxt)
    return out


@dataclass
class EvalResult:
    loss: float  # mean cross-entropy per predicted token (nats)
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of their text
    documents: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"loss {self.loss:.4f} | perplexity {self.perplexity:.2f} | bits/byte {self.bits_per_byte:.4f} | "
            f"{self.tokens:,} tokens, {self.bytes:,} bytes"
        )


@torch.no_grad()
def evaluate_tokens(
    trained: TrainedModel, ids: list[int] | torch.Tensor, *, seq_len: int | None = None, batch_size: int = 8
) -> EvalResult:
    """Loss of a token stream in consecutive windows of ``seq_len`` (+1 for the targets): every token after the
    first is predicted once, except a tail shorter than a window. The quantized forward scales each activation
    tensor by its own amax (SPEC §2), so the figures depend slightly on ``batch_size`` (here ~1e-4 of the loss),
    as a training run's evaluations depend on its batch."""
    model, tok = trained.model, trained.tokenizer
    device = next(model.parameters()).device
    seq_len = seq_len or model.config.seq_len
    if seq_len > model.config.seq_len:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's context ({model.config.seq_len})")
    stream = torch.as_tensor(ids, dtype=torch.long)
    windows = (len(stream) - 1) // seq_len
    if windows < 1:
        raise ValueError(
            f"the text has {len(stream)} tokens, fewer than one window of {seq_len + 1}; "
            "use a smaller --seq-len or more text"
        )
    total, count = 0.0, 0
    for start in range(0, windows, batch_size):
        rows = range(start, min(start + batch_size, windows))
        x = torch.stack([stream[w * seq_len : w * seq_len + seq_len] for w in rows]).to(device)
        y = torch.stack([stream[w * seq_len + 1 : w * seq_len + seq_len + 1] for w in rows]).to(device)
        with _autocast(trained, device):
            logits, _ = model(x)
        total += float(F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
        count += y.numel()
    predicted = stream[1 : windows * seq_len + 1].tolist()
    n_bytes = len(tok.decode(predicted).encode("utf-8"))
    loss = total / count
    return EvalResult(loss, math.exp(loss), total / math.log(2) / max(n_bytes, 1), count, n_bytes)


def evaluate_data(
    trained: TrainedModel, data: list[str], *, seq_len: int | None = None, batch_size: int = 8
) -> EvalResult:
    """``evaluate_tokens`` of text files (.txt/.jsonl, or directories of them), each document closed by
    end-of-text as ``nvfp4 prepare`` does, or of prepared shards / dataset directories (their validation split
    when they have one, else all their tokens)."""
    from nvfp4.data import load_dataset
    from nvfp4.data.corpus import read_user_documents
    from nvfp4.data.shards import TokenStream

    paths = [Path(p).expanduser() for p in data]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"--data {missing[0]} does not exist")
    shards = all(
        p.suffix == ".bin" or (p.is_dir() and (any(p.glob("*.bin")) or (p / "dataset.json").exists())) for p in paths
    )
    if shards:
        info = load_dataset([str(p) for p in paths])
        if info.vocab_size > trained.model.config.vocab_size:
            raise ValueError(
                f"--data has token ids up to {info.vocab_size - 1}, beyond the model's vocabulary "
                f"({trained.model.config.vocab_size}): shards of another tokenizer?"
            )
        spans = info.val if info.val_split != "tail" or not info.train else info.train + info.val
        stream = TokenStream(spans)
        ids = torch.from_numpy(stream.read(0, len(stream)).astype("int64"))
        result = evaluate_tokens(trained, ids, seq_len=seq_len, batch_size=batch_size)
        return result
    docs = read_user_documents(paths)
    tok = trained.tokenizer
    ids: list[int] = []
    for doc in docs:
        ids += tok.encode(doc.text) + [tok.eot_id]
    result = evaluate_tokens(trained, ids, seq_len=seq_len, batch_size=batch_size)
    result.documents = len(docs)
    return result
