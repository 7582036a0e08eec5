"""Run outputs a person or a tool reads: ``metrics.jsonl``, TensorBoard scalars, the progress display.

``metrics.jsonl`` is append-only, one JSON object per line. A resumed run first cuts the file back
to the byte offset recorded in its checkpoint, so lines logged after that checkpoint (by the run
that then crashed) are not duplicated. Everything here is a no-op on non-zero ranks.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends JSON lines to ``OUT/metrics.jsonl`` (and scalars to TensorBoard when asked)."""

    def __init__(
        self,
        out_dir: str | Path,
        enabled: bool = True,
        truncate_to: int | None = 0,
        tensorboard: bool = False,
        purge_step: int | None = None,
    ) -> None:
        """truncate_to: 0 starts a fresh file, an offset resumes (drops later lines), None appends."""
        self.path = Path(out_dir) / METRICS_FILE
        self.enabled = enabled
        self._file: TextIO | None = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None and self.path.exists():
            size = self.path.stat().st_size
            if size < truncate_to:
                warnings.warn(
                    f"{self.path} is shorter ({size} bytes) than the checkpoint recorded ({truncate_to}); "
                    "metrics logged before the checkpoint were lost",
                    stacklevel=2,
                )
            with open(self.path, "r+b") as f:
                f.truncate(min(size, truncate_to))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        if tensorboard:
            self._tb = _tensorboard_writer(Path(out_dir) / "tb", purge_step)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        # Strict JSON: NaN/Inf (a skipped step's loss) are written as null.
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        self._file.write(json.dumps(clean, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if key != "step" and numeric and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])
            self._tb.flush()

    def offset(self) -> int:
        """Bytes written so far: what a checkpoint records to cut the file back to on resume."""
        if self._file is None:
            return 0
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _tensorboard_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # tensorboard is optional
        warnings.warn(f"tensorboard logging disabled: {e} (pip install tensorboard)", stacklevel=3)
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def metrics_until(path: str | Path, step: int) -> bytes:
    """The metrics.jsonl lines of steps up to ``step`` (a line cut off by a crash is dropped): what a run branched
    from another one's checkpoint at ``step`` starts its own metrics.jsonl with."""
    path = Path(path)
    kept = []
    if path.exists():
        for line in path.read_text().splitlines(keepends=True):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    return "".join(kept).encode()


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (for tests, plots and ``nvfp4 compare``)."""
    path = Path(out_dir) / METRICS_FILE
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A tqdm bar when stderr is a terminal wide enough for one; otherwise one printed line per logged step; nothing
    when disabled. (A pty that reports 0 columns, as some job runners' do, would get an invisible bar.)"""

    MIN_BAR_COLUMNS = 40

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        wide = shutil.get_terminal_size(fallback=(0, 0)).columns >= self.MIN_BAR_COLUMNS
        if enabled and sys.stderr.isatty() and wide:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is optional: fall back to log lines
                return
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any], logged: bool) -> None:
        """Advance by one step; ``logged`` steps print a line when there is no bar."""
        if self._bar is not None:
            self._bar.update(1)
            postfix = {"loss": _fmt(record.get("train_loss")), "tok/s": _fmt(record.get("tokens_per_s"), 0)}
            if record.get("val_loss") is not None:
                postfix["val"] = _fmt(record["val_loss"])
            self._bar.set_postfix(postfix, refresh=False)
        elif logged:
            self.message(format_record(record))

    def message(self, text: str) -> None:
        """Print a line without breaking the bar (tqdm.write moves it below the text)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_record(record: dict[str, Any]) -> str:
    """One human-readable line for a metrics record."""
    parts = [f"step {record['step']}"]
    for key, label, digits in (
        ("train_loss", "loss", 4),
        ("val_loss", "val", 4),
        ("lr", "lr", None),
        ("grad_norm", "gnorm", 3),
        ("tokens_per_s", "tok/s", 0),
    ):
        if record.get(key) is not None:
            parts.append(f"{label} {_fmt(record[key], digits)}")
    precision = record.get("precision")
    if precision:
        parts.append(f"fwd/bwd {precision['forward']}/{precision['backward']}")
    return " | ".join(parts)


def _fmt(value: Any, digits: int | None = 4) -> str:
    if value is None:
        return "-"
    if digits is None:
        return f"{value:.3g}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"
