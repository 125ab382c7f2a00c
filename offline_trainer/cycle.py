"""`wmpo cycle`: the nightly retrain-and-deploy job.

    ingest new bags -> align the world model on the new rollouts -> refresh the reward
    model -> GRPO inside the world model -> gate -> publish (+ promote) -> report

Every stage is resumable (offline_trainer.pipeline): a cycle killed mid-stage
restarts at that stage on the next invocation. A lock in the work directory
refuses a second concurrent cycle. Each training stage runs as its own `wmpo`
subprocess, so a crash in one is contained and its log is kept.

Work directory layout (`--workdir`, default ./wmpo_work):

    store/                  the episode store (all ingested bags)
    cycles/cNNNN/           one directory per cycle: state.json, logs, world_model/,
                            reward/, grpo/, gate.json
    models.json             the world / reward model the next cycle starts from
    report.md, report/      the cumulative report with plots
    .cycle.lock
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_trainer.pipeline import RunContext, RunLock, Stage, load_state, run_stages
from wmpo_core.errors import WmpoError
from wmpo_core.fileio import atomic_write_json

MIN_LABELS_PER_CLASS = 4


@dataclass
class CycleConfig:
    workdir: Path
    """Holds the store, cycle directories, model pointers and the report."""
    registry: Path
    """Policy registry root; the promoted version is the GRPO starting point."""
    bags: list[str] = field(default_factory=list)
    """Bag directories (or their parents / fsspec URLs) to ingest; already-ingested ones are skipped."""
    task: str | None = None
    """Only this task's episodes (None: all)."""
    image_size: int = 64
    """Frame size stored by ingest (the tiny models run at 64 px)."""
    world_model: str | None = None
    """World model for the first cycle (later cycles start from the previous cycle's)."""
    reward: str | None = None
    """Reward model for the first cycle (later cycles retrain it on all labelled data)."""
    wm_minutes: float = 4.0
    """World-model alignment budget (CPU minutes)."""
    reward_minutes: float = 1.5
    """Reward-model refresh budget."""
    grpo_iterations: int = 8
    """GRPO iterations."""
    grpo_set: list[str] = field(default_factory=list)
    """GRPOConfig overrides FIELD=JSON passed to `wmpo train grpo --set`."""
    gate_states: int = 24
    """Initial frames the gate imagines parent and candidate from."""
    gate_margin: float = 0.0
    """Candidate's imagined success must exceed the parent's by more than this."""
    gate_min_agreement: float = 0.75
    """Promote on imagined evidence only when the world + reward models, replaying the newest
    labelled real episodes' actions, agree with their real labels at least this often
    (balanced; both outcomes needed). 0 turns the check off (docs/cycle.md)."""
    promote: bool = True
    """Promote a version that passes the gate (else only publish it)."""
    threads: int = 2
    """torch threads for the training subprocesses."""
    dry_run: bool = False
    """Print the plan, change nothing."""

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.registry = Path(self.registry)
        if self.wm_minutes < 0 or self.reward_minutes < 0 or self.grpo_iterations < 0:
            raise WmpoError(
                f"budgets must be >= 0 (wm {self.wm_minutes}, reward {self.reward_minutes}, "
                f"grpo {self.grpo_iterations})"
            )
        if not 0.0 <= self.gate_min_agreement <= 1.0:
            raise WmpoError(f"gate_min_agreement must be in [0, 1], got {self.gate_min_agreement}")

    @property
    def store(self) -> Path:
        return self.workdir / "store"


# -- helpers --------------------------------------------------------------------------------


