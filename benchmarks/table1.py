"""WMPO's Table 1 in miniature: base vs online GRPO vs DPO vs WMPO at the same real budget P.

For each task and budget P, every method may use exactly P real episodes:

- base:        the BC policy as it is (greedy), no real episodes.
- GRPO:        `wmpo train grpo-online` (GRPO with real sim rollouts; P pays every one).
- DPO:         P real rollouts of the base policy -> `wmpo train dpo` (success/failure pairs).
- WMPO:        the same P rollouts -> `wmpo train world-model --init WM --align V` (policy
               behaviour alignment) + `wmpo train reward` (refresh; see --reward-refresh)
               -> `wmpo train grpo`
               inside the aligned world model. Beside the real success we print the imagined
               success the GRPO trainer saw in its last iteration: imagined >> real is reward
               hacking / a world model that flatters the policy.

The P rollouts of the base policy are collected once per task in seed order; budget P uses
the first P of them, so DPO and WMPO see the same real data. Evaluation: greedy, on seeds
from 100000 (never used for training), Wilson 95 % intervals; "rel. len" = mean length of
successful episodes / the base policy's (WMPO reports 2-5 % shorter).

Every cell writes its result JSON under --work and is skipped when re-run, so a day-long
run resumes after an interruption; a failing cell is recorded and the rest continue.

Full table (2-core CPU, tiny presets; ~8-9 h, see docs/baselines.md):
    .venv/bin/python benchmarks/table1.py --work runs/table1 \\
        --policy Lift=P_LIFT Stack=P_STACK NutAssemblySquare=P_SQUARE \\
        --world-model Lift=WM_LIFT Stack=WM_STACK NutAssemblySquare=WM_SQUARE \\
        [--demos Lift=STORE ...]
Quick (first task only, P = 32; ~1-2 h):
    .venv/bin/python benchmarks/table1.py --quick --work runs/table1_quick \\
        --policy Lift=P_LIFT --world-model Lift=WM_LIFT
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("Lift", "Stack", "NutAssemblySquare")
SHORT = {"Lift": "Lift", "Stack": "Stack", "NutAssemblySquare": "Square"}
METHODS = ("GRPO", "DPO", "WMPO")


def key_paths(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or task not in TASKS:
            raise SystemExit(f"--{what} {item}: expected TASK=PATH with TASK one of {TASKS}")
        out[task] = path
    return out


class Runner:
    """Runs `wmpo ...` stages as subprocesses, one log per stage, and times them."""

    def __init__(self, work: Path, threads: int):
        self.work = work
        self.threads = threads
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def wmpo(self, name: str, args: list[str]) -> float:
        return self.python(name, ["-m", "wmpo_core.cli", *args])

    def python(self, name: str, args: list[str]) -> float:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS="1")
        env.setdefault("MUJOCO_GL", "osmesa")
        env.setdefault("PYOPENGL_PLATFORM", "osmesa")
        env.setdefault("HF_HUB_OFFLINE", "1")
        log = self.logs / f"{name}.log"
        t0 = time.monotonic()
        with open(log, "a") as f:
            f.write(f"$ python {' '.join(args)}\n")
            f.flush()
            rc = subprocess.call(
                [sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO
            )
        seconds = time.monotonic() - t0
        print(f"    {name}: exit {rc} in {seconds / 60:.1f} min (log {log})", flush=True)
        if rc != 0:
            tail = log.read_text().splitlines()[-3:]
            raise RuntimeError(f"{name} failed (exit {rc}): {' | '.join(tail)}")
        return seconds


def evaluate(
    runner: Runner, name: str, ckpt: Path, task: str, args, temperature: float = 0.0
) -> dict[str, Any]:
    """Success on the evaluation seeds, greedy (temperature 0, the robot's decoding) or
    sampled at `temperature` (seeded, so re-runs agree); cached per name and temperature."""
    suffix = f"_T{temperature:g}" if temperature > 0 else ""
    out = runner.work / "evals" / f"{name}{suffix}.json"
    if not out.is_file():
        cmd = ["eval", "policy", str(ckpt), "--task", task, "--episodes", str(args.eval_episodes)]
        cmd += ["--json", str(out), "--no-progress"]
        if temperature > 0:
            cmd += ["--temperature", f"{temperature:g}"]
        if args.eval_horizon:
            cmd += ["--horizon", str(args.eval_horizon)]
        runner.wmpo(f"eval_{name}{suffix}", cmd)
    return json.loads(out.read_text())


def eval_name(task: str, p: int, method: str) -> str:
    """The name a row's evaluations are cached under (evals/NAME[_T].json)."""
    return f"{task}_base" if method == "base" else f"{task}_P{p}_{method.lower()}"


def method_checkpoint(work: Path, task: str, p: int, method: str, base_policy: str) -> Path:
    """Where each method's trained policy lives under --work (the base policy for 'base')."""
    run = work / task / f"P{p}"
    return {
        "base": Path(base_policy),
        "GRPO": run / "grpo_online" / "policy",
        "DPO": run / "dpo",
        "WMPO": run / "wmpo_grpo" / "policy",
    }[method]


def add_sampled_evals(runner: Runner, rows: list[dict], args, policies: dict[str, str]) -> None:
    """Every finished row also evaluated sampling at each --eval-temperature: GRPO (online
    and in imagination) optimises the policy it samples from, which for a tiny policy with
    flat token distributions is not what greedy decoding does."""
    for r in rows:
        if "eval" not in r:
            continue
        ckpt = method_checkpoint(runner.work, r["task"], r["P"], r["method"], policies[r["task"]])
        name = eval_name(r["task"], r["P"], r["method"])
        r["sampled"] = {
            f"{t:g}": evaluate(runner, name, ckpt, r["task"], args, t)
            for t in args.eval_temperature
        }


def align_command(store: Path, out: Path, task: str, init: str, version: str, args) -> list[str]:
    """`wmpo train world-model` for WMPO's policy-behaviour alignment; --wm-extra adds the
    trainer's own flags (e.g. "--unroll-chunks 3 --lr 5e-4", the session-6 Lift recipe)."""
    cmd = ["train", "world-model", "--data", str(store), "--out", str(out), "--task", task]
    cmd += ["--init", init, "--align", version, "--minutes", str(args.wm_minutes)]
    cmd += ["--threads", str(args.threads), *shlex.split(args.wm_extra)]
    return cmd


def alignment_finished(wm: Path, minutes: float) -> bool:
    """Whether `wm` holds a *finished* alignment: the trainer publishes a checkpoint every
    few minutes, so after a killed run a manifest alone proves nothing. Manifests older
    than the trainer's `train/finished` flag are judged by the minutes trained."""
    manifest = wm / "manifest.json"
    if not manifest.is_file():
        return False
    metrics = json.loads(manifest.read_text()).get("metrics", {})
    if "train/finished" in metrics:
        return bool(metrics["train/finished"])
    return float(metrics.get("train/minutes", 0.0)) >= minutes - 0.01


def cell(runner: Runner, name: str, fn) -> dict[str, Any]:
    """Run one table cell once; its result (or error) is cached as JSON."""
    path = runner.work / "cells" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"  {name}", flush=True)
    t0 = time.monotonic()
    try:
        result = fn()
    except Exception as exc:  # a failed cell must not stop a day-long table
        result = {"error": str(exc)}
    result["wall_min"] = (time.monotonic() - t0) / 60
    path.parent.mkdir(parents=True, exist_ok=True)
    if "error" not in result:
        path.write_text(json.dumps(result, indent=2) + "\n")
    else:
        print(f"    FAILED: {result['error']}", flush=True)
    return result


