"""`wmpo eval policy CKPT --task T`: success rate of a policy in the embedded sim.

Rollouts go straight through `wmpo_core.sim.SimArm` (no ROS): each chunk is
predicted from the current frame and executed open-loop, K actions, as the
executor would. The episode ends at the task's success flag or its horizon.

Seeds: training data is collected on seeds < 100000 (`wmpo collect` counts up
from 0); evaluation starts at 100000, so the initial states a policy is scored
on were never in its demonstrations. Reported: success rate with a 95 % Wilson
interval, mean episode length (all / successful), and a grid video of the
first episodes (green border: success, red: failure).

`--through-nodes` runs the same seeds through the real ROS graph instead
(sim_node -> policy_node -> executor_node, episode_node labelling from the sim's
success flag; `wmpo_nodes/eval_nodes.py`): slower, but it exercises exactly what
runs on the robot, the executor's chunk queue and safety filter included.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wmpo_core.errors import WmpoError
from wmpo_core.policy_api import ChunkPolicy, Observation
from wmpo_core.sim.episode import SuccessWatch

EVAL_SEED_START = 100_000
"""First evaluation seed; demonstrations use seeds below it (docs/policy.md)."""
EVAL_CHUNK_STRATEGIES = ("open_loop", "temporal_ensemble")
"""How in-process rollouts play chunks (executor_node's strategies of the same names)."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (sensible at 0 % and 100 %)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    seconds: float


@dataclass
class EvalResult:
    task: str
    policy_version: str
    episodes: list[EpisodeResult] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.episodes)

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / self.n if self.n else 0.0

    def summary(self) -> dict:
        lo, hi = wilson_interval(self.successes, self.n)
        ok = [e.length for e in self.episodes if e.success]
        return {
            "task": self.task,
            "policy_version": self.policy_version,
            "episodes": self.n,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "wilson95": [lo, hi],
            "mean_length": float(np.mean([e.length for e in self.episodes])) if self.n else 0.0,
            "mean_success_length": float(np.mean(ok)) if ok else None,
            "seeds": [e.seed for e in self.episodes],
            "per_episode": [asdict(e) for e in self.episodes],
        }


def rollout(
    arm,
    policy: ChunkPolicy,
    seed: int,
    instruction: str,
    record: bool = False,
    chunk_strategy: str = "open_loop",
    extra_steps: int = 0,
) -> tuple[EpisodeResult, list[np.ndarray]]:
    """One episode. 'open_loop': predict a chunk from the current frame, execute it, repeat.
    'temporal_ensemble': predict a chunk every step and play the executor's own ensemble
    of the overlapping chunks (wmpo_core.runtime.chunking, as executor_node does).

    The episode ends `extra_steps` after the sim's success flag rises (0: at once, what
    evaluation counts) or at the horizon. With extra steps the flag must stay up through
    them, as for the scripted experts' episodes: a stored success then ends on frames that
    show the result (the cube held up), not on the instant the flag rose."""
    if extra_steps < 0:
        raise WmpoError(f"extra_steps must be >= 0 steps after the success flag, got {extra_steps}")
    t0 = time.monotonic()
    obs = arm.reset(seed)
    policy.reset()
    frames = [obs.image] if record else []
    scheduler = _scheduler(chunk_strategy, arm)
    done = False
    watch = SuccessWatch(extra_steps)
    while arm.step_count < arm.horizon and not done:
        chunk = policy.predict_chunk(
            Observation(images={"camera": obs.image}, instruction=instruction)
        )
        if scheduler is not None:
            now = arm.step_count * arm.dt
            scheduler.add_chunk(np.asarray(chunk), obs_stamp=now, now=now)
            chunk = [scheduler.next_action(now).action]
        for action in chunk:
            obs = arm.step(action)
            if record:
                frames.append(obs.image)
            done = watch.update(arm.success(), arm.step_count)
            if done or arm.step_count >= arm.horizon:
                break
    # A success: the flag is up at the end (after the extra steps, or at the horizon).
    success = watch.success_step is not None
    result = EpisodeResult(seed, success, arm.step_count, time.monotonic() - t0)
    return result, frames


