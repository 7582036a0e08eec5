"""End-to-end runs of the trainer on the built-in corpus: learning, exact resume, divergence handling."""

from __future__ import annotations

import math
import signal
import warnings
from pathlib import Path

import pytest
import torch

from nvfp4.data import ShardError
from nvfp4.model import GPT
from nvfp4.recipe import OPERANDS
from nvfp4.train import Trainer, list_checkpoints, load_checkpoint, load_latest, read_metrics, train
from nvfp4.train.distributed import DistContext


def train_losses(out: str | Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(out) if "train_loss" in r]


def val_losses(out: str | Path) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in read_metrics(out) if "val_loss" in r]


def interrupt_at(step: int):
    """An on_step callback that presses Ctrl-C after ``step``."""

    def callback(record: dict) -> None:
        if record["step"] == step:
            signal.raise_signal(signal.SIGINT)

    return callback


@pytest.mark.parametrize("recipe", ["bf16", "nvfp4"])
def test_loss_decreases_on_builtin_corpus(make_config, recipe):
    config = make_config(recipe=recipe, max_steps=20, eval_interval=10, checkpoint_interval=0)
    result = train(config)
    vals = val_losses(config.out)
    assert [s for s, _ in vals] == [0, 10, 20]
    assert vals[0][1] > 5.0  # about ln(257): an untrained byte model
    assert vals[-1][1] < vals[0][1] - 1.5, vals
    losses = [v for _, v in train_losses(config.out)]
    assert sum(losses[-3:]) < sum(losses[:3]) - 3.0, losses
    assert result.final_val_loss == vals[-1][1] and result.steps == 20 and not result.diverged
    assert result.tokens == 20 * 4 * 64


@pytest.mark.parametrize("recipe", ["bf16", "nvfp4"])
def test_resume_after_interrupt_is_bitwise_identical(make_config, tmp_path, recipe):
    settings = dict(recipe=recipe, max_steps=6, eval_interval=3, checkpoint_interval=3)
    straight = make_config(**settings, out=str(tmp_path / "straight"))
    train(straight)

    # Ctrl-C after step 2 (between checkpoints and evals): a checkpoint is saved, the run returns.
    cut = make_config(**settings, out=str(tmp_path / "cut"))
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    result = train(cut, on_step=interrupt_at(2))
    assert result.interrupted and result.steps == 2 and not result.diverged
    assert [s for s, _ in list_checkpoints(Path(cut.out) / "checkpoints")] == [2]
    assert signal.getsignal(signal.SIGINT) is handler_before  # the caller's handler restored

    resumed = train(make_config(**settings, out=cut.out, resume=True))
    assert resumed.resumed_from == 2 and resumed.steps == 6
    # time and throughput add up over both invocations: the last checkpoint counts all 6 steps' tokens
    _, final_state = load_latest(Path(cut.out) / "checkpoints")
    assert final_state["elapsed"]["train_tokens"] == 6 * cut.batch_size * cut.seq_len
    assert resumed.wall_time_s >= final_state["elapsed"]["wall_time_s"] > result.wall_time_s > 0
    assert train_losses(cut.out) == train_losses(straight.out)  # exact float equality, every step
    assert val_losses(cut.out) == val_losses(straight.out)
    assert [s for s, _ in train_losses(straight.out)] == [1, 2, 3, 4, 5, 6]