def base_rollouts(runner: Runner, task: str, policy: str, p: int, args) -> tuple[Path, str]:
    """The first P of the base policy's real rollouts as an episode store of their own."""
    from offline_trainer.real_rollouts import collect_to_store, load_vla
    from wmpo_core.store import EpisodeStore

    _, version = load_vla(policy)
    full = runner.work / task / "rollouts"
    ids = collect_to_store(
        policy,
        task,
        max(args.budgets),
        full,
        repeats=args.repeats,
        temperature=args.rollout_temperature,
        image_size=args.image_size,
        horizon=args.train_horizon,
        progress=False,
    )
    sub_root = runner.work / task / f"P{p}" / "store"
    sub = EpisodeStore(sub_root, create=True)
    have = set(sub.ids())
    src = EpisodeStore(full)
    for episode_id in ids[:p]:
        if episode_id not in have:
            ep = src.load(episode_id, mmap=False)
            sub.add(ep.meta, ep.frames, ep.actions)
    return sub_root, version


def run_task(runner: Runner, task: str, args, paths: dict[str, dict[str, str]]) -> list[dict]:
    policy = paths["policy"][task]
    rows = []
    base = cell(
        runner,
        f"{task}_base",
        lambda: {"eval": evaluate(runner, eval_name(task, 0, "base"), Path(policy), task, args)},
    )
    rows.append({"task": task, "P": 0, "method": "base", **base})

    def trained(p: int, method: str) -> Path:
        return method_checkpoint(runner.work, task, p, method, policy)

    for p in args.budgets:
        work = runner.work / task / f"P{p}"

        def grpo(p=p):
            out = trained(p, "GRPO").parent
            cmd = ["train", "grpo-online", "--policy", policy, "--task", task]
            cmd += ["--budget", str(p), "--out", str(out), "--threads", str(args.threads)]
            if args.train_horizon:
                cmd += ["--horizon", str(args.train_horizon)]
            cmd += ["--set", *args.grpo_set] if args.grpo_set else []
            runner.wmpo(f"{task}_P{p}_grpo_online", cmd)
            metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            used = int(metrics[-1]["budget/real_episodes_used"]) if metrics else 0
            ev = evaluate(runner, eval_name(task, p, "GRPO"), trained(p, "GRPO"), task, args)
            return {"eval": ev, "real_episodes": used, "iterations": len(metrics)}

        def dpo(p=p):
            store, _ = base_rollouts(runner, task, policy, p, args)
            out = trained(p, "DPO")
            cmd = ["train", "dpo", "--policy", policy, "--data", str(store), "--out", str(out)]
            cmd += ["--threads", str(args.threads)]
            cmd += ["--set", *args.dpo_set] if args.dpo_set else []
            runner.wmpo(f"{task}_P{p}_dpo", cmd)
            ev = evaluate(runner, eval_name(task, p, "DPO"), out, task, args)
            return {"eval": ev, "real_episodes": p}

        def wmpo(p=p, work=work):
            store, version = base_rollouts(runner, task, policy, p, args)
            wm, rm, run = work / "world_model", work / "reward", trained(p, "WMPO").parent
            th = ["--threads", str(args.threads)]
            if not alignment_finished(wm, args.wm_minutes):  # a killed alignment restarts
                cmd = align_command(store, wm, task, paths["world_model"][task], version, args)
                runner.wmpo(f"{task}_P{p}_wm_align", cmd)
            if args.reward_refresh == "none":
                rm = Path(paths["reward_model"][task])
            elif not (rm / "manifest.json").is_file():
                cmd = ["train", "reward", "--data", str(store), "--out", str(rm), "--task", task]
                if task in paths["demos"]:
                    cmd += ["--data", paths["demos"][task]]
                if task in paths["reward_model"]:  # refresh a trained one (its architecture)
                    cmd += ["--init", paths["reward_model"][task]]
                if args.reward_refresh == "imagined":  # calibrated on what GRPO judges
                    cmd += ["--imagined-from", str(wm)]
                cmd += ["--minutes", str(args.reward_minutes), *th]
                runner.wmpo(f"{task}_P{p}_reward", cmd)
            cmd = ["train", "grpo", "--policy", policy, "--world-model", str(wm)]
            cmd += ["--reward", str(rm), "--store", str(store), "--out", str(run)]
            cmd += ["--iterations", str(args.grpo_iterations)]
            cmd += ["--set", *args.grpo_set] if args.grpo_set else []
            runner.wmpo(f"{task}_P{p}_wmpo_grpo", cmd)
            metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            ev = evaluate(runner, eval_name(task, p, "WMPO"), trained(p, "WMPO"), task, args)
            return {
                "eval": ev,
                "real_episodes": p,
                "imagined_success": metrics[-1]["rollout/success_rate"],
                "imagined_success_first": metrics[0]["rollout/success_rate"],
            }

        for method, fn in zip(METHODS, (grpo, dpo, wmpo), strict=True):
            if method.lower() in args.skip:
                continue
            rows.append(
                {
                    "task": task,
                    "P": p,
                    "method": method,
                    **cell(runner, f"{task}_P{p}_{method}", fn),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    base_len = {
        r["task"]: r["eval"]["mean_success_length"]
        for r in rows
        if r["method"] == "base" and "eval" in r
    }
    temps = sorted({t for r in rows for t in r.get("sampled", {})}, key=float)
    lines = [
        "| task | P | method | real success % (95 % CI) | n eval | rel. len (successes) | "
        + "".join(f"sampled at T = {t}: real success % (95 % CI) | " for t in temps)
        + "imagined success % (end of GRPO) | real episodes used |",
        "|---|---|---|---|---|---|" + "---|" * len(temps) + "---|---|",
    ]
    for r in rows:
        head = f"| {SHORT[r['task']]} | {r['P'] or '–'} | {r['method']} |"
        if "eval" not in r:
            lines.append(f"{head} failed: {r.get('error', '?')[:80]} |" + " |" * (4 + len(temps)))
            continue
        ev = r["eval"]
        rel = "–"
        if ev["mean_success_length"] and base_len.get(r["task"]):
            rel = f"{ev['mean_success_length'] / base_len[r['task']]:.2f}"
        sampled = "".join(
            f" {_rate(r['sampled'][t])} |" if t in r.get("sampled", {}) else " |" for t in temps
        )
        imag = f"{100 * r['imagined_success']:.1f}" if "imagined_success" in r else ""
        lines.append(
            f"{head} {_rate(ev)} | {ev['episodes']} | {rel} |{sampled} {imag} | "
            f"{r.get('real_episodes', 0)} |"
        )
    return "\n".join(lines)


def _rate(ev: dict) -> str:
    lo, hi = ev["wilson95"]
    return f"{100 * ev['success_rate']:.1f} ({100 * lo:.1f}–{100 * hi:.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="working directory (re-run to resume)")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS), choices=TASKS)
    ap.add_argument("--budgets", nargs="*", type=int, default=[32, 128], help="P values")
    ap.add_argument("--policy", nargs="+", required=True, help="TASK=base policy checkpoint")
    ap.add_argument("--world-model", nargs="*", default=[], help="TASK=pretrained world model")
    ap.add_argument("--demos", nargs="*", default=[], help="TASK=labelled store for the reward")
    ap.add_argument(
        "--reward-model",
        nargs="*",
        default=[],
        help="TASK=trained reward model to refresh (default: train one from scratch)",
    )
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--eval-horizon", type=int, default=None, help="eval step limit (task's)")
    ap.add_argument(
        "--eval-temperature",
        nargs="*",
        type=float,
        default=[],
        help="also evaluate every row sampling at these temperatures (> 0; e.g. the GRPO "
        "temperature: what GRPO optimises), beside the greedy column",
    )
    ap.add_argument(
        "--train-horizon", type=int, default=None, help="real training episodes' step limit"
    )
    ap.add_argument("--rollout-temperature", type=float, default=1.0, help="base rollouts")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="base rollouts per initial state (1: P distinct states, as real rollouts come; "
        "GRPO from few repeated imagined starts is a gamble, docs/grpo.md; DPO pairs "
        "across states)",
    )
    ap.add_argument("--image-size", type=int, default=64, help="stored rollout frame size")
    ap.add_argument("--wm-minutes", type=float, default=4.0, help="world-model alignment")
    ap.add_argument("--reward-minutes", type=float, default=2.0, help="reward refresh")
    ap.add_argument(
        "--wm-extra",
        default="",
        help="more `wmpo train world-model` flags for the alignment, one string: "
        '--wm-extra="--unroll-chunks 3 --self-cond-after 0 --lr 5e-4"',
    )
    ap.add_argument(
        "--reward-refresh",
        default="real",
        choices=["real", "imagined", "none"],
        help="WMPO's reward model: refreshed on the P rollouts (+ demos); 'imagined' also on "
        "their replays in the aligned world model, its threshold set on those; 'none' uses "
        "--reward-model as it is",
    )
    ap.add_argument("--grpo-iterations", type=int, default=10, help="WMPO GRPO iterations")
    ap.add_argument("--grpo-set", nargs="*", default=[], help="GRPOConfig FIELD=JSON (both GRPOs)")
    ap.add_argument("--dpo-set", nargs="*", default=[], help="DPOConfig FIELD=JSON")
    ap.add_argument("--skip", nargs="*", default=[], choices=["grpo", "dpo", "wmpo"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    ap.add_argument("--quick", action="store_true", help="first task only, P = 32")
    args = ap.parse_args()
    paths = {
        "policy": key_paths(args.policy, "policy"),
        "world_model": key_paths(args.world_model, "world-model"),
        "demos": key_paths(args.demos, "demos"),
        "reward_model": key_paths(args.reward_model, "reward-model"),
    }
    tasks = [t for t in args.tasks if t in paths["policy"]]
    if args.quick:
        tasks, args.budgets = tasks[:1], [min(args.budgets)]
    if not tasks:
        raise SystemExit("no task has a --policy")
    if "wmpo" not in args.skip and (missing := [t for t in tasks if t not in paths["world_model"]]):
        raise SystemExit(f"WMPO needs --world-model for {missing} (or --skip wmpo)")
    if args.reward_refresh == "none" and (
        missing := [t for t in tasks if t not in paths["reward_model"]]
    ):
        raise SystemExit(f"--reward-refresh none needs --reward-model for {missing}")
    if bad := [t for t in args.eval_temperature if not t > 0]:
        raise SystemExit(
            f"--eval-temperature {bad}: temperatures must be > 0 (greedy is always run)"
        )
    work = Path(args.work)
    runner = Runner(work, args.threads)
    started = time.monotonic()
    rows = []
    for task in tasks:
        print(f"{task}: budgets {args.budgets}, {args.eval_episodes} eval episodes", flush=True)
        rows += run_task(runner, task, args, paths)
    add_sampled_evals(runner, rows, args, paths["policy"])
    table = format_table(rows)
    hours = (time.monotonic() - started) / 3600
    stamp = datetime.date.today().isoformat()
    text = (
        f"Table 1 (miniature), {stamp}, CPU, {hours:.2f} h this invocation\n"
        f"command: {' '.join(sys.argv)}\n\n{table}\n"
    )
    (work / "table1.md").write_text(text)
    (work / "table1.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
