"""GRPO cost on a CPU, tiny preset: imagined rollouts/s and update time per iteration,
against real sim rollouts/s of the same policy and horizon measured in the same run.

Imagination: `GRPOTrainer.step()` with the tiny world model + reward model (groups all
kept so every iteration runs the full update). Real: `SampledChunkPolicy` episodes in the
embedded sim (camera on, the policy's image size), the same horizon in steps.

Trained checkpoints can be passed (--policy / --world-model / --reward); otherwise
untrained tiny models of the shipped configurations are built (speed does not depend on
the weights, except that a reward model that fires early shortens imagined episodes; the
table reports the mean imagined length so runs compare).

    .venv/bin/python benchmarks/grpo.py [--iterations 3] [--real-episodes 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def untrained_models(d: Path, image_size: int) -> tuple[Path, Path, Path]:
    from wmpo_core.policy.checkpoint_policy import save_policy_checkpoint
    from wmpo_core.policy.configuration_policy import preset_config
    from wmpo_core.policy.modeling_policy import VLAPolicyModel
    from wmpo_core.policy.processing_policy import NormalizationStats
    from wmpo_core.reward_model import save_reward_model
    from wmpo_core.reward_model.configuration_reward_model import RewardModelConfig
    from wmpo_core.reward_model.modeling_reward_model import RewardModel
    from wmpo_core.sim.tasks import task_spec
    from wmpo_core.world_model import build_network, save_world_model, tiny_config

    torch.manual_seed(0)
    stats = NormalizationStats.from_actions(np.random.default_rng(0).uniform(-0.5, 0.5, (200, 7)))
    policy = VLAPolicyModel(preset_config("tiny", image_size=image_size))
    save_policy_checkpoint(
        d / "policy",
        policy,
        stats,
        instructions=[task_spec("Lift").instruction],
        episode_ids=[],
    )
    wcfg = tiny_config(image_size=image_size)
    save_world_model(d / "wm", wcfg, build_network(wcfg))
    save_reward_model(d / "rm", RewardModel(RewardModelConfig(image_size=image_size)))
    return d / "policy", d / "wm", d / "rm"


def first_frames(d: Path, task: str, image_size: int, n: int) -> Path:
    """A store whose first frames are real sim reset frames (the GRPO initial states)."""
    from wmpo_core.sim.arm import SimArm, SimConfig
    from wmpo_core.sim.tasks import task_spec
    from wmpo_core.store import EpisodeMeta, EpisodeStore

    store = EpisodeStore(d / "store", create=True)
    with SimArm(SimConfig(task=task, image_size=image_size, render=True)) as arm:
        for i in range(n):
            frame = arm.reset(50_000 + i).image
            meta = EpisodeMeta(id=f"s{i}", task=task, instruction=task_spec(task).instruction)
            store.add(meta, frame[None], np.zeros((1, 7), np.float32))
    return d / "store"


class Timed:
    """Wraps one method of a model adapter and adds up the seconds spent in it."""

    def __init__(self, inner, method: str, clock: dict, key: str):
        self._inner, self._method, self._clock, self._key = inner, method, clock, key

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(*a, **kw):
            t0 = time.perf_counter()
            out = attr(*a, **kw)
            self._clock[self._key] = self._clock.get(self._key, 0.0) + time.perf_counter() - t0
            return out

        return timed


def imagined(args, policy: Path, wm: Path, rm: Path, store: Path, out: Path) -> dict:
    from offline_trainer.grpo.adapters import ResizedInitialStates, load_models
    from offline_trainer.grpo.config import GRPOConfig
    from offline_trainer.grpo.trainer import GRPOTrainer, StoreInitialStates
    from wmpo_core.store import EpisodeStore

    config = GRPOConfig.for_preset(
        "tiny",
        success_rate_low=0.0,  # keep every group: time the full update each iteration
        success_rate_high=1.0,
        iterations=args.iterations,
        checkpoint_every=10_000,
        max_chunks=args.chunks,
    )
    pol, imag, rew = load_models(str(policy), str(wm), str(rm))
    states = ResizedInitialStates(StoreInitialStates(EpisodeStore(store)), imag.image_size)
    trainer = GRPOTrainer(config, pol, imag, rew, states, out, log=None)
    # Time the three models inside the rollout (the trainer froze them already).
    clock: dict[str, float] = {}
    trainer.reward = Timed(rew, "detect_success", clock, "reward_s")
    real_start = imag.start

    def start(frames):
        return Timed(real_start(frames), "step", clock, "world_model_s")

    imag.start = start
    trainer.policy = Timed(pol, "sample_chunk", clock, "policy_sample_s")
    rows = [trainer.step() for _ in range(args.iterations)]
    trainer.policy = pol
    n = config.trajectories_per_step
    rollout_s = np.array([r["time/rollout_s"] for r in rows])
    update_s = np.array([r["time/update_s"] for r in rows])
    chunks = np.array([r["rollout/mean_length"] for r in rows])
    k = pol.config.chunk_size
    return {
        "trajectories_per_iteration": n,
        "rollout_s": float(rollout_s.mean()),
        "update_s": float(update_s.mean()),
        "rollouts_per_s": float(n / rollout_s.mean()),
        "mean_chunks": float(chunks.mean()),
        "frames_per_s": float(n * chunks.mean() * k / rollout_s.mean()),
        "success_rate": float(np.mean([r["rollout/success_rate"] for r in rows])),
        **{k: v / args.iterations for k, v in clock.items()},  # seconds per iteration
    }


def real(args, policy: Path) -> dict:
    from offline_trainer.real_rollouts import (
        RealBudget,
        SampledChunkPolicy,
        collect_real_rollouts,
        load_vla,
        open_arm,
    )
    from wmpo_core.sim.tasks import task_spec

    vla, _ = load_vla(policy)
    sampler = SampledChunkPolicy(vla, 1.6)
    steps = args.chunks * vla.config.chunk_size
    t_make = time.monotonic()
    with open_arm(args.task, vla.config.image_size, horizon=steps) as arm:
        make_s = time.monotonic() - t_make
        t0 = time.monotonic()
        seeds = [50_000 + i for i in range(args.real_episodes)]
        out = collect_real_rollouts(
            arm, sampler, seeds, RealBudget(len(seeds)), task_spec(args.task).instruction
        )
        seconds = time.monotonic() - t0
    n_steps = sum(r.length for r in out)
    return {
        "episodes": len(out),
        "seconds": seconds,
        "make_s": make_s,
        "rollouts_per_s": len(out) / seconds,
        "steps_per_s": n_steps / seconds,
        "mean_steps": n_steps / len(out),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default=None)
    ap.add_argument("--world-model", default=None)
    ap.add_argument("--reward", default=None)
    ap.add_argument("--task", default="Lift")
    ap.add_argument("--image-size", type=int, default=64, help="untrained models' frame size")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=12, help="horizon in chunks (tiny: 12)")
    ap.add_argument("--real-episodes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        if args.policy and args.world_model and args.reward:
            policy, wm, rm = Path(args.policy), Path(args.world_model), Path(args.reward)
        else:
            policy, wm, rm = untrained_models(d, args.image_size)
        store = first_frames(d, args.task, args.image_size, 8)
        im = imagined(args, policy, wm, rm, store, d / "run")
        re = real(args, policy)
    ratio = im["rollouts_per_s"] / re["rollouts_per_s"]
    print(f"GRPO tiny preset, {args.task}, horizon {args.chunks} chunks, {args.threads} thread(s)")
    print("| source | rollouts/s | frames (steps)/s | s per iteration |")
    print("|---|---|---|---|")
    print(
        f"| imagined (WM + RM), {im['trajectories_per_iteration']}/iteration, mean "
        f"{im['mean_chunks']:.1f} chunks | {im['rollouts_per_s']:.2f} | {im['frames_per_s']:.0f} | "
        f"rollout {im['rollout_s']:.1f} + update {im['update_s']:.1f} |"
    )
    print(
        f"| real sim (camera), {re['episodes']} episodes of {re['mean_steps']:.0f} steps | "
        f"{re['rollouts_per_s']:.3f} | {re['steps_per_s']:.1f} | "
        f"{im['trajectories_per_iteration'] / re['rollouts_per_s']:.1f} (rollouts only) |"
    )
    print(f"imagined / real rollouts per second: {ratio:.1f}x")
    parts = ", ".join(
        f"{k[:-2]} {im[k]:.1f} s"
        for k in ("policy_sample_s", "world_model_s", "reward_s")
        if k in im
    )
    print(f"imagined rollout time per iteration by model: {parts}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"imagined": im, "real": re, "ratio": ratio}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