def _scheduler(chunk_strategy: str, arm):
    if chunk_strategy == "open_loop":
        return None
    from wmpo_core.runtime.chunking import ChunkConfig, make_scheduler

    return make_scheduler(ChunkConfig(chunk_strategy, arm.dt))


def evaluate_policy(
    policy: ChunkPolicy,
    task: str,
    episodes: int,
    seed_start: int = EVAL_SEED_START,
    image_size: int = 64,
    horizon: int | None = None,
    record: int = 0,
    progress: bool = True,
    chunk_strategy: str = "open_loop",
) -> tuple[EvalResult, list[list[np.ndarray]]]:
    """Roll `policy` out on seeds seed_start .. seed_start+episodes-1; record the first `record`."""
    if chunk_strategy not in EVAL_CHUNK_STRATEGIES:
        raise WmpoError(
            f"--chunk-strategy must be one of {EVAL_CHUNK_STRATEGIES}, got '{chunk_strategy}'"
        )
    from wmpo_core.sim.arm import SimArm, SimConfig
    from wmpo_core.sim.tasks import task_spec

    instruction = task_spec(task).instruction
    result = EvalResult(task=task, policy_version=str(getattr(policy, "version", "")))
    videos: list[list[np.ndarray]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"eval {task}", unit="ep", dynamic_ncols=True)
    with SimArm(SimConfig(task=task, image_size=image_size, render=True, horizon=horizon)) as arm:
        for i in range(episodes):
            ep, frames = rollout(
                arm, policy, seed_start + i, instruction, i < record, chunk_strategy
            )
            result.episodes.append(ep)
            if frames:
                videos.append(frames)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{result.successes}/{result.n}")
    if bar is not None:
        bar.close()
    return result, videos


