"""Crash-safe file writes: write to a temporary sibling, fsync, rename.

A process killed mid-write leaves either the old file or the new one, never a
half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_publish_dir(staging: Path, final: Path) -> None:
    """Move a fully written staging directory to its final name in one rename."""
    for root, _dirs, files in os.walk(staging):
        for name in files:
            with open(Path(root) / name, "rb") as f:
                os.fsync(f.fileno())
    if final.exists():
        raise FileExistsError(
            f"{final} already exists; refusing to overwrite a published directory"
        )
    os.rename(staging, final)
    fsync_dir(final.parent)


def staging_dir_for(final: Path) -> Path:
    """A fresh hidden sibling of `final` (same filesystem, so rename is atomic)."""
    staging = final.with_name(f".{final.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
