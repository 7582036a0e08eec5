"""Progress output: a bar only where a terminal can show one."""

from __future__ import annotations

import os
import shutil
import sys

from nvfp4.train.metrics import Progress


def test_a_zero_column_terminal_gets_log_lines_not_an_invisible_bar(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(0, 0): os.terminal_size((0, 24)))
    progress = Progress(total=10, initial=0, enabled=True)
    assert progress._bar is None
    progress.step({"step": 1, "train_loss": 5.0, "tokens_per_s": 100.0}, logged=True)
    progress.close()
    assert "5.0" in capsys.readouterr().out
