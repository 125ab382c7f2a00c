"""benchmarks/table1.py: the bookkeeping a day-long run depends on (resume per cell, the
table it writes, refusals before any work starts). The run itself is measured, not tested
(docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "table1.py"


@pytest.fixture(scope="module")
def table1():
    spec = importlib.util.spec_from_file_location("table1", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Runner:
    def __init__(self, work: Path):
        self.work = work


def test_a_finished_cell_is_never_run_again_and_a_failed_one_is(tmp_path, table1):
    runner, calls = _Runner(tmp_path), []

    def ok():
        calls.append("ok")
        return {"eval": {"success_rate": 0.5}}

    first = table1.cell(runner, "Lift_base", ok)
    again = table1.cell(runner, "Lift_base", ok)
    assert calls == ["ok"] and again["eval"] == first["eval"] == {"success_rate": 0.5}

    def boom():
        calls.append("boom")
        raise RuntimeError("eval_Lift_P32_dpo failed (exit 1)")

    failed = table1.cell(runner, "Lift_P32_DPO", boom)
    assert "exit 1" in failed["error"]
    assert not (tmp_path / "cells" / "Lift_P32_DPO.json").exists()
    table1.cell(runner, "Lift_P32_DPO", boom)  # retried on resume
    assert calls == ["ok", "boom", "boom"]


def _eval(rate: float, length: float | None) -> dict:
    return {
        "success_rate": rate,
        "wilson95": [max(rate - 0.1, 0.0), min(rate + 0.1, 1.0)],
        "episodes": 50,
        "mean_success_length": length,
    }


def _row(method: str, p: int, ev: dict, **extra) -> dict:
    return {"task": "Lift", "P": p, "method": method, "eval": ev, **extra}


def test_table_shows_relative_length_and_the_imagined_real_gap(table1):
    rows = [
        _row("base", 0, _eval(0.26, 80.0)),
        _row("WMPO", 32, _eval(0.30, 76.0), imagined_success=0.75, real_episodes=32),
        _row("DPO", 32, _eval(0.0, None), real_episodes=32),
        {"task": "Stack", "P": 32, "method": "GRPO", "error": "Stack_P32_grpo_online failed"},
    ]
    lines = table1.format_table(rows).splitlines()
    assert lines[2].startswith("| Lift | – | base | 26.0 (16.0–36.0) | 50 | 1.00 |")
    assert "| Lift | 32 | WMPO | 30.0 (20.0–40.0) | 50 | 0.95 | 75.0 | 32 |" in lines[3]
    assert "| 50 | – |  | 32 |" in lines[4]  # no success: no relative length
    assert "failed: Stack_P32_grpo_online failed" in lines[5]


def test_sampled_column_beside_greedy(table1):
    rows = [
        _row("base", 0, _eval(0.26, 80.0)),
        _row(
            "WMPO",
            32,
            _eval(0.10, 30.0),
            sampled={"1": _eval(0.48, 55.0)},
            imagined_success=0.7,
            real_episodes=32,
        ),
    ]
    lines = table1.format_table(rows).splitlines()
    assert "sampled at T = 1: real success % (95 % CI)" in lines[0]
    assert lines[0].count("|") == lines[1].count("|") == lines[3].count("|")
    assert "| 10.0 (0.0–20.0) | 50 | 0.38 | 48.0 (38.0–58.0) | 70.0 | 32 |" in lines[3]
    assert "| 50 | 1.00 | |  | 0 |" in lines[2]  # no sampled eval for this row: empty cell


def test_sampled_evals_use_each_methods_checkpoint_and_are_cached(tmp_path, table1):
    class Recorder(_Runner):
        def __init__(self, work: Path):
            super().__init__(work)
            self.calls: list[list[str]] = []

        def wmpo(self, name, cmd):
            self.calls.append(cmd)
            out = Path(cmd[cmd.index("--json") + 1])
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text('{"success_rate": 0.5}')

    runner = Recorder(tmp_path)
    args = type("A", (), {"eval_episodes": 50, "eval_horizon": None, "eval_temperature": [1.0]})
    rows = [
        {"task": "Lift", "P": 0, "method": "base", "eval": {}},
        {"task": "Lift", "P": 32, "method": "WMPO", "eval": {}},
        {"task": "Lift", "P": 32, "method": "DPO", "error": "failed"},
    ]
    table1.add_sampled_evals(runner, rows, args, {"Lift": "assets/policies/Lift-bc40"})
    assert [c[2] for c in runner.calls] == [
        "assets/policies/Lift-bc40",
        str(tmp_path / "Lift" / "P32" / "wmpo_grpo" / "policy"),
    ]
    assert all(c[c.index("--temperature") + 1] == "1" for c in runner.calls)
    assert (tmp_path / "evals" / "Lift_P32_wmpo_T1.json").is_file()
    assert rows[1]["sampled"] == {"1": {"success_rate": 0.5}} and "sampled" not in rows[2]
    table1.add_sampled_evals(runner, rows, args, {"Lift": "assets/policies/Lift-bc40"})
    assert len(runner.calls) == 2  # cached: a resumed table does not evaluate again


def test_alignment_command_carries_the_extra_world_model_flags(table1):
    args = type(
        "A", (), {"wm_minutes": 40.0, "threads": 1, "wm_extra": "--unroll-chunks 3 --lr 5e-4"}
    )
    cmd = table1.align_command(Path("S"), Path("W"), "Lift", "WM0", "policy-abc", args)
    assert cmd[:2] == ["train", "world-model"] and cmd[-4:] == [
        "--unroll-chunks",
        "3",
        "--lr",
        "5e-4",
    ]
    assert (
        cmd[cmd.index("--align") + 1] == "policy-abc" and cmd[cmd.index("--minutes") + 1] == "40.0"
    )
    args.wm_extra = ""
    assert table1.align_command(Path("S"), Path("W"), "Lift", "WM0", "v", args)[-2:] == [
        "--threads",
        "1",
    ]


def test_a_killed_alignment_is_not_taken_for_a_finished_one(tmp_path, table1):
    wm = tmp_path / "wm"
    assert not table1.alignment_finished(wm, 40.0)
    wm.mkdir()

    def manifest(**metrics):
        (wm / "manifest.json").write_text(json.dumps({"metrics": metrics}))

    manifest(**{"train/minutes": 25.0, "train/finished": False})  # a periodic checkpoint
    assert not table1.alignment_finished(wm, 40.0)
    manifest(**{"train/minutes": 40.01, "train/finished": True})
    assert table1.alignment_finished(wm, 40.0)
    manifest(**{"train/minutes": 25.0})  # written before the flag existed
    assert not table1.alignment_finished(wm, 40.0)
    manifest(**{"train/minutes": 40.0})
    assert table1.alignment_finished(wm, 40.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--world-model", "Lift=wm", "--eval-temperature", "0"],
            "temperatures must be > 0",
        ),
        ([], "WMPO needs --world-model for ['Lift']"),
        (
            ["--world-model", "Lift=wm", "--reward-refresh", "none"],
            "--reward-refresh none needs --reward-model for ['Lift']",
        ),
        (["--world-model", "Lift:wm"], "expected TASK=PATH"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(tmp_path, extra, message):
    work = tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--work", str(work), "--policy", "Lift=p", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert not work.exists()
