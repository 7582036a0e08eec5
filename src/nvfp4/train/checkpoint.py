"""Checkpoints that survive crashes: atomic writes, finite-only contents, corrupt files skipped.

A checkpoint is one ``torch.save`` file, ``step_XXXXXXXX.pt``, holding everything an exact resume
needs. It is written to a temp file in the same directory, fsynced and renamed over the final
name, so a reader sees either the previous state or the complete new one. Loading walks the
checkpoints from the newest down and skips any that fail to load (with a warning), so a bad
disk write costs at most one checkpoint interval of work, never the run.

``CheckpointManager`` is the policy on top (torchtitan's design): handed a run's config and its stateful part (an
object with ``state_dict()``/``load_state_dict()``: the trainer), it decides how the run starts (from scratch,
resumed from its own latest readable checkpoint, or branched from another run's), refuses checkpoints of another
run with a one-line reason, and saves when a checkpoint is due. It never sees the model, so its rules are tested
with a dict-backed stand-in.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from nvfp4 import recipes
from nvfp4._io import atomic_write, file_sha256
from nvfp4.recipe import Recipe
from nvfp4.train import distributed as D
from nvfp4.train.config import IDENTITY_FIELDS
from nvfp4.train.metrics import METRICS_FILE, metrics_until

if TYPE_CHECKING:
    from nvfp4.train.config import TrainConfig

CHECKPOINT_VERSION = 1
LATEST = "latest"
_NAME = re.compile(r"^step_(\d{8})\.pt$")
REQUIRED_KEYS = ("version", "step", "tokens", "model", "optimizer", "rng", "sr", "loader", "config")
# Every key of a training checkpoint, in the order written. The manager writes the run's identity (RUN_KEYS); the
# stateful part's state_dict() supplies the training state (STATE_KEYS), and load_state_dict() gets the whole dict.
CHECKPOINT_KEYS = (
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
)
RUN_KEYS = ("version", "optimizer_format", "config", "model_config", "recipe", "world_size")
STATE_KEYS = tuple(k for k in CHECKPOINT_KEYS if k not in RUN_KEYS)
# Settings a resumed run may change (unlike IDENTITY_FIELDS), but which change its trajectory: a resume says so.
RESUME_NOTED_FIELDS = (
    "lr",
    "min_lr_ratio",
    "schedule",
    "warmup_steps",
    "warmup_fraction",
    "decay_fraction",
    "weight_decay",
    "betas",
    "eps",
    "grad_clip",
    "batch_size",
    "max_steps",
    "max_tokens",
    "backend",
    "host_sync",
)


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
            raise ValueError(
                f"no readable checkpoint in {directory}: pass an `nvfp4 train` run directory or a checkpoint file"
            )
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
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
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


# -- the checkpoint manager: how a run starts, when it saves ----------------------------------------


class Stateful(Protocol):
    """What the manager checkpoints: ``state_dict()`` gives the STATE_KEYS (a collective under FSDP: called on every
    rank), ``load_state_dict()`` takes a whole checkpoint dict."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class StartPoint:
    """How a run starts: from scratch, resumed from its own checkpoint, or branched from another run's."""

    how: Literal["scratch", "resume", "branch"]
    path: Path | None = None  # the checkpoint loaded, if any
    step: int = 0
    metrics_offset: int = 0  # where this run's metrics.jsonl continues (bytes kept; 0 = a fresh file)

    @property
    def resumed_from(self) -> int | None:
        """The step training continues from, or None from scratch."""
        return None if self.path is None else self.step


def _differs(saved: Any, now: Any) -> bool:
    """Config values as saved in JSON (lists) against live ones (tuples)."""
    norm = lambda v: list(v) if isinstance(v, tuple | list) else v  # noqa: E731
    return norm(saved) != norm(now)


