"""The checkpoint manager's rules without a model: how a run starts (scratch, resume, branch), what it refuses, what
it writes. The trainer's stateful part is stood in for by a dict-backed object."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nvfp4 import recipes
from nvfp4.train import TrainConfig
from nvfp4.train.checkpoint import (
    CHECKPOINT_KEYS,
    CHECKPOINT_VERSION,
    STATE_KEYS,
    CheckpointManager,
    StartPoint,
    checkpoint_path,
    load_checkpoint,
)
from nvfp4.train.distributed import DistContext
from nvfp4.train.metrics import METRICS_FILE

MODEL = {"d_model": 64, "n_layer": 4, "vocab_size": 257}  # what the manager compares; no model is built
TOKENS_PER_STEP = 4 * 64  # batch_size x seq_len below
# The on-disk format, written out: checkpoints of earlier versions hold exactly these keys, in this order.
FORMAT = [
    "version",
    "step",
    "tokens",
    "bad_steps",
    "model",
    "optimizer",
    "optimizer_format",
    "rng",
    "sr",
    "loader",
    "config",
    "model_config",
    "recipe",
    "metrics_offset",
    "last_train_loss",
    "last_val_loss",
    "world_size",
    "elapsed",
]


class FakeRun:
    """The trainer's stateful part as the manager sees it: ``state_dict()`` and ``load_state_dict()``."""

    def __init__(self, step: int = 0, weight: float = 0.0) -> None:
        self.loaded: dict[str, Any] | None = None
        self.set(step, weight)

    def set(self, step: int, weight: float) -> None:
        """The state after ``step`` steps: the weight stands for the parameters, the offset for metrics.jsonl."""
        self.state = {
            "step": step,
            "tokens": step * TOKENS_PER_STEP,
            "bad_steps": 0,
            "model": {"w": torch.full((3,), weight)},
            "optimizer": {"state": {}, "param_groups": []},
            "rng": {"python": step},
            "sr": {"layer": step},
            "loader": {"step": step},
            "metrics_offset": 100 * step,
            "last_train_loss": 5.0 - step / 10,
            "last_val_loss": None,
            "elapsed": {"wall_time_s": 1.5 * step, "train_time_s": float(step), "train_tokens": step * TOKENS_PER_STEP},
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = state
        self.state = {k: state[k] for k in STATE_KEYS}


def make_config(tmp_path: Path, name: str = "run", **overrides: Any) -> TrainConfig:
    values: dict[str, Any] = dict(
        recipe="nvfp4",
        model="tiny",
        n_layer=4,
        d_model=64,
        batch_size=4,
        seq_len=64,
        max_steps=8,
        checkpoint_interval=2,
        keep_checkpoints=5,
        lr=3e-3,
        out=str(tmp_path / name),
        quiet=True,
    )
    values.update(overrides)
    return TrainConfig(**values)


def manager(config: TrainConfig, run: FakeRun, said: list[str] | None = None, **kwargs: Any) -> CheckpointManager:
    kwargs.setdefault("model_config", MODEL)
    return CheckpointManager(config.out, config, run, say=(said if said is not None else []).append, **kwargs)


def write_run(config: TrainConfig, steps: list[int]) -> CheckpointManager:
    """A run of ``config`` that saved checkpoints at ``steps`` (weight = step), as a trainer would have."""
    run = FakeRun()
    m = manager(config, run)
    for step in steps:
        run.set(step, float(step))
        assert m.save()
    return m


def snapshot(directory: str | Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in Path(directory).rglob("*") if p.is_file()}


# -- saving ---------------------------------------------------------------------------------------------------------


def test_save_writes_the_18_keys_in_the_checkpoint_format(tmp_path):
    config = make_config(tmp_path)
    write_run(config, [2])
    state = load_checkpoint(checkpoint_path(Path(config.out) / "checkpoints", 2))
    assert list(state) == list(CHECKPOINT_KEYS) == FORMAT
    assert state["version"] == CHECKPOINT_VERSION and state["world_size"] == 1 and state["optimizer_format"] == "index"
    assert state["config"] == config.to_dict() and state["model_config"] == MODEL
    assert state["recipe"] == recipes.get("nvfp4").to_dict()
    assert state["step"] == 2 and state["tokens"] == 2 * TOKENS_PER_STEP and state["metrics_offset"] == 200
    assert torch.equal(state["model"]["w"], torch.full((3,), 2.0))
    assert (Path(config.out) / "checkpoints" / "latest").read_text() == "step_00000002.pt\n"


def test_due_steps_are_the_interval_the_kept_steps_and_the_last(tmp_path):
    m = manager(make_config(tmp_path, checkpoint_interval=3, keep_steps=[5]), FakeRun())
    assert [s for s in range(1, 9) if m.due(s)] == [3, 5, 6, 8]
    m = manager(make_config(tmp_path, checkpoint_interval=0), FakeRun())
    assert [s for s in range(1, 9) if m.due(s)] == [8]


def test_retention_keeps_the_last_k_and_every_kept_step(tmp_path):
    m = write_run(make_config(tmp_path, keep_checkpoints=2, keep_steps=[1]), [1, 2, 3, 4, 5])
    assert m.saved_steps() == [1, 4, 5]


def test_a_non_finite_state_is_refused_said_and_not_written(tmp_path):
    said: list[str] = []
    run = FakeRun(3, float("nan"))
    m = manager(make_config(tmp_path), run, said)
    assert m.save() is False
    assert said == ["refusing to save checkpoint at step 3: model tensor 'w' is not finite"]
    assert m.saved_steps() == []


# -- starting: scratch and resume -----------------------------------------------------------------------------------


def test_a_fresh_run_starts_from_scratch_and_writes_nothing(tmp_path):
    run = FakeRun()
    start = manager(make_config(tmp_path), run).start()
    assert start == StartPoint("scratch") and start.resumed_from is None
    assert run.loaded is None and not (tmp_path / "run").exists()


def test_resume_without_checkpoints_starts_from_scratch_and_says_so(tmp_path):
    said: list[str] = []
    config = make_config(tmp_path, resume=True)
    assert manager(config, FakeRun(), said).start() == StartPoint("scratch")
    assert said == [f"no checkpoint in {Path(config.out) / 'checkpoints'}: starting from scratch"]


def test_existing_checkpoints_without_resume_are_refused(tmp_path):
    write_run(make_config(tmp_path), [2, 4])
    before = snapshot(tmp_path / "run")
    run = FakeRun()
    with pytest.raises(ValueError, match=r"already holds checkpoints \(up to step 4\); pass --resume"):
        manager(make_config(tmp_path), run).start()
    assert run.loaded is None and snapshot(tmp_path / "run") == before


def test_resume_picks_the_latest_readable_checkpoint(tmp_path):
    write_run(make_config(tmp_path), [2, 4, 6])
    step6 = checkpoint_path(tmp_path / "run" / "checkpoints", 6)
    step6.write_bytes(step6.read_bytes()[: step6.stat().st_size // 2])  # a cut-off copy
    said: list[str] = []
    run = FakeRun()
    with pytest.warns(UserWarning, match="step_00000006.pt"):
        start = manager(make_config(tmp_path, resume=True), run, said).start()
    step4 = checkpoint_path(tmp_path / "run" / "checkpoints", 4)
    assert start == StartPoint("resume", step4, 4, 400) and start.resumed_from == 4
    assert run.loaded is not None and list(run.loaded) == FORMAT  # the whole dict is handed over
    assert run.state["step"] == 4 and torch.equal(run.state["model"]["w"], torch.full((3,), 4.0))
    assert said == [f"resumed from {step4} (step 4, 1,024 tokens)"]


def test_resume_with_no_readable_checkpoint_refuses_and_touches_nothing(tmp_path):
    write_run(make_config(tmp_path), [2, 4])
    for path in (tmp_path / "run" / "checkpoints").glob("step_*.pt"):
        path.write_bytes(b"garbage")
    before = snapshot(tmp_path / "run")
    run = FakeRun()
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"cannot resume: none of the 2 checkpoint\(s\)"):
        manager(make_config(tmp_path, resume=True), run).start()
    assert run.loaded is None and snapshot(tmp_path / "run") == before


@pytest.mark.parametrize(
    ("change", "kwargs", "message"),
    [
        ({"seed": 1}, {}, r"it was trained with seed=0 but this run has seed=1; use the same setting or another --out"),
        ({"recipe": "bf16"}, {}, r"recipe='nvfp4' but this run has recipe='bf16'"),
        ({}, {"model_config": {**MODEL, "d_model": 32}}, "its model architecture differs from this run's"),
        ({}, {"ctx": DistContext(mode="fsdp")}, "FSDP and non-FSDP checkpoints do not mix"),
        ({"max_steps": 4}, {}, r"its step 6 is past this run's 4 steps"),
    ],
)
def test_resume_refuses_a_checkpoint_of_another_run(tmp_path, change, kwargs, message):
    write_run(make_config(tmp_path), [6])
    run = FakeRun()
    with pytest.raises(ValueError, match=r"^cannot resume from .*step_00000006\.pt: .*" + message):
        manager(make_config(tmp_path, resume=True, **change), run, **kwargs).start()
    assert run.loaded is None


def test_resume_with_changed_settings_says_so(tmp_path):
    write_run(make_config(tmp_path), [2])
    said: list[str] = []
    manager(make_config(tmp_path, resume=True, lr=1e-3, max_steps=10), FakeRun(), said).start()
    assert said[-1] == "note: resuming with changed settings: lr=0.001 (was 0.003), max_steps=10 (was 8)"


# -- starting: branch -----------------------------------------------------------------------------------------------


def base_run(tmp_path: Path, step: int) -> Path:
    """An nvfp4 run with a checkpoint at ``step`` and metrics for steps 0-8 (the last line cut off by a crash)."""
    config = make_config(tmp_path, "base", checkpoint_interval=0)
    write_run(config, [step])
    lines = [json.dumps({"step": s, "train_loss": 5.0 - s / 10}) + "\n" for s in range(9)]
    (tmp_path / "base" / METRICS_FILE).write_text("".join(lines) + '{"step": 9, "train_lo')
    return checkpoint_path(tmp_path / "base" / "checkpoints", step)


def test_branch_starts_from_the_checkpoint_and_copies_the_metrics_before_it(tmp_path):
    source = base_run(tmp_path, 7)  # nvfp4-switch-* switch at step 7 of 8
    said: list[str] = []
    run = FakeRun()
    config = make_config(tmp_path, "branched", recipe="nvfp4-switch-fwd", branch_from=str(source))
    start = manager(config, run, said).start()
    copied = (tmp_path / "branched" / METRICS_FILE).read_bytes()
    assert [json.loads(line)["step"] for line in copied.decode().splitlines()] == list(range(8))
    assert start == StartPoint("branch", source, 7, len(copied)) and start.resumed_from == 7
    assert run.state["step"] == 7 and torch.equal(run.state["model"]["w"], torch.full((3,), 7.0))
    assert said == [f"branched from {source} (nvfp4, step 7, 1,792 tokens)"]
    # a resume of a branched run that has not checkpointed yet branches again, the same way
    again = manager(
        make_config(tmp_path, "branched", recipe="nvfp4-switch-fwd", branch_from=str(source), resume=True), FakeRun()
    ).start()
    assert again == start


def test_branch_on_another_rank_loads_but_leaves_the_metrics_to_rank_0(tmp_path):
    source = base_run(tmp_path, 7)
    run = FakeRun()
    config = make_config(tmp_path, "branched", recipe="nvfp4-switch-fwd", branch_from=str(source))
    start = manager(config, run, ctx=DistContext(mode="ddp", rank=1, world_size=2)).start()
    assert start == StartPoint("branch", source, 7, 0) and run.state["step"] == 7
    assert not (tmp_path / "branched").exists()


@pytest.mark.parametrize(
    ("recipe", "step", "change", "message"),
    [
        ("nvfp4-no-sr", 7, {}, "differs from 'nvfp4-no-sr' in more than the late precision switch"),
        (
            "nvfp4-switch-bwd",
            8,
            {},
            r"\(step 8\): recipe 'nvfp4-switch-bwd' switches precision at step 7.*"
            r"--keep-steps 7",
        ),
        ("nvfp4-switch-bwd", 7, {"seed": 3}, "it was trained with seed=0 but this run has seed=3"),
        ("nvfp4-switch-bwd", 7, {"max_steps": 6}, "switches precision at step 5"),  # the switch moves with the length
    ],
)
def test_branch_refuses_what_would_not_repeat_the_unbranched_run(tmp_path, recipe, step, change, message):
    source = base_run(tmp_path, step)
    run = FakeRun()
    config = make_config(tmp_path, "branched", recipe=recipe, branch_from=str(source), **change)
    with pytest.raises(ValueError, match=message):
        manager(config, run).start()
    assert run.loaded is None and not (tmp_path / "branched").exists()


def test_branch_from_an_unreadable_file_is_refused(tmp_path):
    config = make_config(tmp_path, "branched", recipe="nvfp4-switch-bwd", branch_from=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match=r"^cannot branch: .*missing\.pt"):
        manager(config, FakeRun()).start()


def test_branch_never_overwrites_a_run(tmp_path):
    """A branch into a directory with checkpoints is refused without --resume, and with it the run's own
    checkpoints win: its metrics.jsonl is never replaced by the source's."""
    source = base_run(tmp_path, 7)
    mine = make_config(tmp_path, "branched", recipe="nvfp4-switch-fwd", branch_from=str(source))
    write_run(make_config(tmp_path, "branched", recipe="nvfp4-switch-fwd"), [8])
    (tmp_path / "branched" / METRICS_FILE).write_text('{"step": 8}\n')
    before = snapshot(tmp_path / "branched")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        manager(mine, FakeRun()).start()
    assert snapshot(tmp_path / "branched") == before
    run = FakeRun()
    start = manager(
        make_config(tmp_path, "branched", recipe="nvfp4-switch-fwd", branch_from=str(source), resume=True), run
    ).start()
    assert start.how == "resume" and start.path == checkpoint_path(tmp_path / "branched" / "checkpoints", 8)
    assert run.state["step"] == 8 and snapshot(tmp_path / "branched") == before