# nvfp4-sr-everywhere quantizes weights with stochastic rounding: resuming from a checkpoint taken
# right after an evaluation must not depend on weights quantized during that evaluation.
@pytest.mark.parametrize("recipe", ["bf16", "nvfp4-sr-everywhere"])
def test_resume_from_older_checkpoint_rewinds_metrics_and_skips_corrupt_files(make_config, recipe):
    config = make_config(recipe=recipe, checkpoint_interval=2, keep_checkpoints=5)
    train(config)
    reference = read_metrics(config.out)
    ckpts = Path(config.out) / "checkpoints"
    # A crash mid-write leaves a temp file; a bad copy leaves a truncated checkpoint; step 8 is lost.
    (ckpts / "step_00000008.pt").unlink()
    (ckpts / ".step_00000008.pt.1234.tmp").write_bytes(b"partial")
    step6 = ckpts / "step_00000006.pt"
    step6.write_bytes(step6.read_bytes()[: step6.stat().st_size // 2])

    with pytest.warns(UserWarning, match="step_00000006.pt"):
        result = train(make_config(recipe=recipe, checkpoint_interval=2, keep_checkpoints=5, resume=True))
    assert result.resumed_from == 4 and result.steps == 8
    again = read_metrics(config.out)
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in again] == [
        {k: v for k, v in r.items() if k not in drop} for r in reference
    ]
    assert not list(ckpts.glob("*.tmp"))


def test_checkpoint_holds_everything_for_resume(make_config):
    config = make_config(recipe="nvfp4", max_steps=2, checkpoint_interval=2, eval_interval=0)
    train(config)
    state = load_checkpoint(Path(config.out) / "checkpoints" / "step_00000002.pt")
    assert state["step"] == 2 and state["tokens"] == 2 * 4 * 64
    assert state["config"]["recipe"] == "nvfp4"
    assert state["sr"] and all(v > 0 for v in state["sr"].values())  # SR counters advanced
    assert state["loader"]["step"] == 2
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert state["metrics_offset"] == (Path(config.out) / "metrics.jsonl").stat().st_size
    assert (Path(config.out) / "checkpoints" / "latest").read_text().strip() == "step_00000002.pt"


def test_resume_with_different_recipe_is_refused(make_config):
    train(make_config(max_steps=2, checkpoint_interval=2, eval_interval=0))
    with pytest.raises(ValueError, match="recipe='bf16'.*recipe='nvfp4'"):
        train(make_config(recipe="nvfp4", max_steps=4, resume=True))
    with pytest.raises(ValueError, match="d_model"):
        train(make_config(d_model=32, max_steps=4, resume=True))


def test_existing_run_needs_resume_flag(make_config):
    train(make_config(max_steps=2, checkpoint_interval=2, eval_interval=0))
    with pytest.raises(ValueError, match="--resume"):
        train(make_config(max_steps=2))


class _NaNGrad(torch.autograd.Function):
    """Identity forward, NaN gradient: a finite loss whose backward blows up."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def poison_forward(monkeypatch, bad_steps: set[int] | None, start: int | None = None, where: str = "loss") -> None:
    """Make GPT's training forward return a NaN loss (or NaN gradients) on the given 1-based steps."""
    original = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        logits, loss = original(self, idx, targets)
        if not self.training:
            return logits, loss
        calls["n"] += 1
        step = calls["n"]
        if (bad_steps is not None and step in bad_steps) or (start is not None and step >= start):
            loss = loss * float("nan") if where == "loss" else _NaNGrad.apply(loss)
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_logged(make_config, monkeypatch, where):
    poison_forward(monkeypatch, bad_steps={3}, where=where)
    config = make_config(max_steps=5, eval_interval=0, checkpoint_interval=0)
    result = train(config)
    events = [r for r in read_metrics(config.out) if r.get("event") == "skipped_nonfinite"]
    assert [e["step"] for e in events] == [3]
    assert not result.diverged and result.steps == 5 and math.isfinite(result.final_train_loss)
    state = load_checkpoint(Path(config.out) / "checkpoints" / "step_00000005.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_repeated_nonfinite_steps_stop_training_without_nan_checkpoint(make_config, monkeypatch, capsys):
    poison_forward(monkeypatch, bad_steps=None, start=3)
    config = make_config(max_steps=20, max_bad_steps=3, checkpoint_interval=2, eval_interval=0, quiet=False)
    result = train(config)
    assert result.diverged and result.diverged_step == 5 and result.steps == 5
    assert "diverged" in result.message and "3 non-finite steps in a row" in capsys.readouterr().out
    steps = [s for s, _ in list_checkpoints(Path(config.out) / "checkpoints")]
    assert steps and max(steps) < 5  # nothing saved when it stopped
    for _, path in list_checkpoints(Path(config.out) / "checkpoints"):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    events = [r["step"] for r in read_metrics(config.out) if r.get("event") == "skipped_nonfinite"]
    assert events == [3, 4, 5]


def test_precision_switch_happens_at_80_percent(make_config):
    config = make_config(recipe="nvfp4-switch-both", max_steps=10, eval_interval=0, checkpoint_interval=0)
    train(config)
    precision = {r["step"]: r["precision"] for r in read_metrics(config.out) if "precision" in r}
    assert sorted(precision) == list(range(1, 11))
    for step in range(1, 9):
        assert precision[step] == {"forward": "nvfp4", "backward": "nvfp4"}, step
    for step in (9, 10):
        assert precision[step] == {"forward": "bf16", "backward": "bf16"}, step


def test_max_tokens_sets_the_number_of_steps(make_config):
    config = make_config(max_steps=None, max_tokens=3 * 4 * 64 + 1, eval_interval=0, checkpoint_interval=0)
    result = train(config)
    assert result.steps == 4  # rounded up to whole steps
    assert [s for s, _ in train_losses(config.out)] == [1, 2, 3, 4]


def test_grad_accum_matches_a_larger_batch(make_config, tmp_path):
    big = make_config(max_steps=3, batch_size=4, eval_interval=0, checkpoint_interval=0, out=str(tmp_path / "a"))
    accum = make_config(
        max_steps=3, batch_size=2, grad_accum=2, eval_interval=0, checkpoint_interval=0, out=str(tmp_path / "b")
    )
    train(big), train(accum)
    for (_, a), (_, b) in zip(train_losses(big.out), train_losses(accum.out), strict=True):
        assert a == pytest.approx(b, rel=2e-3)


def test_corrupt_shard_is_a_clear_error(make_config, tmp_path):
    bad = tmp_path / "shards"
    bad.mkdir()
    (bad / "train_000.bin").write_bytes(b"not a shard at all")
    with pytest.raises(ShardError, match="train_000.bin"):
        train(make_config(data=[str(bad)]))


def test_train_runs_twice_in_one_process_with_identical_results(make_config, tmp_path):
    a = make_config(max_steps=2, eval_interval=0, checkpoint_interval=0, out=str(tmp_path / "a"))
    b = make_config(max_steps=2, eval_interval=0, checkpoint_interval=0, out=str(tmp_path / "b"))
    train(a), train(b)
    assert train_losses(a.out) == train_losses(b.out)


def test_init_and_data_order_depend_on_seed_only(make_config, tmp_path):
    """`nvfp4 compare` relies on this: every recipe starts from the same weights and sees the same batches."""

    def first_state(recipe: str, seed: int) -> tuple[dict, torch.Tensor]:
        config = make_config(recipe=recipe, seed=seed, out=str(tmp_path / f"{recipe}-{seed}"))
        trainer = Trainer(config, DistContext(), torch.device("cpu"))
        try:
            return {k: v.clone() for k, v in trainer.model.state_dict().items()}, next(trainer.loader)[0]
        finally:
            trainer.close()

    (a, xa), (b, xb), (c, xc) = first_state("nvfp4", 0), first_state("bf16", 0), first_state("nvfp4", 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and torch.equal(xa, xb)
    assert not all(torch.equal(a[k], c[k]) for k in a) and not torch.equal(xa, xc)


def test_resuming_a_finished_run_reports_its_final_losses(make_config):
    first = train(make_config(max_steps=2, eval_interval=0, checkpoint_interval=0))
    again = train(make_config(max_steps=2, eval_interval=0, checkpoint_interval=0, resume=True))
    assert "nothing to do" in again.message and again.steps == 2 and again.resumed_from == 2
    assert (again.final_train_loss, again.final_val_loss) == (first.final_train_loss, first.final_val_loss)
    assert again.final_val_loss is not None


def test_tensorboard_scalars_or_a_clear_warning(make_config):
    """With the tensorboard package: event files in OUT/tb; without it: a warning, and training goes on."""
    config = make_config(max_steps=1, eval_interval=0, tensorboard=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(config)
    assert result.steps == 1
    events = list((Path(config.out) / "tb").glob("events.*"))
    assert events or any("tensorboard logging disabled" in str(w.message) for w in caught)


def test_branch_before_the_switch_repeats_the_unbranched_run(make_config, tmp_path):
    """A switch recipe branched from the base recipe's checkpoint at the switch step trains bit for bit as the
    switch recipe trained from scratch (what `nvfp4 compare` uses to skip 80% of each switch run)."""
    from nvfp4 import recipes
    from nvfp4.train.checkpoint import checkpoint_path

    base = make_config(recipe="nvfp4", keep_steps=[7], keep_checkpoints=1, out=str(tmp_path / "base"))
    first = recipes.get("nvfp4-switch-fwd").switch.first_active_step(8, base.tokens_per_step())
    assert first == 7  # 7/8 >= 0.8 > 6/8
    train(base)
    assert [s for s, _ in list_checkpoints(Path(base.out) / "checkpoints")] == [7, 8]  # 7 outlived the rotation
    scratch = make_config(recipe="nvfp4-switch-fwd", out=str(tmp_path / "scratch"))
    train(scratch)
    kept = checkpoint_path(Path(base.out) / "checkpoints", 7)
    branched = make_config(recipe="nvfp4-switch-fwd", branch_from=str(kept), out=str(tmp_path / "branched"))
    result = train(branched)
    assert result.resumed_from == 7

    def curve(out):
        return [(r["step"], r.get("train_loss"), r.get("val_loss"), r.get("precision")) for r in read_metrics(out)]

    assert curve(branched.out) == curve(scratch.out)  # the copied prefix and the switched steps alike
    assert curve(branched.out)[-1][3] == {"forward": "bf16", "backward": "nvfp4"}
    assert curve(base.out)[:8] == curve(scratch.out)[:8]  # steps 0-7: nothing switched yet


def test_branch_refuses_other_recipes_and_points_past_the_switch(make_config, tmp_path):
    base = make_config(recipe="nvfp4", checkpoint_interval=0, out=str(tmp_path / "base"))
    train(base)
    final = Path(base.out) / "checkpoints" / "step_00000008.pt"
    with pytest.raises(ValueError, match="differs from 'nvfp4-no-sr' in more than the late precision switch"):
        train(make_config(recipe="nvfp4-no-sr", branch_from=str(final), out=str(tmp_path / "a")))
    with pytest.raises(ValueError, match=r"switches precision at step 7.*--keep-steps 7"):
        train(make_config(recipe="nvfp4-switch-bwd", branch_from=str(final), out=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="cannot branch"):
        train(make_config(recipe="nvfp4-switch-bwd", branch_from=str(tmp_path / "missing.pt"), out=str(tmp_path / "c")))


# -- deferred read-back (host_sync "log", the default on GPUs) --------------------------------------------------------


def test_deferred_read_back_logs_the_same_steps_and_reads_nothing_in_between(make_config, monkeypatch):
    """With host_sync="log" a training step never reads a tensor back; the losses of the steps in between are read in
    one go at the next logging step, and the logged steps are those of the per-step mode."""
    import nvfp4.train.trainer as trainer_module

    inside = {"step": False}
    original_step = trainer_module.Trainer.train_step

    def guarded_step(self):
        inside["step"] = True
        try:
            return original_step(self)
        finally:
            inside["step"] = False

    def no_read(name):
        original = getattr(torch.Tensor, name)

        def read(t, *args, **kwargs):
            assert not inside["step"], f"Tensor.{name} inside a deferred training step (a device sync on a GPU)"
            return original(t, *args, **kwargs)

        return read

    monkeypatch.setattr(trainer_module.Trainer, "train_step", guarded_step)
    for name in ("item", "tolist", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, no_read(name))
    runs = {}
    for mode in ("step", "log"):
        config = make_config(
            max_steps=7,
            log_interval=3,
            eval_interval=0,
            checkpoint_interval=0,
            host_sync=mode,
            out=str(Path(make_config().out).parent / mode),
        )
        if mode == "step":
            monkeypatch.setattr(trainer_module.Trainer, "train_step", original_step)
        else:
            monkeypatch.setattr(trainer_module.Trainer, "train_step", guarded_step)
        result = train(config)
        runs[mode] = [r for r in read_metrics(config.out) if "train_loss" in r]
        assert not result.diverged and math.isfinite(result.final_train_loss)
    assert [r["step"] for r in runs["log"]] == [r["step"] for r in runs["step"]] == [1, 3, 6, 7]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["grad_norm"]) for r in runs["log"])


def test_deferred_nonfinite_steps_are_skipped_on_device_and_counted_late(make_config, monkeypatch):
    poison_forward(monkeypatch, bad_steps=None, start=3)
    config = make_config(
        max_steps=20, max_bad_steps=3, log_interval=4, checkpoint_interval=4, eval_interval=0, host_sync="log"
    )
    result = train(config)
    # Read back at steps 1, 4 (bad: 3, 4) and 8 (bad: 5-8): the third bad step in a row is seen at step 8.
    assert result.diverged and result.diverged_step == 8
    events = [r["step"] for r in read_metrics(config.out) if r.get("event") == "skipped_nonfinite"]
    assert events == [3, 4, 5, 6, 7, 8]
    for _, path in list_checkpoints(Path(config.out) / "checkpoints"):
        state = load_checkpoint(path)  # the skipped steps changed nothing: every checkpoint is finite
        assert all(torch.isfinite(t).all() for t in state["model"].values())
        assert int(state["step"]) == 4 and int(state["bad_steps"]) == 2


def test_deferred_resume_is_bitwise_identical(make_config, tmp_path):
    settings = dict(
        recipe="nvfp4", max_steps=6, eval_interval=3, checkpoint_interval=3, log_interval=2, host_sync="log"
    )
    straight = make_config(**settings, out=str(tmp_path / "straight"))
    train(straight)
    cut = make_config(**settings, out=str(tmp_path / "cut"))
    first = train(cut, on_step=interrupt_at(2))  # Ctrl-C seen at step 2: read back, checkpoint, return
    assert first.interrupted and first.steps == 2
    resumed = train(make_config(**settings, out=cut.out, resume=True))
    assert resumed.resumed_from == 2 and resumed.steps == 6
    assert train_losses(cut.out) == train_losses(straight.out)
    assert [s for s, _ in train_losses(straight.out)] == [1, 2, 3, 4, 6]


def test_stop_messages_are_printed_once_and_say_what_was_saved(make_config, monkeypatch, capsys):
    poison_forward(monkeypatch, bad_steps=None, start=3)
    config = make_config(max_steps=20, max_bad_steps=3, checkpoint_interval=2, eval_interval=0, quiet=False)
    result = train(config)
    print(result.summary())  # what the CLI prints after the run
    out = capsys.readouterr().out
    assert out.count("training diverged") == 1
    assert "the last checkpoint is step 4" in result.message  # finite: the skipped steps changed nothing
    assert result.final_val_loss is None and result.final_train_loss is None  # not step 0's validation loss
    assert "val loss -" in out


def test_resume_with_changed_settings_says_so(make_config, capsys):
    train(make_config(max_steps=2, checkpoint_interval=2))
    train(make_config(max_steps=4, checkpoint_interval=2, resume=True, lr=1e-3, quiet=False))
    out = capsys.readouterr().out
    assert "note: resuming with changed settings: lr=0.001 (was 0.003), max_steps=4 (was 2)" in out


def test_a_recipe_that_quantizes_nothing_says_so(make_config, capsys):
    train(make_config(recipe="nvfp4", n_layer=2, max_steps=1, quiet=False))  # first and last block kept in BF16
    assert "quantizes none of this model's" in capsys.readouterr().out


def test_probe_interval_logs_figures_and_leaves_the_run_unchanged(make_config, tmp_path):
    plain = train(make_config(recipe="nvfp4", out=str(tmp_path / "plain")))
    probed = train(make_config(recipe="nvfp4", out=str(tmp_path / "probed"), probe_interval=4))
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "probed")  # bit for bit: floats compared
    assert val_losses(tmp_path / "plain") == val_losses(tmp_path / "probed")
    assert plain.final_val_loss == probed.final_val_loss
    records = [r for r in read_metrics(tmp_path / "probed") if "probe" in r]
    assert [r["step"] for r in records] == [0, 4, 8]
    probe = records[-1]["probe"]
    assert 0 < probe["grad_noise"] < 1 and probe["grad_signal_to_noise"] == pytest.approx(1 / probe["grad_noise"])
    quantized = {n: v for n, v in probe["layers"].items() if "sqnr_db" in v}
    assert quantized and all(set(v["sqnr_db"]) == set(OPERANDS) for v in quantized.values())
    assert all(10 < s < 30 for v in quantized.values() for s in v["sqnr_db"].values())
    with pytest.raises(ValueError, match="probe-interval"):
        make_config(probe_interval=2, distributed="fsdp")


def test_sequence_eval_writes_per_sequence_losses_of_the_final_model(make_config, tmp_path):
    import json

    result = train(make_config(recipe="nvfp4", sequence_eval_batches=2))
    record = json.loads((tmp_path / "run" / "val_sequences.json").read_text())
    assert record["step"] == 8 and record["sequences"] == 2 * 4 == len(record["losses"])
    # the same two fixed batches as the final evaluation (eval_batches=2): the same mean loss
    assert record["mean_loss"] == pytest.approx(result.final_val_loss, rel=1e-5)
    with pytest.raises(ValueError, match="sequence_eval_batches"):
        make_config(sequence_eval_batches=-2)


def test_the_hybrid_trains_and_resumes_bit_for_bit(make_config, tmp_path):
    hybrid = dict(
        model="hybrid-tiny",
        n_layer=None,
        d_model=64,
        d_ff=128,
        n_head=2,
        n_kv_head=1,
        recipe="nvfp4",
        max_steps=4,
        eval_interval=2,
        checkpoint_interval=2,
    )
    straight = make_config(**hybrid, out=str(tmp_path / "straight"))
    train(straight)
    cut = make_config(**hybrid, out=str(tmp_path / "cut"))
    assert train(cut, on_step=interrupt_at(1)).interrupted
    assert train(make_config(**hybrid, out=cut.out, resume=True)).steps == 4
    assert train_losses(cut.out) == train_losses(straight.out) and val_losses(cut.out) == val_losses(straight.out)
    state = load_latest(Path(cut.out) / "checkpoints")[1]
    assert "pattern" in state["model_config"] and state["sr"]  # a hybrid, with its SR counters
