"""The resumable, locked stage runner under `wmpo cycle`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offline_trainer.pipeline import LockedError, RunLock, Stage, load_state, run_stages

REPO = Path(__file__).resolve().parents[1]


def _stages(calls: list[str], fail_at: str | None = None) -> list[Stage]:
    def make(name: str):
        def fn(ctx):
            calls.append(name)
            if name == fail_at:
                raise RuntimeError(f"crash in {name}")
            return {"value": len(calls)}

        return fn

    return [Stage(n, make(n), f"stage {n}") for n in ("ingest", "align", "grpo", "publish")]


def test_a_run_killed_mid_stage_resumes_at_that_stage(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="crash in grpo"):
        run_stages(tmp_path / "run", _stages(calls, fail_at="grpo"), log=lambda _: None)
    assert calls == ["ingest", "align", "grpo"]
    assert load_state(tmp_path / "run")["stages"]["grpo"]["status"] == "running"
    calls.clear()
    state = run_stages(tmp_path / "run", _stages(calls), log=lambda _: None)
    assert calls == ["grpo", "publish"]  # finished stages are not repeated
    assert state["done"] and state["stages"]["ingest"]["outputs"] == {"value": 1}


def test_a_run_killed_by_sigkill_resumes(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from offline_trainer.pipeline import Stage, run_stages
        def ok(ctx): return {{"ok": 1}}
        def die(ctx): os.kill(os.getpid(), 9)
        run_stages(__import__("pathlib").Path({str(tmp_path / "run")!r}),
                   [Stage("a", ok), Stage("b", die)], log=lambda _: None)
        """
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == -9
    calls: list[str] = []
    stages = [Stage("a", lambda c: calls.append("a")), Stage("b", lambda c: calls.append("b"))]
    run_stages(tmp_path / "run", stages, log=lambda _: None)
    assert calls == ["b"]


def test_dry_run_changes_nothing(tmp_path):
    calls: list[str] = []
    lines: list[str] = []
    run_stages(tmp_path / "run", _stages(calls), dry_run=True, log=lines.append)
    assert calls == [] and len(lines) == 4 and all("would run" in line for line in lines)
    assert load_state(tmp_path / "run")["stages"] == {}


def test_a_second_concurrent_run_refuses_to_start(tmp_path):
    lock = tmp_path / "cycle.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
            "from offline_trainer.pipeline import RunLock\n"
            f"with RunLock(__import__('pathlib').Path({str(lock)!r})):\n"
            "    print('locked', flush=True); time.sleep(30)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            with RunLock(lock):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(lock):  # released when the holder died
        pass
