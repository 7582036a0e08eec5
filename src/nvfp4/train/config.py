"""``TrainConfig``: everything that defines a pretraining run, as one flat dataclass.

Flat on purpose: every field is one ``nvfp4 train --dash-case`` flag and one TOML key, so a run is
reproducible from ``OUT/config.json`` alone. Validation happens at construction, so a bad value
fails before any data is read or model is built.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvfp4 import recipes
from nvfp4.model import PRESETS, model_config

SCHEDULES = ("wsd", "cosine", "constant")
TOKENIZERS = ("bpe", "byte")
DEVICES = ("auto", "cpu", "cuda")
AUTOCAST = ("bf16", "none")
DISTRIBUTED = ("none", "ddp", "fsdp")
BACKENDS = ("auto", "reference", "cpu", "triton")  # nvfp4.kernels; "auto" = fastest available
HOST_SYNCS = ("auto", "step", "log")
MAX_LR = 10.0  # the largest --lr accepted
DEFAULT_MAX_STEPS = 300
DEFAULT_WARMUP_FRACTION = 0.05

# Fields that define the training trajectory: a resume must not change them (run identity).
IDENTITY_FIELDS = (
    "recipe",
    "model",
    "n_layer",
    "n_head",
    "n_kv_head",
    "d_model",
    "d_ff",
    "mlp",
    "data",
    "tokenizer",
    "vocab_size",
    "seq_len",
    "grad_accum",
    "seed",
)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """A pretraining run. Fields left None take the model preset's value or a documented default."""

    # -- what is trained --------------------------------------------------------------------------
    recipe: str = field(default="nvfp4", metadata=_help("precision recipe (see `nvfp4 recipes`)"))
    model: str = field(
        default="tiny",
        metadata=_help(
            "model preset: tiny, small, base (GPT) or hybrid-tiny, hybrid-small, hybrid-half12b (Mamba-2 hybrid)"
        ),
    )
    n_layer: int | None = field(default=None, metadata=_help("override the preset's number of blocks"))
    n_head: int | None = field(default=None, metadata=_help("override the preset's attention heads"))
    n_kv_head: int | None = field(default=None, metadata=_help("override the preset's key/value heads"))
    d_model: int | None = field(default=None, metadata=_help("override the preset's model width"))
    d_ff: int | None = field(default=None, metadata=_help("override the preset's MLP hidden width"))
    mlp: str | None = field(default=None, metadata=_help("override the preset's MLP kind: relu2 or swiglu"))
    # -- data -------------------------------------------------------------------------------------
    data: list[str] | None = field(
        default=None, metadata=_help("prepared dataset dir, shard files or shard dirs (default: built-in corpus)")
    )
    val_data: list[str] | None = field(default=None, metadata=_help("validation shards (default: the dataset's)"))
    tokenizer: str = field(default="bpe", metadata=_help("built-in corpus tokenizer", choices=TOKENIZERS))
    vocab_size: int = field(default=8192, metadata=_help("BPE vocab size for the built-in corpus"))
    # -- length and batch -------------------------------------------------------------------------
    max_steps: int | None = field(default=None, metadata=_help(f"optimizer steps (default {DEFAULT_MAX_STEPS})"))
    max_tokens: int | None = field(default=None, metadata=_help("training tokens, instead of --max-steps"))
    batch_size: int = field(default=8, metadata=_help("sequences per micro-batch per rank"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    seq_len: int = field(default=128, metadata=_help("tokens per sequence"))
    # -- optimizer (AdamW, FP32 master weights and states) ----------------------------------------
    lr: float = field(default=3e-3, metadata=_help("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("final learning rate as a fraction of --lr"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (2-D weights only)"))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_help("AdamW betas"))
    eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the global grad norm to this (0 = off)"))
    # -- learning-rate schedule -------------------------------------------------------------------
    schedule: str = field(
        default="wsd",
        metadata=_help("wsd (warmup, stable, linear decay: the paper), cosine, constant", choices=SCHEDULES),
    )
    warmup_steps: int | None = field(default=None, metadata=_help("linear warmup steps"))
    warmup_fraction: float | None = field(
        default=None, metadata=_help(f"warmup as a fraction of the steps (default {DEFAULT_WARMUP_FRACTION})")
    )
    decay_fraction: float = field(default=0.2, metadata=_help("wsd: final fraction of the steps that decays"))
    # -- evaluation, logging, checkpoints ---------------------------------------------------------
    eval_interval: int = field(default=50, metadata=_help("evaluate every N steps (0 = only at the end)"))
    eval_batches: int = field(default=8, metadata=_help("validation batches per evaluation"))
    sequence_eval_batches: int = field(
        default=0,
        metadata=_help(
            "at the end, the loss of every sequence of the first N fixed validation batches to "
            "OUT/val_sequences.json, for paired statistics across runs (-1 = the whole "
            "validation split, 0 = off)"
        ),
    )
    log_interval: int = field(default=10, metadata=_help("write metrics every N steps"))
    probe_interval: int = field(
        default=0,
        metadata=_help(
            "every N steps, log per-layer operand SQNR and gradient noise on a fixed validation "
            "batch to metrics.jsonl (0 = off; does not change the run)"
        ),
    )
    checkpoint_interval: int = field(default=100, metadata=_help("checkpoint every N steps (0 = only at the end)"))
    keep_checkpoints: int = field(default=3, metadata=_help("how many recent checkpoints to keep"))
    keep_steps: list[int] | None = field(
        default=None, metadata=_help("also checkpoint at these steps and never delete those (branch points)")
    )
    # -- run control ------------------------------------------------------------------------------
    seed: int = field(default=0, metadata=_help("seeds init, data order and stochastic rounding"))
    out: str = field(default="runs/nvfp4", metadata=_help("output directory"))
    resume: bool = field(default=False, metadata=_help("continue from the latest checkpoint in --out"))
    branch_from: str | None = field(
        default=None,
        metadata=_help(
            "start from another run's checkpoint file; the recipes may differ only in a late precision "
            "switch that has not begun by then (--resume still continues this run's own checkpoints)"
        ),
    )
    device: str = field(default="auto", metadata=_help("auto (cuda if available), cpu or cuda", choices=DEVICES))
    autocast: str = field(default="bf16", metadata=_help("autocast dtype of non-quantized ops", choices=AUTOCAST))
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    activation_checkpointing: bool = field(
        default=False, metadata=_help("recompute each block in backward (less memory; same trajectory)")
    )
    max_bad_steps: int = field(default=5, metadata=_help("stop after N non-finite steps in a row"))
    host_sync: str = field(
        default="auto",
        metadata=_help(
            "read loss and grad norm back every step, or only on logging steps (the GPU never waits for "
            "the host; non-finite steps are still skipped, on the device); auto: step on CPU, log on GPU",
            choices=HOST_SYNCS,
        ),
    )
    distributed: str = field(default="none", metadata=_help("data parallelism under torchrun", choices=DISTRIBUTED))
    backend: str = field(
        default="auto", metadata=_help("quantization kernels (auto = fastest available)", choices=BACKENDS)
    )
    tensorboard: bool = field(default=False, metadata=_help("also write TensorBoard scalars to OUT/tb"))
    quiet: bool = field(default=False, metadata=_help("no progress bar or messages (library use)"))

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.val_data, str):
            self.val_data = [self.val_data]
        self.betas = tuple(self.betas)  # type: ignore[assignment]  (TOML and JSON give lists)
        self._validate()

    def _validate(self) -> None:
        recipes.get(self.recipe)  # ValueError listing the valid names
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}; valid presets: {', '.join(PRESETS)}")
        for name, choices in (
            ("tokenizer", TOKENIZERS),
            ("schedule", SCHEDULES),
            ("device", DEVICES),
            ("autocast", AUTOCAST),
            ("distributed", DISTRIBUTED),
            ("backend", BACKENDS),
            ("host_sync", HOST_SYNCS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ValueError("give either max_steps or max_tokens, not both (one of them sets the run length)")
        if self.warmup_steps is not None and self.warmup_fraction is not None:
            raise ValueError("give either warmup_steps or warmup_fraction, not both")
        positive = ("batch_size", "grad_accum", "seq_len", "vocab_size", "eval_batches", "log_interval")
        positive += ("keep_checkpoints", "max_bad_steps")
        optional_positive = ("max_steps", "max_tokens", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff")
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is None and name in optional_positive:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.sequence_eval_batches < -1:
            raise ValueError(
                f"sequence_eval_batches must be -1 (all), 0 (off) or a positive count, got {self.sequence_eval_batches}"
            )
        if self.probe_interval and self.distributed == "fsdp":
            raise ValueError("--probe-interval needs whole weights on rank 0: use --distributed ddp or none with it")
        for name in ("eval_interval", "checkpoint_interval", "probe_interval", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.warmup_steps is not None and (not isinstance(self.warmup_steps, int) or self.warmup_steps < 0):
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.lr > MAX_LR:  # beyond this AdamW's update (~lr per step) and the weights overflow FP32 quickly
            raise ValueError(f"lr={self.lr!r} is too large to train with (at most {MAX_LR:g}; typical: 1e-4 to 1e-2)")
        for name, lo, hi in (
            ("min_lr_ratio", 0.0, 1.0),
            ("decay_fraction", 0.0, 1.0),
            ("weight_decay", 0.0, math.inf),
            ("grad_clip", 0.0, math.inf),
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and lo <= value <= hi and math.isfinite(value)):
                raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not (isinstance(self.eps, int | float) and self.eps > 0):
            raise ValueError(f"eps must be positive, got {self.eps!r}")
        if len(self.betas) != 2 or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.mlp is not None and self.mlp not in ("relu2", "swiglu"):
            raise ValueError(f"mlp must be relu2 or swiglu, got {self.mlp!r}")
        if not self.out:
            raise ValueError("out (the output directory) must not be empty")
        if self.keep_steps is not None and not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in self.keep_steps
        ):
            raise ValueError(f"keep_steps must be positive integers (steps to checkpoint at), got {self.keep_steps!r}")
        if self.branch_from is not None and not self.branch_from:
            raise ValueError("branch_from must be a checkpoint file path, got an empty string")
        for name in ("data", "val_data"):
            value = getattr(self, name)
            if value is not None and (not value or not all(isinstance(p, str) and p for p in value)):
                raise ValueError(f"{name} must be a non-empty list of paths, got {value!r}")
        model_config(self.model, **self.model_overrides())  # e.g. d_model not divisible by n_head

    # -- derived values ----------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        """Model config fields this run sets on top of the preset (the vocab comes from the data)."""
        names = ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "mlp")
        overrides = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        overrides["seq_len"] = self.seq_len
        return overrides

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.batch_size * self.grad_accum * self.seq_len * world_size

    def total_steps(self, world_size: int = 1) -> int:
        """Optimizer steps of the whole run; max_tokens is rounded up to whole steps."""
        if self.max_steps is not None:
            return self.max_steps
        if self.max_tokens is not None:
            return max(1, math.ceil(self.max_tokens / self.tokens_per_step(world_size)))
        return DEFAULT_MAX_STEPS

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return min(self.warmup_steps, total_steps)
        fraction = DEFAULT_WARMUP_FRACTION if self.warmup_fraction is None else self.warmup_fraction
        return round(fraction * total_steps)

    # -- (de)serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from a mapping of field names; unknown keys are an error naming the valid ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {', '.join(cls.field_names())}")
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            _check_type(name, value, hints[name])
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a flat TOML file of field names; keyword overrides (e.g. CLI flags) win."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise ValueError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML ({e})") from None
        try:
            return cls.from_dict({**values, **overrides})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Reject wrongly typed values from files early (a string lr would fail much later)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    for option in allowed:
        origin = typing.get_origin(option) or option
        if option is type(None) and value is None:
            return
        if origin is float and isinstance(value, int | float) and not isinstance(value, bool):
            return
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if origin in (str, bool) and isinstance(value, origin):
            return
        if origin in (list, tuple) and isinstance(value, list | tuple):
            return
    raise ValueError(f"config key {name!r} has the wrong type: {value!r} is not {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "")


_UnionType = type(int | None)
