"""A resumable, locked, multi-stage job: the machinery under `wmpo cycle`.

A run lives in one directory. Each stage that finishes writes its outputs to
`state.json` (atomically), so a run killed mid-stage restarts at that stage
and never repeats a finished one. One lock file per work directory stops a
second run from starting while one is in progress (a cron job that overlaps
the previous night's run refuses to start instead of corrupting it).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wmpo_core.errors import WmpoError
from wmpo_core.fileio import atomic_write_json

StageFn = Callable[["RunContext"], dict[str, Any]]


class LockedError(WmpoError):
    """Another run holds the lock."""


@dataclass
class Stage:
    name: str
    fn: StageFn
    description: str = ""


@dataclass
class RunContext:
    run_dir: Path
    state: dict[str, Any]
    dry_run: bool = False

    def output(self, stage: str, key: str) -> Any:
        """An output of an earlier stage of this run."""
        try:
            return self.state["stages"][stage]["outputs"][key]
        except KeyError:
            raise WmpoError(f"{self.run_dir}: stage '{stage}' has no output '{key}'") from None


class RunLock:
    """An exclusive, non-blocking lock on `path` (released when the process dies)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(
                f"{self.path}: another run is in progress (pid {holder}); wait for it or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def load_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "state.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"created": time.time(), "stages": {}, "done": False}


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    atomic_write_json(run_dir / "state.json", state)


def run_stages(
    run_dir: Path,
    stages: list[Stage],
    *,
    dry_run: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the stages not yet finished in `run_dir`, in order; returns the final state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir)
    ctx = RunContext(run_dir=run_dir, state=state, dry_run=dry_run)
    for i, stage in enumerate(stages, 1):
        record = state["stages"].get(stage.name, {})
        prefix = f"[{i}/{len(stages)}] {stage.name}"
        if record.get("status") == "done":
            log(f"{prefix}: already done, skipping")
            continue
        if dry_run:
            log(f"{prefix}: would run — {stage.description}")
            continue
        resumed = " (resuming after an interrupted attempt)" if record else ""
        log(f"{prefix}: {stage.description}{resumed}")
        started = time.time()
        state["stages"][stage.name] = {"status": "running", "started": started}
        save_state(run_dir, state)
        outputs = stage.fn(ctx) or {}
        state["stages"][stage.name] = {
            "status": "done",
            "started": started,
            "seconds": round(time.time() - started, 2),
            "outputs": outputs,
        }
        save_state(run_dir, state)
    if not dry_run:
        state["done"] = True
        save_state(run_dir, state)
    return state