class CheckpointManager:
    """The checkpoints of one run in ``OUT/checkpoints``: where the run starts (``start()``), whether a step is due
    (``due()``) and saving it (``save()``).

    The rules (each refusal is one line and changes nothing on disk):

    * without ``resume``, a directory that already holds checkpoints is refused (never train over a run); with
      ``branch_from`` the run starts from that checkpoint, else from scratch;
    * with ``resume``, the newest checkpoint that loads is used (corrupt ones skipped with a warning); if there are
      checkpoints but none loads, the resume is refused; if there are none, ``branch_from`` (if given) or scratch;
    * a checkpoint resumes only into the same run: the config's IDENTITY_FIELDS, the model architecture and the
      optimizer state format (FSDP or not) must match, and its step must not be past this run's last; a change of
      RESUME_NOTED_FIELDS is allowed but said;
    * a branch loads another run's checkpoint whose recipe differs from this one's only in a late precision switch
      that neither has begun by the checkpoint's step; the source run's metrics up to that step are copied, so this
      run's metrics.jsonl holds its whole curve.
    """

    def __init__(
        self,
        out: str | Path,
        config: TrainConfig,
        stateful: Stateful,
        *,
        model_config: dict[str, Any],
        ctx: D.DistContext | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        """``model_config``: the architecture as ``dataclasses.asdict`` gives it (compared to the checkpoint's);
        ``say``: where the notes go (the trainer's progress display)."""
        self.out = Path(out)
        self.directory = self.out / "checkpoints"
        self.config, self.stateful, self.model_config, self.say = config, stateful, model_config, say
        self.ctx = ctx if ctx is not None else D.DistContext()
        self.recipe = recipes.get(config.recipe)
        self.total_steps = config.total_steps(self.ctx.world_size)
        self.tokens_per_step = config.tokens_per_step(self.ctx.world_size)

    # -- where the run starts -----------------------------------------------------------------------
    def start(self) -> StartPoint:
        """Restore the latest checkpoint if asked to (or branch from ``branch_from``) into the stateful part."""
        existing = list_checkpoints(self.directory)
        if not self.config.resume:
            if existing:
                raise ValueError(
                    f"{self.directory} already holds checkpoints (up to step {existing[-1][0]}); "
                    "pass --resume to continue that run, or choose another --out"
                )
            return self._branch() if self.config.branch_from else StartPoint("scratch")
        found = load_latest(self.directory)
        if found is None and existing:
            # Never start over on top of a run: that would overwrite its metrics and rotate its checkpoints away.
            raise ValueError(
                f"cannot resume: none of the {len(existing)} checkpoint(s) in {self.directory} can be read "
                f"({unreadable_reasons(self.directory)}); nothing was changed. Move them away to start over, or use "
                "another --out"
            )
        if found is None:
            if self.config.branch_from:
                return self._branch()
            self.say(f"no checkpoint in {self.directory}: starting from scratch")
            return StartPoint("scratch")
        path, state = found
        self.check_compatible(path, state)
        if int(state["step"]) > self.total_steps:
            raise ValueError(
                f"cannot resume from {path}: its step {state['step']} is past this run's {self.total_steps} steps"
            )
        self.stateful.load_state_dict(state)
        step = int(state["step"])
        self.say(f"resumed from {path} (step {step}, {int(state['tokens']):,} tokens)")
        changed = [
            f"{name}={getattr(self.config, name)!r} (was {state['config'].get(name)!r})"
            for name in RESUME_NOTED_FIELDS
            if name in state["config"] and _differs(state["config"][name], getattr(self.config, name))
        ]
        if changed:  # allowed (a deliberate change of schedule is common), but never silently
            self.say(f"note: resuming with changed settings: {', '.join(changed)}")
        return StartPoint("resume", path, step, int(state["metrics_offset"]))

    def _branch(self) -> StartPoint:
        """Start from another run's checkpoint taken before this recipe's precision switch: until the switch this
        run trains exactly as that one did, so its steps need not be trained again."""
        path = Path(self.config.branch_from)  # type: ignore[arg-type]
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            raise ValueError(f"cannot branch: {e}") from None
        step = int(state["step"])
        source = Recipe.from_dict(state["recipe"])
        if not source.same_until_switch(self.recipe):
            raise ValueError(
                f"cannot branch from {path}: its recipe {source.name!r} differs from {self.recipe.name!r} in more "
                "than the late precision switch, so the runs differ before the branch point"
            )
        for recipe in (source, self.recipe):
            first = recipe.switch.first_active_step(self.total_steps, self.tokens_per_step) if recipe.switch else None
            if first is not None and step > first:
                raise ValueError(
                    f"cannot branch from {path} (step {step}): recipe {recipe.name!r} switches precision at step "
                    f"{first}, before it; use a checkpoint from step {first} or earlier (--keep-steps {first})"
                )
        self.check_compatible(path, {**state, "config": {**state["config"], "recipe": self.config.recipe}})
        if step > self.total_steps:
            raise ValueError(f"cannot branch from {path}: its step {step} is past this run's {self.total_steps} steps")
        self.stateful.load_state_dict(state)
        offset = 0
        source_metrics = path.parent.parent / METRICS_FILE  # <run>/checkpoints/step_N.pt -> <run>/metrics.jsonl
        if self.ctx.is_main:
            if not source_metrics.exists():
                self.say(f"{source_metrics} not found: this run's metrics start at the branch point")
            data = metrics_until(source_metrics, step)
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.out / METRICS_FILE, data)
            offset = len(data)
        self.say(f"branched from {path} ({source.name}, step {step}, {int(state['tokens']):,} tokens)")
        return StartPoint("branch", path, step, offset)

    def check_compatible(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse (ValueError, one line) a checkpoint of another run: identity fields, architecture, FSDP or not."""
        saved = state["config"]
        for name in IDENTITY_FIELDS:
            mine = getattr(self.config, name)
            if saved.get(name) != mine:
                raise ValueError(
                    f"cannot resume from {path}: it was trained with {name}={saved.get(name)!r} but this run has "
                    f"{name}={mine!r}; use the same setting or another --out"
                )
        if state["model_config"] != self.model_config:
            raise ValueError(f"cannot resume from {path}: its model architecture differs from this run's")
        if state["optimizer_format"] != D.optimizer_state_format(self.ctx):
            raise ValueError(
                f"cannot resume from {path}: it was written with distributed={saved.get('distributed')!r}; "
                f"FSDP and non-FSDP checkpoints do not mix"
            )

    # -- saving -------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` ends with a checkpoint: every ``checkpoint_interval``, the kept steps, the last step."""
        every = self.config.checkpoint_interval
        kept = step in (self.config.keep_steps or ())
        return kept or step == self.total_steps or (every > 0 and step % every == 0)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict: the stateful part's training state and this run's identity, in CHECKPOINT_KEYS order
        (the on-disk format; every rank calls it, since gathering the state can be a collective)."""
        state = self.stateful.state_dict()
        run = {
            "version": CHECKPOINT_VERSION,
            "optimizer_format": D.optimizer_state_format(self.ctx),
            "config": self.config.to_dict(),
            "model_config": self.model_config,
            "recipe": self.recipe.to_dict(),
            "world_size": self.ctx.world_size,
        }
        return {key: run[key] if key in RUN_KEYS else state[key] for key in CHECKPOINT_KEYS}

    def save(self) -> bool:
        """Write the checkpoint of the current step (rank 0), keeping the last ``keep_checkpoints`` and every step
        in ``keep_steps``; False (said, on every rank) if refused because a parameter is not finite."""
        state = self.state_dict()
        ok = True
        if self.ctx.is_main:
            try:
                save_checkpoint(
                    self.directory,
                    int(state["step"]),
                    state,
                    keep=self.config.keep_checkpoints,
                    protect=set(self.config.keep_steps or ()),
                )
            except CheckpointError as e:
                self.say(str(e))
                ok = False
        ok = bool(D.broadcast_object(ok, self.ctx))
        D.barrier(self.ctx)
        return ok

    def saved_steps(self) -> list[int]:
        """The steps checkpointed in this run's directory, oldest first."""
        return [step for step, _ in list_checkpoints(self.directory)]
