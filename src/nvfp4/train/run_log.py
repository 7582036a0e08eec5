"""What a run says about itself besides its metrics: the run files, the banner and the clock.

* ``OUT/config.json`` (reloadable with ``TrainConfig.from_dict``) and ``OUT/run.json`` (derived facts: sizes, layers
  quantized, hardware, git commit) are for tools: ``nvfp4 compare``, plots, provenance;
* the banner is the one line a person reads first: what is trained, on what, for how long;
* ``RunClock`` adds up wall time, step time and tokens over every invocation of a run, so a resumed run reports its
  whole cost (the checkpoint carries the time spent before).

Everything here reads the built run and changes nothing about it: the training trajectory never depends on it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nvfp4
from nvfp4._io import atomic_write
from nvfp4._provenance import git_commit, hardware
from nvfp4.model import count_parameters

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nvfp4.data import DatasetInfo
    from nvfp4.recipe import Recipe
    from nvfp4.train.config import TrainConfig
    from nvfp4.train.distributed import DistContext

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class RunInfo:
    """The built run, as the banner and run.json describe it (built on demand, not kept: it holds the model)."""

    config: TrainConfig
    model: nn.Module  # the unwrapped, converted model
    recipe: Recipe
    data: DatasetInfo
    device: torch.device
    ctx: DistContext
    total_steps: int
    tokens_per_step: int

    def _quantized(self) -> tuple[int, int]:
        """(quantized linear layers, all linear layers)."""
        report = nvfp4.conversion_report(self.model)
        return sum(r.treatment.startswith("quantized") for r in report), len(report)

    def _dataset(self) -> str:
        return str(self.data.path) if self.data.path else ", ".join(self.config.data or [])

    def banner(self) -> str:
        """One line: recipe, model size, layers quantized, data, length, device (and ranks)."""
        quantized, linears = self._quantized()
        return (
            f"recipe {self.recipe.name} | model {self.config.model} "
            f"({count_parameters(self.model) / 1e6:.2f}M non-embedding params, {quantized}/{linears} linears "
            f"quantized) | data {self._dataset()} ({self.data.train_tokens:,} train tokens, vocab "
            f"{self.data.vocab_size}) | {self.total_steps} steps x {self.tokens_per_step:,} tokens | {self.device}"
            + (f" x {self.ctx.world_size} ranks ({self.ctx.mode})" if self.ctx.world_size > 1 else "")
        )

    def notes(self) -> list[str]:
        """Surprises worth a line before training: a quantized recipe that quantizes none of this model's layers."""
        quantized, linears = self._quantized()
        if self.recipe.quantized and not quantized:
            return [
                f"note: recipe {self.recipe.name} quantizes none of this model's {linears} linear layers (its "
                f"BF16 layer policy covers all {self.model.num_blocks} blocks): this run trains in BF16"
            ]
        return []

    def run_record(self) -> dict[str, Any]:
        """run.json: facts derived from the config and the built run, for tools."""
        quantized, linears = self._quantized()
        return {
            "total_steps": self.total_steps,
            "tokens_per_step": self.tokens_per_step,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "model_config": dataclasses.asdict(self.model.config),
            "non_embedding_params": count_parameters(self.model),
            "params": count_parameters(self.model, non_embedding=False),
            "quantized_layers": quantized,
            "linear_layers": linears,
            "recipe": self.recipe.to_dict(),
            "dataset": str(self.data.path) if self.data.path else None,
            "train_tokens": self.data.train_tokens,
            "val_tokens": self.data.val_tokens,
            "hardware": hardware(self.device),
            "git_commit": git_commit(),
        }


def write_run_files(out: str | Path, info: RunInfo) -> None:
    """OUT/config.json and OUT/run.json, each replaced atomically (rank 0, after any resume was accepted: a refused
    resume changes nothing in OUT)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CONFIG_FILE, (json.dumps(info.config.to_dict(), indent=2) + "\n").encode())
    atomic_write(out / RUN_FILE, (json.dumps(info.run_record(), indent=2, default=str) + "\n").encode())


class RunClock:
    """Wall time, time in training steps and tokens trained over every invocation of a run, and the throughput of
    the steps since the last metrics record (the "window").

    Throughput is tokens / step time: evaluations and checkpoints are excluded. ``state_dict()`` goes into the
    checkpoint and ``load_state_dict()`` takes it back, so a resumed run's totals include the time spent before.
    """

    def __init__(self) -> None:
        # Time spent before this invocation (from the checkpoint).
        self.prior: dict[str, float] = {"wall_time_s": 0.0, "train_time_s": 0.0, "train_tokens": 0}
        self.start()

    def start(self) -> None:
        """Start this invocation's clock: its wall time, step time and tokens count from here."""
        self.started = time.perf_counter()
        self.train_time, self.train_tokens = 0.0, 0
        self.reset_window()

    def add_step(self, seconds: float, tokens: int) -> None:
        """Account for one training step of ``seconds`` over ``tokens`` tokens."""
        self.train_time, self.train_tokens = self.train_time + seconds, self.train_tokens + tokens
        self.window_time, self.window_tokens = self.window_time + seconds, self.window_tokens + tokens

    def window_tokens_per_s(self) -> float:
        """The throughput of the steps since the last metrics record."""
        return self.window_tokens / max(self.window_time, 1e-9)

    def reset_window(self) -> None:
        """A metrics record was written: the next one's throughput starts from here."""
        self.window_time, self.window_tokens = 0.0, 0

    def elapsed(self) -> dict[str, float]:
        """wall_time_s, train_time_s, train_tokens (every invocation) and tokens_per_s = train_tokens / train_time_s."""
        train_time = self.prior["train_time_s"] + self.train_time
        train_tokens = self.prior["train_tokens"] + self.train_tokens
        return {
            "wall_time_s": self.prior["wall_time_s"] + time.perf_counter() - self.started,
            "train_time_s": train_time,
            "train_tokens": train_tokens,
            "tokens_per_s": train_tokens / train_time if train_time > 0 else 0.0,
        }

    def state_dict(self) -> dict[str, float]:
        """The totals so far, for the checkpoint (the throughput is derived, so not stored)."""
        return {k: v for k, v in self.elapsed().items() if k != "tokens_per_s"}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Count the time a checkpoint records as spent before this invocation (checkpoints from before the clock
        was saved have none: ``{}``)."""
        self.prior.update(state)
