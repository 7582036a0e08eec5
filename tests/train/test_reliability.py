"""Runs that lose nothing (issue #13): resume never starts over on top of a run, one trainer per run directory,
and SIGTERM/SIGUSR1 (what schedulers send on preemption) stop with a checkpoint like Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvfp4 import cli
from nvfp4.train import TrainResult, read_metrics, train
from nvfp4.train import checkpoint as checkpoint_module
from nvfp4.train.checkpoint import RunLock, list_checkpoints

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _snapshot(out: str) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in Path(out).rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage", ["garbage", "newer_version"])
def test_resume_with_no_readable_checkpoint_refuses_and_touches_nothing(make_config, monkeypatch, damage):
    config = make_config(max_steps=4, checkpoint_interval=2)
    train(config)
    ckpts = [p for _, p in list_checkpoints(Path(config.out) / "checkpoints")]
    assert ckpts
    if damage == "garbage":
        for p in ckpts:
            p.write_bytes(b"not a checkpoint")
    else:  # written by another nvfp4 version
        monkeypatch.setattr(checkpoint_module, "CHECKPOINT_VERSION", checkpoint_module.CHECKPOINT_VERSION + 1)
    before = _snapshot(config.out)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the .* can be read"):
        train(make_config(max_steps=8, checkpoint_interval=2, resume=True))
    after = _snapshot(config.out)
    assert {k: v for k, v in after.items() if k != RunLock.NAME} == {
        k: v for k, v in before.items() if k != RunLock.NAME
    }  # metrics, config and every checkpoint as they were


def test_resume_refusal_is_one_error_line_with_status_2(make_config, capsys):
    config = make_config(max_steps=2, checkpoint_interval=2)
    train(config)
    for _, p in list_checkpoints(Path(config.out) / "checkpoints"):
        p.write_bytes(b"")
    args = [
        "train",
        "--data",
        config.data[0],
        "--model",
        "tiny",
        "--n-layer",
        "4",
        "--d-model",
        "64",
        "--d-ff",
        "256",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--max-steps",
        "4",
        "--out",
        config.out,
        "--resume",
        "--quiet",
    ]
    status = cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2, err
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot resume: none of the 1 checkpoint")
    assert any(line.startswith("warning: ignoring checkpoint") for line in err), err  # one line per warning
    assert all(line.startswith(("error:", "warning: ignoring checkpoint")) for line in err), err


def test_a_second_trainer_on_the_same_out_is_refused(make_config):
    config = make_config(max_steps=2)
    holder = RunLock(config.out)
    assert holder.acquire() is None
    try:
        with pytest.raises(ValueError, match=rf"in use by another trainer \(pid {os.getpid()}\)"):
            train(config)
        assert not (Path(config.out) / "metrics.jsonl").exists()  # refused before writing anything
    finally:
        holder.release()
    assert train(config).steps == 2  # free again


def test_the_lock_dies_with_its_process(make_config):
    """A trainer killed with -9 leaves no stale lock: the kernel drops flock locks with the process."""
    config = make_config(max_steps=2)
    code = (
        f"import sys, time; sys.path.insert(0, {SRC!r}); from nvfp4.train.checkpoint import RunLock; "
        f"lock = RunLock({config.out!r}); assert lock.acquire() is None; print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"pid {proc.pid}"):
            train(config)
    finally:
        proc.kill()
        proc.wait()
    assert train(config).steps == 2


def _signal_at(step: int, signum: int):
    def callback(record: dict) -> None:
        if record["step"] == step:
            signal.raise_signal(signum)

    return callback


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_preemption_signal_checkpoints_and_resumes_bit_exactly(make_config, tmp_path, name):
    settings = dict(recipe="nvfp4", max_steps=6, eval_interval=3, checkpoint_interval=3)
    straight = make_config(**settings, out=str(tmp_path / "straight"))
    train(straight)
    cut = make_config(**settings, out=str(tmp_path / "cut"))
    result = train(cut, on_step=_signal_at(2, getattr(signal, name)))
    assert result.interrupted and result.stop_signal == name and result.steps == 2
    assert f"stopped by {name} at step 2" in result.message
    assert [s for s, _ in list_checkpoints(Path(cut.out) / "checkpoints")] == [2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the run
    resumed = train(make_config(**settings, out=cut.out, resume=True))
    assert resumed.steps == 6

    def losses(out):
        return [(r["step"], r["train_loss"]) for r in read_metrics(out) if "train_loss" in r]

    assert losses(cut.out) == losses(straight.out)


def test_exit_status_names_the_signal(monkeypatch):
    import nvfp4.train

    for stop, status in ((None, 0), ("SIGINT", 130), ("SIGTERM", 143), ("SIGUSR1", 138)):
        result = TrainResult(1.0, 1.0, 2, 10, 1.0, 1.0, "out", interrupted=stop is not None, stop_signal=stop, rank=1)
        monkeypatch.setattr(nvfp4.train, "train", lambda config, result=result: result)
        assert cli.main(["train", "--max-steps", "2", "--quiet"]) == status


def test_sigterm_from_outside_stops_the_cli_with_a_checkpoint(make_config):
    """A real SIGTERM to a running `nvfp4 train`: it finishes the step, saves a checkpoint and exits 143."""
    config = make_config(max_steps=500, eval_interval=0, checkpoint_interval=0, log_interval=1)
    args = [
        sys.executable,
        "-m",
        "nvfp4.cli",
        "train",
        "--data",
        config.data[0],
        "--model",
        "tiny",
        "--n-layer",
        "4",
        "--d-model",
        "64",
        "--d-ff",
        "256",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--max-steps",
        "500",
        "--eval-interval",
        "0",
        "--checkpoint-interval",
        "0",
        "--out",
        config.out,
        "--quiet",
    ]
    proc = subprocess.Popen(
        args, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = Path(config.out) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for line in metrics.read_text().splitlines() if '"train_loss"' in line) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    steps = [s for s, _ in list_checkpoints(Path(config.out) / "checkpoints")]
    assert len(steps) == 1 and 2 <= steps[0] < 500
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged[-1] <= steps[0]  # nothing logged past the checkpoint it stopped with


def test_a_flipped_bit_in_the_newest_checkpoint_falls_back_to_the_previous(make_config, tmp_path):
    """The checkpoint's SHA-256 sidecar catches a flipped byte; resume warns, takes the previous checkpoint, and the
    run still ends bit-identical to one never interrupted."""
    settings = dict(recipe="nvfp4", max_steps=6, checkpoint_interval=2, eval_interval=0)
    straight = make_config(**settings, out=str(tmp_path / "straight"))
    train(straight)
    cut = make_config(**settings, out=str(tmp_path / "cut"))
    train(cut, on_step=_signal_at(4, signal.SIGINT))  # checkpoints at 2 and 4
    newest = checkpoint_module.checkpoint_path(Path(cut.out) / "checkpoints", 4)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x04
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="content checksum mismatch"):
        resumed = train(make_config(**settings, out=cut.out, resume=True))
    assert resumed.resumed_from == 2 and resumed.steps == 6

    def losses(out):
        return [(r["step"], r["train_loss"]) for r in read_metrics(out) if "train_loss" in r]

    assert losses(cut.out) == losses(straight.out)


def test_a_checkpoint_with_non_finite_weights_is_refused_on_load(make_config):
    """Without a checksum (checkpoints written before the sidecars), a NaN weight is still caught on load."""
    import torch

    config = make_config(max_steps=2, checkpoint_interval=2)
    train(config)
    path = checkpoint_module.checkpoint_path(Path(config.out) / "checkpoints", 2)
    state = torch.load(path, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name].view(-1)[0] = float("nan")
    torch.save(state, path)
    checkpoint_module.checksum_path(path).unlink()
    with pytest.raises(checkpoint_module.CheckpointError, match=f"model tensor '{name}' is not finite"):
        checkpoint_module.load_checkpoint(path)


def test_a_full_disk_is_one_error_line_with_status_3(make_config, monkeypatch, capsys):
    """ENOSPC while checkpointing: exit status 3 (not 'diverged', not a traceback), naming the path and free space."""
    import errno

    def full_disk(state, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    config = make_config(max_steps=2, checkpoint_interval=2)
    args = [
        "train",
        "--data",
        config.data[0],
        "--model",
        "tiny",
        "--n-layer",
        "4",
        "--d-model",
        "64",
        "--d-ff",
        "256",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--max-steps",
        "2",
        "--checkpoint-interval",
        "2",
        "--out",
        config.out,
        "--quiet",
    ]
    assert cli.main(args) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write checkpoint" in err[0] and "No space left on device" in err[0]
    assert "MB free in" in err[0]
    assert not list((Path(config.out) / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
