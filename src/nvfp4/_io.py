"""Atomic file writes shared by the data cache, checkpoints and reports."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path


def atomic_write(path: str | Path, *chunks: bytes) -> Path:
    """Write via a temp file + fsync + rename, so readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # plain open (not mkstemp) so the file gets the usual umask permissions
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()
