"""The pretraining loop: data -> model -> convert -> (DDP/FSDP) -> AdamW steps, evals, logs, checkpoints.

Reproducibility rules this file keeps, because ``nvfp4 compare`` and ``--resume`` depend on them:

* the model is built and initialized from ``seed`` alone, *then* converted, so every recipe
  starts from the same weights; the data order depends on ``seed`` alone too;
* everything a step reads (parameters, AdamW moments, step, data position, stochastic-rounding
  counters, RNGs) is in the checkpoint, so a resumed run repeats the uninterrupted one bit for bit;
  a run with a late precision switch can likewise *branch* from another recipe's checkpoint taken
  before the switch (``branch_from``) and repeat its own unbranched run bit for bit;
* no global state: ``train()`` can run many times in one process (a signal handler is installed
  for the duration of the run only, and only in the main thread).

The trainer is the loop and the stateful part (``state_dict()``/``load_state_dict()``); its components do the rest:
``checkpoint.CheckpointManager`` decides how the run starts (scratch, resume, branch) and saves when due,
``metrics.MetricsLog``/``Progress`` record and show each step, and ``run_log`` writes the run files, the banner and
the clock.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import nvfp4
from nvfp4 import kernels
from nvfp4._io import atomic_write
from nvfp4.convert import quantized_layers
from nvfp4.data import DatasetInfo, TokenLoader, default_dataset, load_dataset, val_batches
from nvfp4.model import from_config, model_config
from nvfp4.recipe import Recipe
from nvfp4.train import distributed as D
from nvfp4.train.checkpoint import RESUME_NOTED_FIELDS as RESUME_NOTED_FIELDS  # re-exported: it lived here
from nvfp4.train.checkpoint import CheckpointManager, RunLock, rng_state, set_rng_state
from nvfp4.train.config import TrainConfig
from nvfp4.train.metrics import MetricsLog, Progress
from nvfp4.train.run_log import RunClock, RunInfo, write_run_files
from nvfp4.train.schedule import LRSchedule

SEQUENCE_EVAL_FILE = "val_sequences.json"  # per-sequence final validation losses (--sequence-eval-batches)

StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What a run achieved; ``diverged``/``interrupted`` say why it stopped early, if it did."""

    final_train_loss: float | None
    final_val_loss: float | None
    steps: int
    tokens: int
    wall_time_s: float
    tokens_per_s: float
    out_dir: str
    diverged: bool = False
    diverged_step: int | None = None
    interrupted: bool = False
    resumed_from: int | None = None
    message: str = ""
    rank: int = 0  # the process that returned this (only rank 0 prints the summary)
    stop_signal: str | None = None  # what interrupted the run: SIGINT (Ctrl-C), SIGTERM or SIGUSR1 (preemption)

    def summary(self) -> str:
        """The lines ``nvfp4 train`` prints at the end (the trainer has printed the stop message, if any, already)."""
        val = "-" if self.final_val_loss is None else f"{self.final_val_loss:.4f}"
        train = "-" if self.final_train_loss is None else f"{self.final_train_loss:.4f}"
        lines = [
            f"final train loss {train} | val loss {val} | steps {self.steps} | tokens {self.tokens:,}",
            f"{self.tokens_per_s:,.0f} tokens/s | wall time {self.wall_time_s:.1f} s | outputs in {self.out_dir}",
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class _End:
    """How the loop ended: completed (the defaults), diverged at a step, or interrupted; and what to say."""

    diverged_step: int | None = None
    interrupted: bool = False
    message: str = ""


def train(config: TrainConfig, on_step: StepCallback | None = None) -> TrainResult:
    """Run (or resume) the training ``config`` describes; returns when done, diverged or interrupted.

    ``on_step`` is called on rank 0 after every step with that step's metrics record.
    Raises ValueError (with a one-line message) for bad data, configs or resume mismatches.
    """
    ctx, device = D.setup(config.distributed, config.device)
    try:
        return _run(config, ctx, device, on_step)
    finally:
        D.teardown(ctx)


def _run(config: TrainConfig, ctx: D.DistContext, device: torch.device, on_step: StepCallback | None) -> TrainResult:
    # A separate frame, so that nothing holds the trainer (and its DDP reducer) when the process group
    # is destroyed: see distributed.teardown.
    trainer = Trainer(config, ctx, device, on_step)
    try:
        return trainer.run()
    finally:
        trainer.close()


def build_model(config: TrainConfig, vocab_size: int, device: torch.device) -> nn.Module:
    """The model the config names (GPT or hybrid), initialized from ``config.seed`` only (not yet converted)."""
    torch.manual_seed(config.seed)
    return from_config(model_config(config.model, vocab_size=vocab_size, **config.model_overrides())).to(device)


def load_data(config: TrainConfig) -> DatasetInfo:
    if config.data is None:
        info = default_dataset(tokenizer=config.tokenizer, vocab_size=config.vocab_size)
        return info if config.val_data is None else load_dataset(info.path, config.val_data)
    return load_dataset(config.data, config.val_data)


def precision_state(model: nn.Module, recipe: Recipe) -> dict[str, str]:
    """The number format the forward and backward GEMMs run in right now (after any late switch)."""
    layers = quantized_layers(model)
    if not layers:
        return {"forward": "bf16", "backward": "bf16"}
    now = layers[0][1].precision
    return {
        "forward": recipe.fprop_x.format if now["forward"] == "recipe" else "bf16",
        "backward": recipe.dgrad_dy.format if now["backward"] == "recipe" else "bf16",
    }


def drop_weight_caches(model: nn.Module) -> None:
    """Forget the quantized copies of the weights (called after every optimizer step and evaluation).

    ``nvfp4.Linear`` keys its cache on the weight's version counter and storage address. FSDP2
    re-gathers each weight into storage that often has the same address while it preserves the
    version counter, so without this the layers would keep quantizing a stale weight (the FSDP
    test catches it). And a weight quantized with stochastic rounding during an evaluation must
    not be reused by the next training step, or a run resumed from that step's checkpoint (which
    has no cache) would differ. Weights change every optimizer step anyway, so this costs nothing.
    """
    nvfp4.invalidate_weight_caches(model)


class Trainer:
    """One run: owns the model, optimizer, data loader, logs and checkpoints of ``config``."""

    def __init__(
        self, config: TrainConfig, ctx: D.DistContext, device: torch.device, on_step: StepCallback | None = None
    ) -> None:
        self.config, self.ctx, self.device, self.on_step = config, ctx, device, on_step
        self.out = Path(config.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.recipe = nvfp4.recipes.get(config.recipe)
        self.verbose = ctx.is_main and not config.quiet
        self.stop_requested = False
        self.stop_signal: str | None = None  # the signal that asked to stop (SIGINT, SIGTERM, SIGUSR1)
        # One trainer per run directory: rank 0 holds an OS file lock for the whole run (released when it exits, even
        # on kill -9). Every rank learns whether it got it, so a refused job stops on all ranks.
        self.lock = RunLock(self.out) if ctx.is_main else None
        refusal = self.lock.acquire() if self.lock is not None else None
        refusal = D.broadcast_object(refusal, ctx)
        if refusal:
            raise ValueError(refusal)
        try:
            self._build()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(self) -> None:
        """Everything of __init__ after the run directory is locked: data, model, optimizer, resume, run files."""
        config, ctx, device = self.config, self.ctx, self.device

        if self.recipe.quantized:
            kernels.select(config.backend, device)  # an unavailable backend fails here, not mid-run
        self.data = load_data(config)
        self.total_steps = config.total_steps(ctx.world_size)
        self.tokens_per_step = config.tokens_per_step(ctx.world_size)
        self.schedule = LRSchedule(
            config.schedule,
            config.lr,
            self.total_steps,
            config.warmup(self.total_steps),
            config.min_lr_ratio,
            config.decay_fraction,
        )

        # Seed every RNG before anything draws from one; the model init then depends on seed only.
        random.seed(config.seed)
        np.random.seed(config.seed)
        self.model = build_model(config, self.data.vocab_size, device)
        self.model_config = self.model.config
        nvfp4.convert(self.model, self.recipe, seed=config.seed, backend=config.backend)
        nvfp4.set_sr_rank(self.model, ctx.rank)  # independent SR noise per data-parallel rank
        self.model.activation_checkpointing = config.activation_checkpointing
        self.train_model = D.wrap_model(self.model, ctx, device)
        if config.compile:
            self.train_model = torch.compile(self.train_model)
        # Deferred read-back: losses stay on the device until a logging step (see _read_back).
        self.deferred = config.host_sync == "log" or (config.host_sync == "auto" and device.type != "cpu")
        self._pending: list[dict[str, Any]] = []  # records of steps not yet read back (deferred mode)
        self.optimizer = self._build_optimizer()
        self.loader = TokenLoader(
            self.data.train, config.batch_size, config.seq_len, config.seed, ctx.rank, ctx.world_size
        )
        self.autocast_device = device.type
        self.use_autocast = config.autocast == "bf16"

        self.step = 0
        self.tokens = 0
        self.bad_steps = 0
        self.last_losses: tuple[float | None, float | None] = (None, None)  # (train, val) at the latest step
        self.progress: Progress | None = None
        self.clock = RunClock()
        # The manager restores a checkpoint through load_state_dict() (a resume or a branch) before anything in OUT
        # is written: a refused resume changes nothing there.
        self.checkpoints = CheckpointManager(
            self.out, config, self, model_config=dataclasses.asdict(self.model_config), ctx=ctx, say=self._say
        )
        start = self.checkpoints.start()
        self.resumed_from = start.resumed_from
        if ctx.is_main:
            write_run_files(self.out, self.run_info())
        self.metrics = MetricsLog(
            self.out,
            enabled=ctx.is_main,
            truncate_to=start.metrics_offset,
            tensorboard=config.tensorboard,
            purge_step=self.step + 1 if self.resumed_from is not None else None,
        )

    # -- set-up ------------------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        """AdamW on the FP32 master weights; only matrices (2-D) are decayed, not norms' gains."""
        params = [p for p in self.train_model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        c = self.config
        # Fused on CUDA (one kernel for all parameters, no host reads of the step counters), and wherever the read-back
        # is deferred: its found_inf input skips a non-finite step on the device.
        fused = self.device.type == "cuda" or self.deferred
        return torch.optim.AdamW(groups, lr=c.lr, betas=c.betas, eps=c.eps, fused=fused or None)

    # -- the stateful part: what the checkpoint manager saves and restores ----------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a step reads: parameters, AdamW moments, step, data position, SR counters, RNGs (plus the
        metrics offset, last losses and clock). The manager adds the run's identity (checkpoint.RUN_KEYS).

        A collective under FSDP: every rank calls it (only rank 0 writes the result)."""
        model = D.model_state_dict(self.model, self.ctx)
        optimizer = D.optimizer_state_dict(self.model, self.optimizer, self.ctx)
        return {
            "step": self.step,
            "tokens": self.tokens,
            "bad_steps": self.bad_steps,
            "model": model,
            "optimizer": optimizer,
            "rng": rng_state(),
            "sr": nvfp4.sr_state_dict(self.model),
            "loader": self.loader.state_dict(),
            "metrics_offset": self.metrics.offset(),
            "last_train_loss": self.last_losses[0],
            "last_val_loss": self.last_losses[1],
            "elapsed": self.clock.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's full training state into this run (the manager has checked it is this run's)."""
        D.load_model_state_dict(self.model, state["model"], self.ctx)
        D.load_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], self.ctx)
        nvfp4.load_sr_state_dict(self.model, state["sr"])
        self.loader.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
        self.step, self.tokens, self.bad_steps = int(state["step"]), int(state["tokens"]), int(state["bad_steps"])
        self.last_losses = (state["last_train_loss"], state["last_val_loss"])
        self.clock.load_state_dict(state.get("elapsed", {}))  # absent in checkpoints written before it existed
        drop_weight_caches(self.model)

    def run_info(self) -> RunInfo:
        """This run as the banner and run.json describe it (not kept: it holds the model)."""
        return RunInfo(
            self.config,
            self.model,
            self.recipe,
            self.data,
            self.device,
            self.ctx,
            self.total_steps,
            self.tokens_per_step,
        )

    def elapsed(self) -> dict[str, float]:
        """Wall time, time in training steps and tokens trained, over every invocation of this run (resumes
        included), and the training throughput tokens/s = tokens / step time (evals and checkpoints excluded)."""
        return self.clock.elapsed()

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train up to ``total_steps``: step, log, evaluate, checkpoint; stop early on divergence, or on Ctrl-C
        (SIGTERM, SIGUSR1) after a checkpoint."""
        self._start()
        previous_handler = self._install_sigint()
        end = _End(
            message=f"nothing to do: the run in {self.out} is already complete at step {self.step}"
            if self.step == self.total_steps
            else ""
        )
        try:
            if self.step == 0 and self.resumed_from is None:
                self._evaluate_at_start()
            while self.step < self.total_steps:
                if not self._step_and_log() and self.ctx.world_size > 1:
                    continue  # deferred: ranks agree on stopping at read-back steps only (a collective)
                if self.bad_steps >= self.config.max_bad_steps:
                    end = self._diverged()
                    break
                stop = D.any_rank(self.stop_requested, self.ctx)
                if (stop or self.checkpoints.due(self.step)) and not self.save_checkpoint():
                    message = f"parameters became non-finite at step {self.step}; checkpoint refused, stopping"
                    end = _End(diverged_step=self.step, message=message)
                    break
                if stop:
                    end = self._interrupted()
                    break
        finally:
            self.progress.close()
            self.progress = None
            self._restore_sigint(previous_handler)
        return self._finish(end)

    def _start(self) -> None:
        """Before the first step of this invocation: the banner and notes, the progress display, the clock."""
        info = self.run_info()
        self._say(info.banner())
        for note in info.notes():
            self._say(note)
        self.progress = Progress(self.total_steps, self.step, enabled=self.verbose)
        self.clock.start()  # this invocation only (see elapsed())

    def _evaluate_at_start(self) -> None:
        """Step 0 of a fresh run: the untrained model's validation loss (and probe), the first point of its curve."""
        self.last_losses = (None, self.evaluate())
        self.metrics.write({"step": 0, "tokens": 0, "val_loss": self.last_losses[1]})
        self.progress.message(f"step 0 | val {self.last_losses[1]:.4f}")
        self._probe()

    def _diverged(self) -> _End:
        saved = self.checkpoints.saved_steps()
        where = f"the last checkpoint is step {saved[-1]}" if saved else "no checkpoint was saved"
        return _End(
            diverged_step=self.step,
            message=(
                f"training diverged: {self.bad_steps} non-finite steps in a row (last at step {self.step}); "
                f"stopped without saving this state ({where}). Try a lower --lr or a higher-precision recipe."
            ),
        )

    def _interrupted(self) -> _End:
        how = "interrupted" if self.stop_signal in (None, "SIGINT") else "stopped by " + self.stop_signal
        return _End(
            interrupted=True,
            message=(f"{how} at step {self.step}: checkpoint saved; run the same command with --resume to continue"),
        )

    def _finish(self, end: _End) -> TrainResult:
        """After the loop: the per-sequence evaluation of a completed run, the stop message, the result."""
        if end.diverged_step is None and not end.interrupted and self.step == self.total_steps:
            self._sequence_eval()
        if end.message:
            self._say(end.message)
        elapsed = self.elapsed()
        # A diverged run has no final losses: the last finite ones (a validation from step 0, say) would pass for them.
        final = (None, None) if end.diverged_step is not None else self.last_losses
        return TrainResult(
            final_train_loss=final[0],
            final_val_loss=final[1],
            steps=self.step,
            tokens=self.tokens,
            wall_time_s=elapsed["wall_time_s"],
            tokens_per_s=elapsed["tokens_per_s"],
            out_dir=str(self.out),
            diverged=end.diverged_step is not None,
            diverged_step=end.diverged_step,
            interrupted=end.interrupted,
            resumed_from=self.resumed_from,
            message=end.message,
            rank=self.ctx.rank,
            stop_signal=self.stop_signal if end.interrupted else None,
        )

    def _step_and_log(self) -> bool:
        """One training step, plus the read-back, evaluation, metrics record and progress update it is due.

        Returns whether this step's losses were read back: always, unless the read-back is deferred (host_sync
        "log"), where it happens on logging, evaluation and checkpoint steps only."""
        c = self.config
        t0 = time.perf_counter()
        loss, grad_norm, lr, precision = self.train_step()
        self.clock.add_step(time.perf_counter() - t0, self.tokens_per_step)
        self._pending.append(
            {
                "step": self.step,
                "tokens": self.tokens,
                "train_loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens_per_s": self.clock.window_tokens_per_s(),
                "precision": precision,
            }
        )
        evaluate = self.step == self.total_steps or (c.eval_interval > 0 and self.step % c.eval_interval == 0)
        probe = self._probe_due()
        due = evaluate or probe or self.step == 1 or self.step % c.log_interval == 0 or self.checkpoints.due(self.step)
        # A single process reads back at once on Ctrl-C; ranks must read back (and agree on stopping) at the same steps.
        stop_now = self.stop_requested and self.ctx.world_size == 1
        if self.deferred and not (due or stop_now):
            return False
        self._read_back(evaluate)
        if probe:
            self._probe()
        return True

    def _probe_due(self) -> bool:
        every = self.config.probe_interval
        return every > 0 and (self.step % every == 0 or self.step == self.total_steps)

    def _probe(self) -> None:
        """A ``{"step", "tokens", "probe"}`` record of ``training_probe`` on the first validation batch (rank 0; the
        run itself is untouched: the probe works on copies and draws from no RNG)."""
        if not self.config.probe_interval or not self.ctx.is_main:
            return
        from nvfp4.analysis.probe import training_probe

        c = self.config
        x, y = next(iter(val_batches(self.data.val, c.batch_size, c.seq_len, 1)))
        figures = training_probe(
            self.model,
            (x.to(self.device), y.to(self.device)),
            autocast=self.use_autocast,
            seed=c.seed,
            backend=c.backend,
        )
        self.metrics.write({"step": self.step, "tokens": self.tokens, "probe": figures})

    def _read_back(self, evaluate: bool) -> None:
        """Account for the pending steps in order: finite or skipped (bad-step count, events), the latest losses,
        the evaluation of the newest step if due, metrics records and progress. Deferred: one device sync for all."""
        c = self.config
        records, self._pending = self._pending, []
        if self.deferred:
            pairs = torch.stack([torch.stack((r["train_loss"], r["grad_norm"])) for r in records]).tolist()
            for record, (loss, grad_norm) in zip(records, pairs, strict=True):
                record["train_loss"], record["grad_norm"] = loss, grad_norm
        for i, record in enumerate(records):
            finite = math.isfinite(record["train_loss"]) and math.isfinite(record["grad_norm"])
            if finite:
                self.bad_steps = 0
                self.last_losses = (record["train_loss"], self.last_losses[1])
            else:
                self.bad_steps += 1
                record["event"] = "skipped_nonfinite"
                self._say(
                    f"step {record['step']}: non-finite loss/grad norm ({record['train_loss']}, "
                    f"{record['grad_norm']}); step skipped"
                )
            evaluated = evaluate and i == len(records) - 1
            if evaluated:
                record["val_loss"] = self.evaluate()
                self.last_losses = (self.last_losses[0], record["val_loss"])
            step = record["step"]
            logged = evaluated or not finite or step == 1 or step % c.log_interval == 0
            if logged:
                self.metrics.write(record)
                self.clock.reset_window()
            self.progress.step(record, logged)
            if self.on_step is not None and self.ctx.is_main:
                self.on_step(record)

    def train_step(self) -> tuple[Any, Any, float, dict[str, str]]:
        """One optimizer step over grad_accum micro-batches; returns (loss, pre-clip grad norm, lr, precision).

        A non-finite loss or gradient norm skips the update (the gradients are dropped). The loss and grad norm are
        floats, or 0-d device tensors when the read-back is deferred (nothing here waits for the device then).
        """
        c = self.config
        nvfp4.apply_precision_schedule(self.model, self.recipe, self.step / self.total_steps, self.tokens)
        precision = precision_state(self.model, self.recipe)
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(c.grad_accum):
            x, y = next(self.loader)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with D.gradient_sync(self.train_model, self.ctx, sync=micro == c.grad_accum - 1), self._autocast():
                _, loss = self.train_model(x, y)
            (loss / c.grad_accum).backward()
            loss_sum += loss.detach().float()
        loss_mean = D.mean(loss_sum / c.grad_accum, self.ctx)
        max_norm = c.grad_clip if c.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.train_model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP2
            grad_norm = grad_norm.full_tensor()
        if self.deferred:
            # No read-back: a non-finite step is skipped on the device (fused AdamW's found_inf), and counted when
            # the losses are read back (_read_back).
            self.optimizer.found_inf = (~(torch.isfinite(loss_mean) & torch.isfinite(grad_norm))).float()
            self.optimizer.step()
            loss_out, grad_norm_out = loss_mean.detach().float(), grad_norm.detach().float()
        else:
            loss_out, grad_norm_out = float(loss_mean), float(grad_norm)
            if math.isfinite(loss_out) and math.isfinite(grad_norm_out):
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        drop_weight_caches(self.model)
        self.step += 1
        self.tokens += self.tokens_per_step
        return loss_out, grad_norm_out, lr, precision

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss per token over the first ``eval_batches`` fixed global batches.

        The batches are the same on every call and for any number of ranks: each rank evaluates its
        rows of each global batch and the sums are combined.
        """
        c, rank = self.config, self.ctx.rank
        self.model.eval()
        total, count = 0.0, 0.0
        try:
            for x, y in val_batches(self.data.val, c.batch_size * self.ctx.world_size, c.seq_len, c.eval_batches):
                rows = slice(rank * c.batch_size, (rank + 1) * c.batch_size)
                xs, ys = x[rows], y[rows]
                weight = 1.0
                if len(xs) == 0:  # a short last batch: a zero-weight row keeps every rank's forwards in step
                    xs, ys, weight = x[:1], y[:1], 0.0
                with self._autocast():
                    _, loss = self.model(xs.to(self.device), ys.to(self.device))
                total += float(loss) * ys.numel() * weight
                count += ys.numel() * weight
        finally:
            self.model.train()
            drop_weight_caches(self.model)
        total, count = D.sum_floats([total, count], self.ctx)
        return total / count

    @torch.no_grad()
    def _sequence_eval(self) -> None:
        """OUT/val_sequences.json: the mean loss of each validation sequence (the first ``sequence_eval_batches``
        fixed batches, -1 = all), so that runs can be compared sequence by sequence (paired bootstrap). Rank 0,
        once per final step."""
        c = self.config
        path = self.out / SEQUENCE_EVAL_FILE
        if not c.sequence_eval_batches or not self.ctx.is_main:
            return
        if path.exists() and json.loads(path.read_text()).get("step") == self.step:
            return
        limit = None if c.sequence_eval_batches < 0 else c.sequence_eval_batches
        losses: list[float] = []
        self.model.eval()
        try:
            for x, y in val_batches(self.data.val, c.batch_size, c.seq_len, limit):
                with self._autocast():
                    logits, _ = self.model(x.to(self.device))
                per_token = torch.nn.functional.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), y.to(self.device).reshape(-1), reduction="none"
                )
                losses += per_token.reshape(y.shape).mean(dim=1).tolist()
        finally:
            self.model.train()
            drop_weight_caches(self.model)
        record = {
            "step": self.step,
            "tokens": self.tokens,
            "seq_len": c.seq_len,
            "sequences": len(losses),
            "mean_loss": sum(losses) / len(losses),
            "losses": losses,
        }
        atomic_write(path, json.dumps(record).encode())

    def save_checkpoint(self) -> bool:
        """Write a checkpoint of this step (rank 0) after checking every parameter is finite; False if refused."""
        return self.checkpoints.save()

    # -- helpers -----------------------------------------------------------------------------------
    def _autocast(self):
        if not self.use_autocast:
            return nullcontext()
        return torch.autocast(self.autocast_device, dtype=torch.bfloat16)

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)
        elif self.verbose:
            print(text, flush=True)

    STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")  # Ctrl-C; schedulers' preemption; SLURM's advance warning

    def _install_sigint(self) -> Any:
        """Ctrl-C, SIGTERM and SIGUSR1 finish the current step, save a checkpoint and return; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return None
        signums = [getattr(signal, name) for name in self.STOP_SIGNALS if hasattr(signal, name)]
        previous = {signum: signal.getsignal(signum) for signum in signums}

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:  # the second request: stop now, as the signal would without us
                for restored in signums:
                    signal.signal(restored, signal.default_int_handler if restored == signal.SIGINT else signal.SIG_DFL)
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                signal.raise_signal(signum)
                return
            self.stop_requested = True
            self.stop_signal = signal.Signals(signum).name
            self._say(f"\n{self.stop_signal}: finishing this step and saving a checkpoint (again to abort)")

        for signum in signums:
            signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_sigint(previous: Any) -> None:
        if previous is not None:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def close(self) -> None:
        """Close the logs, release the run directory and let go of the model, optimizer and wrappers (see
        distributed.teardown)."""
        self.metrics.close()
        if self.lock is not None:
            self.lock.release()
        self.train_model = self.model = self.optimizer = None  # type: ignore[assignment]