def write_grid_video(
    videos: list[list[np.ndarray]], successes: list[bool], path: str | Path, fps: float = 20.0
) -> Path:
    """Tile episodes into one mp4 (shorter ones hold their last frame), border = outcome."""
    import imageio.v2 as imageio

    if not videos:
        raise ValueError("no episodes to put in a video")
    n = len(videos)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, _ = videos[0][0].shape
    b = max(2, h // 32)
    length = max(len(v) for v in videos)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # macro_block_size 16: frame sides must be multiples of it for most players
    cell_h, cell_w = h + 2 * b, w + 2 * b
    out_h = math.ceil(rows * cell_h / 16) * 16
    out_w = math.ceil(cols * cell_w / 16) * 16
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=16) as writer:
        for t in range(length):
            canvas = np.zeros((out_h, out_w, 3), np.uint8)
            for i, (frames, ok) in enumerate(zip(videos, successes, strict=True)):
                r, c = divmod(i, cols)
                y, x = r * cell_h, c * cell_w
                done = t >= len(frames) - 1
                colour = (0, 200, 0) if ok else (220, 0, 0)
                canvas[y : y + cell_h, x : x + cell_w] = colour if done else (60, 60, 60)
                canvas[y + b : y + b + h, x + b : x + b + w] = frames[min(t, len(frames) - 1)]
            writer.append_data(canvas)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", help="policy checkpoint directory ('random' for the baseline)"
    )
    parser.add_argument("--task", required=True, help="Lift | Stack | NutAssemblySquare")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument(
        "--seed-start",
        type=int,
        default=EVAL_SEED_START,
        help=f"first initial-state seed (default {EVAL_SEED_START}; training data uses seeds below it)",
    )
    parser.add_argument("--video", default=None, help="write a grid mp4 of the first episodes")
    parser.add_argument("--video-episodes", type=int, default=9, help="episodes in the grid video")
    parser.add_argument(
        "--image-size", type=int, default=None, help="camera size (default: policy's)"
    )
    parser.add_argument("--horizon", type=int, default=None, help="step limit (default: task's)")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy (as on the robot)"
    )
    parser.add_argument("--json", default=None, help="write the summary as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--through-nodes",
        action="store_true",
        help="run through the ROS graph (sim_node -> policy_node -> executor_node) instead "
        "of in-process; episodes are bounded in wall-clock time (see --episode-timeout)",
    )
    parser.add_argument(
        "--episode-timeout",
        type=float,
        default=None,
        help="--through-nodes: seconds per episode (default: horizon at 20 Hz + 50 %%)",
    )
    parser.add_argument("--logs", default="runs/eval_nodes", help="--through-nodes: node logs")
    parser.add_argument(
        "--chunk-strategy",
        default="open_loop",
        choices=EVAL_CHUNK_STRATEGIES,
        help="in-process: play each chunk open-loop (default), or predict every step and "
        "play the executor's temporal ensemble (executor_node chunk_strategy)",
    )
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise WmpoError(f"--episodes must be >= 1, got {args.episodes}")
    if args.seed_start < EVAL_SEED_START:
        print(
            f"warning: --seed-start {args.seed_start} < {EVAL_SEED_START}: these initial states "
            "may be in the training data"
        )
    if args.through_nodes:
        if args.chunk_strategy != "open_loop":
            raise WmpoError(
                "--chunk-strategy is for in-process rollouts; through the nodes the executor "
                "plays chunks: set chunk_strategy in launch/config/executor.yaml"
            )
        return _run_through_nodes(args)
    import torch

    torch.set_num_threads(args.threads)
    if args.checkpoint == "random":
        from wmpo_core.runtime.policies import RandomPolicy

        policy: ChunkPolicy = RandomPolicy(scale=1.0, seed=0)
        image_size = args.image_size or 64
    else:
        from wmpo_core.policy import load_policy_checkpoint

        policy = load_policy_checkpoint(args.checkpoint, temperature=args.temperature, seed=0)
        image_size = args.image_size or policy.image_size
    n_video = min(args.video_episodes, args.episodes) if args.video else 0
    result, videos = evaluate_policy(
        policy,
        args.task,
        args.episodes,
        seed_start=args.seed_start,
        image_size=image_size,
        horizon=args.horizon,
        record=n_video,
        progress=not args.no_progress,
        chunk_strategy=args.chunk_strategy,
    )
    s = result.summary()
    lo, hi = s["wilson95"]
    ok_len = s["mean_success_length"]
    print(
        f"{args.task}: success {s['successes']}/{s['episodes']} = {100 * s['success_rate']:.1f} % "
        f"(95 % Wilson CI {100 * lo:.1f}-{100 * hi:.1f} %), mean length {s['mean_length']:.1f} steps"
        + (f" ({ok_len:.1f} when successful)" if ok_len is not None else "")
        + f", seeds {args.seed_start}..{args.seed_start + args.episodes - 1}, policy {result.policy_version}"
    )
    if args.video:
        path = write_grid_video(videos, [e.success for e in result.episodes[:n_video]], args.video)
        print(f"video: {path}")
    _write_json(args.json, s)
    return 0


def _run_through_nodes(args: argparse.Namespace) -> int:
    if args.checkpoint == "random":
        raise WmpoError("--through-nodes needs a checkpoint directory, not 'random'")
    if args.video:
        print("note: --video is written by the in-process evaluation only; ignored here")
    from wmpo_nodes.eval_nodes import evaluate_through_nodes

    result = evaluate_through_nodes(
        args.checkpoint,
        args.task,
        args.episodes,
        seed_start=args.seed_start,
        log_dir=Path(args.logs),
        timeout_s=args.episode_timeout,
        image_size=args.image_size or 64,
        progress=not args.no_progress,
    )
    s = result.summary() | {"through_nodes": True}
    lo, hi = s["wilson95"]
    print(
        f"{args.task} through the nodes: success {s['successes']}/{s['episodes']} = "
        f"{100 * s['success_rate']:.1f} % (95 % Wilson CI {100 * lo:.1f}-{100 * hi:.1f} %), "
        f"mean length ~{s['mean_length']:.0f} steps, seeds {args.seed_start}.."
        f"{args.seed_start + args.episodes - 1}, policy {result.policy_version}; logs {args.logs}"
    )
    _write_json(args.json, s)
    return 0


def _write_json(path: str | None, summary: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=2) + "\n")
