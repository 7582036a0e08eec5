"""Training batches: a seeded, resumable, rank-sliceable order over fixed windows of the token stream.

The stream is cut into windows of seq_len + 1 tokens starting every seq_len tokens (inputs never
overlap; window k's last token is window k+1's first, so every token is a target once). Each epoch
visits the windows in a permutation seeded by (seed, epoch). Global batch i is permutation entries
[i*G, (i+1)*G) with G = batch_size * world_size, and rank r takes rows [r*B, (r+1)*B) of it, so the
union of the ranks' batches is exactly what a single process with batch size G would see. The whole
position is (epoch, step), which makes resume exact and lets a run resume on a different number of
ranks as long as the global batch size is the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvfp4.data.shards import ShardSpan, TokenStream

LOADER_STATE_VERSION = 1
Shards = Sequence[str | Path | ShardSpan] | TokenStream


def _stream(shards: Shards) -> TokenStream:
    return shards if isinstance(shards, TokenStream) else TokenStream(shards)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _to_xy(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.from_numpy(rows)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class TokenLoader:
    """Endless iterator of (x, y) int64 batches of shape (batch_size, seq_len) for one rank."""

    def __init__(
        self, shards: Shards, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        _check_positive(batch_size=batch_size, seq_len=seq_len, world_size=world_size)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        self.stream = _stream(shards)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch_size = batch_size * world_size
        self.num_windows = max(0, (len(self.stream) - 1) // seq_len)
        self.steps_per_epoch = self.num_windows // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training data has {len(self.stream)} tokens = {self.num_windows} windows of seq_len+1="
                f"{seq_len + 1}, fewer than one global batch of {self.global_batch_size} windows "
                f"(batch_size {batch_size} x world_size {world_size}); use more data or a smaller batch/seq_len"
            )
        self.epoch = 0
        self.step = 0  # batches already taken in the current epoch
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def _window_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
            self._order = rng.permutation(self.num_windows)
            self._order_epoch = self.epoch
        return self._order

    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step == self.steps_per_epoch:  # the windows left over (< one global batch) are skipped
            self.epoch, self.step = self.epoch + 1, 0
        first = self.step * self.global_batch_size + self.rank * self.batch_size
        windows = self._window_order()[first : first + self.batch_size]
        T = self.seq_len
        rows = np.stack([self.stream.read(w * T, w * T + T + 1) for w in windows])
        self.step += 1
        return _to_xy(rows)

    def state_dict(self) -> dict[str, Any]:
        """The position after the batches taken so far, plus what must match for a resume to be exact."""
        return {
            "version": LOADER_STATE_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_batch_size": self.global_batch_size,
            "num_windows": self.num_windows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position; refuses a state from a different seed, shape or dataset."""
        missing = {"version", "epoch", "step", "seed", "seq_len", "global_batch_size", "num_windows"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing {sorted(missing)}; it was not made by TokenLoader.state_dict()")
        if state["version"] != LOADER_STATE_VERSION:
            raise ValueError(f"loader state version {state['version']} is not {LOADER_STATE_VERSION}")
        for key, hint in (
            ("seed", "the data seed"),
            ("seq_len", "seq_len"),
            ("global_batch_size", "batch_size * world_size"),
            ("num_windows", "the dataset (its token count)"),
        ):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: saved loader has {key}={state[key]} but this one has {getattr(self, key)}; "
                    f"an exact resume needs the same {hint}"
                )
        if not 0 <= state["step"] <= self.steps_per_epoch or state["epoch"] < 0:
            raise ValueError(f"loader state position epoch={state['epoch']} step={state['step']} is out of range")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


def val_batches(
    shards: Shards, batch_size: int, seq_len: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Validation (x, y) batches over consecutive windows, identical on every call; the last may be smaller."""
    _check_positive(batch_size=batch_size, seq_len=seq_len)
    if max_batches is not None:
        _check_positive(max_batches=max_batches)
    stream = _stream(shards)
    num_windows = max(0, (len(stream) - 1) // seq_len)
    if num_windows == 0:
        raise ValueError(
            f"the validation data has {len(stream)} tokens, fewer than one window of seq_len+1={seq_len + 1}; "
            "use a smaller seq_len or more validation data"
        )
    num_batches = -(-num_windows // batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    return _val_batches(stream, batch_size, seq_len, num_windows, num_batches)


def _val_batches(
    stream: TokenStream, batch_size: int, seq_len: int, num_windows: int, num_batches: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for b in range(num_batches):
        windows = range(b * batch_size, min((b + 1) * batch_size, num_windows))
        yield _to_xy(np.stack([stream.read(w * seq_len, w * seq_len + seq_len + 1) for w in windows]))
