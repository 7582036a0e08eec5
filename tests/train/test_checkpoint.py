"""Checkpoint files: atomic writes that survive a crash mid-write, refusal of NaNs, corrupt files skipped."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from nvfp4.train import CheckpointError, list_checkpoints, load_latest, save_checkpoint
from nvfp4.train import checkpoint as ckpt


def make_state(step: int, value: float = 1.0) -> dict:
    return {
        "version": ckpt.CHECKPOINT_VERSION,
        "step": step,
        "tokens": 10 * step,
        "model": {"w": torch.full((4,), value)},
        "optimizer": {"state": {}, "param_groups": []},
        "rng": ckpt.rng_state(),
        "sr": {},
        "loader": {},
        "config": {},
    }


def test_save_keeps_last_k_and_points_latest(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, make_state(step), keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert (tmp_path / "latest").read_text() == "step_00000004.pt\n"
    path, state = load_latest(tmp_path)
    assert path.name == "step_00000004.pt" and state["step"] == 4


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_refuses_non_finite_model(tmp_path, bad):
    with pytest.raises(CheckpointError, match="model tensor 'w' is not finite"):
        save_checkpoint(tmp_path, 1, make_state(1, bad), keep=2)
    assert list_checkpoints(tmp_path) == [] and not list(tmp_path.iterdir())


def test_crash_during_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 2, make_state(2), keep=3)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # some bytes reach the disk, then the "kill"
        raise OSError("simulated crash mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(tmp_path, 4, make_state(4), keep=3)
    monkeypatch.setattr(torch, "save", real_save)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert not list(tmp_path.glob("*.tmp"))
    assert (tmp_path / "latest").read_text() == "step_00000002.pt\n"
    assert load_latest(tmp_path)[1]["step"] == 2


def test_truncated_and_garbage_checkpoints_are_skipped_with_a_warning(tmp_path):
    save_checkpoint(tmp_path, 2, make_state(2), keep=5)
    good = (tmp_path / "step_00000002.pt").read_bytes()
    (tmp_path / "step_00000004.pt").write_bytes(good[: len(good) // 2])  # truncated copy
    (tmp_path / "step_00000006.pt").write_bytes(b"garbage")
    (tmp_path / ".step_00000008.pt.abcd.tmp").write_bytes(good)  # leftover temp file: never a candidate
    with pytest.warns(UserWarning) as record:
        path, state = load_latest(tmp_path)
    assert state["step"] == 2 and path.name == "step_00000002.pt"
    messages = " ".join(str(w.message) for w in record)
    assert "step_00000006.pt" in messages and "step_00000004.pt" in messages
    save_checkpoint(tmp_path, 10, make_state(10), keep=5)
    assert not list(tmp_path.glob("*.tmp"))  # stale temp files are cleaned up by the next save


def test_wrong_contents_are_not_a_checkpoint(tmp_path):
    torch.save({"step": 3}, tmp_path / "step_00000003.pt")
    with pytest.warns(UserWarning, match="missing keys"):
        assert load_latest(tmp_path) is None
    assert load_latest(tmp_path / "does-not-exist") is None


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    ckpt.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]
