"""Checkpoints that survive crashes: atomic writes, finite-only contents, corrupt files skipped.

A checkpoint is one ``torch.save`` file, ``step_XXXXXXXX.pt``, holding everything an exact resume
needs. It is written to a temp file in the same directory, fsynced and renamed over the final
name, so a reader sees either the previous state or the complete new one. Loading walks the
checkpoints from the newest down and skips any that fail to load (with a warning), so a bad
disk write costs at most one checkpoint interval of work, never the run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nvfp4._io import atomic_write, file_sha256

CHECKPOINT_VERSION = 1
LATEST = "latest"
_NAME = re.compile(r"^step_(\d{8})\.pt$")
REQUIRED_KEYS = ("version", "step", "tokens", "model", "optimizer", "rng", "sr", "loader", "config")


class CheckpointError(RuntimeError):
    """A checkpoint that must not be written (non-finite values) or cannot be used."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions, I/O error): a failure of the machine, not of the run."""


def _write_failure(path: Path, error: BaseException) -> CheckpointWriteError:
    """One line: what could not be written, why, and the free space where it was going."""
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[-1][:200] or type(error).__name__
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:,.0f} MB free in {path.parent}"
    except OSError:
        free = ""
    return CheckpointWriteError(getattr(error, "errno", None) or 0, f"cannot write checkpoint {path}: {reason}{free}")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file in ``directory``, oldest first (temp files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _float_tensors(obj: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield "", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            for name, t in _float_tensors(value):
                yield f"{key}.{name}" if name else str(key), t
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            for name, t in _float_tensors(value):
                yield f"{i}.{name}" if name else str(i), t


def first_non_finite(obj: Any) -> str | None:
    """Name of the first floating tensor in a (nested) state with a NaN or Inf, else None."""
    for name, t in _float_tensors(obj):
        if not bool(torch.isfinite(t).all()):
            return name
    return None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform/filesystem: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once: readers never see a part."""
    atomic_write(path, data)


def checksum_path(path: Path) -> Path:
    """The sidecar holding the SHA-256 of a checkpoint file's bytes (``step_N.pt.sha256``)."""
    return path.with_name(path.name + ".sha256")


def save_checkpoint(
    directory: str | Path, step: int, state: dict[str, Any], keep: int, protect: Collection[int] = ()
) -> Path:
    """Atomically write ``state`` as the checkpoint of ``step``, point ``latest`` at it, keep the last ``keep``
    (and every step in ``protect``: branch points other runs start from).

    Refuses (CheckpointError) a state whose model or optimizer holds a NaN/Inf: resuming from it
    could only reproduce the divergence.
    """
    for part in ("model", "optimizer"):
        bad = first_non_finite(state.get(part))
        if bad is not None:
            raise CheckpointError(f"refusing to save checkpoint at step {step}: {part} tensor {bad!r} is not finite")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(directory)
    final = checkpoint_path(directory, step)
    tmp = directory / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)  # a full disk surfaces as OSError, or as torch's RuntimeError around it
            f.flush()
            os.fsync(f.fileno())
        # The checksum goes down before the file appears under its name: a crash in between leaves a checkpoint
        # that fails its check (and is skipped), never one that is trusted unchecked.
        atomic_write_bytes(checksum_path(final), f"{file_sha256(tmp)}  {final.name}\n".encode())
        os.replace(tmp, final)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        raise _write_failure(final, e) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    atomic_write_bytes(directory / LATEST, f"{final.name}\n".encode())
    rotating = [path for s, path in list_checkpoints(directory) if s not in protect]
    for old in rotating[:-keep]:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    return final


def _remove_stale_temp_files(directory: Path) -> None:
    """Temp files are only left behind by a crash mid-write (one writer per run): delete them."""
    for p in directory.glob(".step_*.tmp"):
        p.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check one checkpoint file (tensors on CPU); raises CheckpointError if unusable.

    Checks: the SHA-256 of its bytes against the ``.sha256`` sidecar written with it (checkpoints from before the
    sidecars are loaded unverified), that it loads, its keys and version, and that the model and optimizer
    states are finite (a flipped bit can make a NaN; resuming from it would only look like a divergence)."""
    path = Path(path)
    sidecar = checksum_path(path)
    if sidecar.exists():
        expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from e
        if actual != expected:
            raise CheckpointError(
                f"{path}: content checksum mismatch (the file changed after it was written: disk or copy corruption)"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, I/O error: all mean "unusable"
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else "no detail (an empty or cut-off file?)"
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {detail})") from e
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path}: not an nvfp4 training checkpoint (missing keys)")
    if state["version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state['version']}, this nvfp4 reads {CHECKPOINT_VERSION}")
    for part in ("model", "optimizer"):
        bad = first_non_finite(state[part])
        if bad is not None:
            raise CheckpointError(f"{path}: {part} tensor {bad!r} is not finite")
    return state


def unreadable_reasons(directory: str | Path, limit: int = 3) -> str:
    """Why the checkpoints in ``directory`` cannot be used, newest first, for one error line."""
    reasons = []
    for _, path in reversed(list_checkpoints(directory)):
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            reasons.append(str(e).replace(str(path), path.name))
    more = f"; and {len(reasons) - limit} more" if len(reasons) > limit else ""
    return "; ".join(reasons[:limit]) + more


class RunLock:
    """An exclusive OS lock on a run directory (``OUT/.nvfp4.lock``), held for the whole run.

    ``flock`` locks belong to the open file, so the kernel drops this one when the process exits in any way (kill -9
    included): there is never a stale lock to clean up. The file holds the owner's PID, for the refusal message. On
    platforms without ``fcntl`` (Windows) runs are not locked.
    """

    NAME = ".nvfp4.lock"

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / self.NAME
        self._file = None

    def acquire(self) -> str | None:
        """Take the lock; None on success, else the one-line reason (who holds it)."""
        try:
            import fcntl
        except ImportError:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            return (
                f"{self.path.parent} is in use by another trainer (pid {holder}); wait for it to finish, stop it, or "
                "choose another --out"
            )
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None


def resolve_checkpoint(where: str | Path) -> tuple[Path, dict[str, Any]]:
    """A run directory (its newest readable checkpoint), a checkpoints directory, or a checkpoint file, loaded;
    ValueError with one line naming what is wrong otherwise."""
    path = Path(where).expanduser()
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = load_latest(directory)
        if found is None:
            raise ValueError(f"no readable checkpoint in {directory}: pass an `nvfp4 train` run directory or a "
                             "checkpoint file")  # fmt: skip
        return found
    if not path.exists():
        raise ValueError(f"checkpoint {where} does not exist")
    try:
        return path, load_checkpoint(path)
    except CheckpointError as e:
        raise ValueError(str(e)) from None


def load_latest(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, skipping (with a warning) corrupt or partial ones; None if none."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"ignoring checkpoint {e}; trying the previous one", stacklevel=2)
    return None


# -- random number generator states ----------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG a training step could draw from, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