def wmpo_cmd(ctx: RunContext, name: str, args: list[str], threads: int) -> None:
    """Run one `wmpo` stage as a subprocess, its output tee'd to the cycle's log."""
    log_path = ctx.run_dir / f"{name}.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "wmpo_core.cli", *args]
    with open(log_path, "a") as log:
        log.write(f"$ wmpo {' '.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            log.write(line)
            if not line.startswith("\r"):
                print(f"    {line.rstrip()}", flush=True)
        rc = proc.wait()
    if rc != 0:
        raise WmpoError(f"stage '{name}' failed (exit {rc}); see {log_path}")


def models_pointer(cfg: CycleConfig) -> dict[str, str | None]:
    path = cfg.workdir / "models.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"world_model": cfg.world_model, "reward": cfg.reward}


def _task_episodes(store: Any, task: str | None) -> list[Any]:
    return [m for m in store.metas() if task is None or m.task == task]


# -- stages ---------------------------------------------------------------------------------


def stage_ingest(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        from wmpo_core.store import EpisodeStore

        store = EpisodeStore(cfg.store, create=True)
        before = set(store.ids())
        if cfg.bags:
            wmpo_cmd(
                ctx,
                "ingest",
                ["ingest", *cfg.bags, "--out", str(cfg.store), "--image-size", str(cfg.image_size)],
                1,
            )
        new = sorted(set(store.ids()) - before)
        rollouts = [m for m in (store.meta(i) for i in new) if m.kind == "rollout"]
        versions = Counter(m.policy_version for m in rollouts if m.policy_version)
        return {
            "new_episodes": new,
            "new_rollouts": [m.id for m in rollouts],
            "aligned_version": versions.most_common(1)[0][0] if versions else None,
            "total_episodes": len(store.ids()),
        }

    return run


def stage_world_model(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        out = ctx.run_dir / "world_model"
        init = models_pointer(cfg)["world_model"]
        version = ctx.output("ingest", "aligned_version")
        args = ["train", "world-model", "--data", str(cfg.store), "--out", str(out)]
        args += ["--minutes", str(cfg.wm_minutes), "--threads", str(cfg.threads)]
        if cfg.task:
            args += ["--task", cfg.task]
        if init:
            args += ["--init", str(init)]
            if version:  # policy behaviour alignment: fine-tune on this policy's own rollouts
                args += ["--align", version]
        if (out / "manifest.json").exists():
            args += ["--resume"]
        if cfg.wm_minutes == 0 and init:
            return {"world_model": str(init), "trained": False}
        wmpo_cmd(ctx, "world_model", args, cfg.threads)
        return {"world_model": str(out), "trained": True}

    return run


def stage_reward(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        from wmpo_core.store import EpisodeStore

        out = ctx.run_dir / "reward"
        prev = models_pointer(cfg)["reward"]
        if cfg.reward_minutes == 0 and prev:
            return {"reward": str(prev), "trained": False}
        labels = [m.success for m in _task_episodes(EpisodeStore(cfg.store), cfg.task)]
        wins, losses = labels.count(True), labels.count(False)
        if prev and min(wins, losses) < MIN_LABELS_PER_CLASS:
            # A classifier refreshed on one class (or a handful) would be worse than the
            # one we have: keep it until the robot has seen both outcomes often enough.
            print(
                f"    keeping {prev}: {wins} successes / {losses} failures labelled so far "
                f"(need {MIN_LABELS_PER_CLASS} of each to refresh)"
            )
            return {"reward": str(prev), "trained": False}
        args = ["train", "reward", "--data", str(cfg.store), "--out", str(out)]
        args += ["--minutes", str(cfg.reward_minutes), "--threads", str(cfg.threads)]
        if prev:
            args += ["--init", str(prev)]  # fine-tune: a night's episodes are few
        if cfg.task:
            args += ["--task", cfg.task]
        if (out / "manifest.json").exists():
            return {"reward": str(out), "trained": True}  # finished before a crash
        wmpo_cmd(ctx, "reward", args, cfg.threads)
        return {"reward": str(out), "trained": True}

    return run


def _promoted(cfg: CycleConfig) -> tuple[str, Path]:
    from wmpo_core.registry import Registry

    reg = Registry(cfg.registry)
    version = reg.promoted()
    if version is None:
        raise WmpoError(
            f"{cfg.registry}: no promoted policy version; publish and promote a base policy first "
            "(`wmpo registry publish CKPT --promote`)"
        )
    return version, reg.resolve_promoted()


def stage_grpo(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        parent, parent_dir = _promoted(cfg)
        from wmpo_core.store import EpisodeStore

        metas = _task_episodes(EpisodeStore(cfg.store), cfg.task)
        states = [m.id for m in metas][-64:]  # the most recent real initial frames
        out = ctx.run_dir / "grpo"
        args = ["train", "grpo", "--policy", str(parent_dir)]
        args += ["--world-model", ctx.output("world_model", "world_model")]
        args += ["--reward", ctx.output("reward", "reward")]
        args += ["--store", str(cfg.store), "--out", str(out)]
        args += ["--iterations", str(cfg.grpo_iterations), "--episodes", *states]
        if cfg.grpo_set:
            args += ["--set", *cfg.grpo_set]
        wmpo_cmd(ctx, "grpo", args, cfg.threads)
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
        return {
            "parent": parent,
            "parent_dir": str(parent_dir),
            "candidate": str(out / "policy"),
            "imagined_success_curve": [r.get("rollout/success_rate") for r in rows],
        }

    return run


def stage_gate(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        from offline_trainer.gate import AGREEMENT_EPISODES, evaluate_gate
        from wmpo_core.store import EpisodeStore

        metas = _task_episodes(EpisodeStore(cfg.store), cfg.task)
        labelled = [m.id for m in metas if m.success is not None][-AGREEMENT_EPISODES:]
        result = evaluate_gate(
            parent=ctx.output("grpo", "parent_dir"),
            candidate=ctx.output("grpo", "candidate"),
            world_model=ctx.output("world_model", "world_model"),
            reward=ctx.output("reward", "reward"),
            store=cfg.store,
            episodes=[m.id for m in metas][-cfg.gate_states :],
            margin=cfg.gate_margin,
            labelled_episodes=labelled,
            min_agreement=cfg.gate_min_agreement,
        )
        atomic_write_json(ctx.run_dir / "gate.json", result)
        verdict = "PASS" if result["passed"] else "FAIL"
        agreement = result["imagination_agreement"]
        print(
            f"    gate {verdict}: imagined success parent {result['parent_imagined_success']:.2f} "
            f"-> candidate {result['candidate_imagined_success']:.2f}; imagination agrees with "
            f"reality {agreement['agreement']:.2f} on {agreement['episodes']} labelled episodes "
            f"({agreement['successes']} successes; need {cfg.gate_min_agreement:.2f}); "
            f"{result['reason']}"
        )
        return result

    return run


def stage_publish(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        from wmpo_core.registry import Registry

        reg = Registry(cfg.registry)
        gate = ctx.state["stages"]["gate"]["outputs"]
        version = reg.publish(
            ctx.output("grpo", "candidate"),
            parent=ctx.output("grpo", "parent"),
            episodes=ctx.output("ingest", "new_episodes"),
            metrics={
                "imagined_success": gate["candidate_imagined_success"],
                "parent_imagined_success": gate["parent_imagined_success"],
            },
            gates=gate,
            notes=f"wmpo cycle {ctx.run_dir.name}",
        )
        promoted = False
        if gate["passed"] and cfg.promote:
            reg.promote(version, reason=f"cycle {ctx.run_dir.name}: gate passed")
            promoted = True
        # The refreshed world / reward models are the next cycle's starting point either way:
        # they were trained on more real data, whatever the policy gate said.
        atomic_write_json(
            cfg.workdir / "models.json",
            {
                "world_model": ctx.output("world_model", "world_model"),
                "reward": ctx.output("reward", "reward"),
            },
        )
        print(f"    published {version}" + (" and promoted it" if promoted else " (not promoted)"))
        return {"version": version, "promoted": promoted}

    return run


def stage_report(cfg: CycleConfig):
    def run(ctx: RunContext) -> dict[str, Any]:
        from offline_trainer.report import write_report

        path = write_report(cfg.workdir, cfg.registry, task=cfg.task)
        print(f"    report: {path}")
        return {"report": str(path)}

    return run


def build_stages(cfg: CycleConfig) -> list[Stage]:
    return [
        Stage("ingest", stage_ingest(cfg), "ingest new bags into the episode store"),
        Stage("world_model", stage_world_model(cfg), "align the world model on new rollouts"),
        Stage("reward", stage_reward(cfg), "refresh the success reward model"),
        Stage("grpo", stage_grpo(cfg), "GRPO of the promoted policy inside the world model"),
        Stage("gate", stage_gate(cfg), "imagined success vs parent, finite weights, sane actions"),
        Stage("publish", stage_publish(cfg), "publish to the registry and promote if gated"),
        Stage("report", stage_report(cfg), "write the cycle report with plots"),
    ]


def current_run_dir(workdir: Path) -> Path:
    """The unfinished cycle to resume, else a new one."""
    cycles = workdir / "cycles"
    cycles.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in cycles.iterdir() if p.is_dir() and p.name.startswith("c"))
    if existing and not load_state(existing[-1]).get("done"):
        return existing[-1]
    return cycles / f"c{len(existing) + 1:04d}"


def run_cycle(cfg: CycleConfig) -> dict[str, Any]:
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    with RunLock(cfg.workdir / ".cycle.lock"):
        run_dir = current_run_dir(cfg.workdir)
        print(f"wmpo cycle: {run_dir}" + (" (dry run)" if cfg.dry_run else ""))
        started = time.time()
        state = run_stages(run_dir, build_stages(cfg), dry_run=cfg.dry_run)
        if not cfg.dry_run:
            print(f"wmpo cycle: done in {time.time() - started:.0f} s")
        return state


# -- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The nightly retrain: ingest new bags, align the world model on the new rollouts, "
        "refresh the reward model, run GRPO inside the world model, gate, publish and promote. "
        "Re-running after a crash resumes the unfinished stage; a second concurrent run refuses "
        "to start. Schedule it with cron or a systemd timer (docs/cycle.md)."
    )
    parser.add_argument("--workdir", default="wmpo_work", help="store, cycles, models, report")
    parser.add_argument("--registry", default=None, help="policy registry root ($WMPO_REGISTRY)")
    parser.add_argument("--bags", nargs="*", default=[], help="bag directories to ingest")
    parser.add_argument("--task", default=None, help="only this task's episodes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--world-model", default=None, help="world model for the first cycle")
    parser.add_argument("--reward", default=None, help="reward model for the first cycle")
    parser.add_argument("--wm-minutes", type=float, default=4.0)
    parser.add_argument("--reward-minutes", type=float, default=1.5)
    parser.add_argument("--grpo-iterations", type=int, default=8)
    parser.add_argument("--grpo-set", nargs="*", default=[], help="GRPOConfig FIELD=JSON")
    parser.add_argument("--gate-states", type=int, default=24)
    parser.add_argument("--gate-margin", type=float, default=0.0)
    parser.add_argument(
        "--gate-min-agreement",
        type=float,
        default=0.75,
        help="promote only if the world+reward models' verdicts on re-imagined recent real "
        "episodes match their labels this often (balanced; 0: off)",
    )
    parser.add_argument("--no-promote", action="store_true", help="publish only")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def config_from_args(args: argparse.Namespace) -> CycleConfig:
    from wmpo_core.registry import default_root

    return CycleConfig(
        workdir=Path(args.workdir),
        registry=Path(args.registry) if args.registry else default_root(),
        bags=list(args.bags),
        task=args.task,
        image_size=args.image_size,
        world_model=args.world_model,
        reward=args.reward,
        wm_minutes=args.wm_minutes,
        reward_minutes=args.reward_minutes,
        grpo_iterations=args.grpo_iterations,
        grpo_set=list(args.grpo_set),
        gate_states=args.gate_states,
        gate_margin=args.gate_margin,
        gate_min_agreement=args.gate_min_agreement,
        promote=not args.no_promote,
        threads=args.threads,
        dry_run=args.dry_run,
    )


def run(args: argparse.Namespace) -> int:
    run_cycle(config_from_args(args))
    return 0
