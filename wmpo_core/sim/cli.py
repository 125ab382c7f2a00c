"""`wmpo sim expert --task Lift --episodes 5 [--noise 0.1] [--seed 0] [--video out.mp4]`.

Runs the scripted expert straight through `SimArm` (no ROS) and prints each
episode's result and the success rate. Without --video the sim runs state-only
(no camera), ~10x faster.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import DEFAULT_IMAGE_SIZE, TASKS
from wmpo_core.sim.experts import PERTURBATIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("expert", help="run the scripted expert and report its success rate")
    p.add_argument("--task", default="Lift", choices=TASKS)
    p.add_argument("--episodes", type=int, default=5, help="number of episodes (seeds)")
    p.add_argument("--seed", type=int, default=0, help="first seed; episode i uses seed + i")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise sigma")
    p.add_argument("--perturb", choices=PERTURBATIONS, default=None, help="off-expert behaviour")
    p.add_argument("--video", default=None, help="write all episodes' frames to this .mp4")
    p.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="video frame side")


def run(args: argparse.Namespace) -> int:
    from wmpo_core.sim.arm import SimArm, SimConfig
    from wmpo_core.sim.episode import run_expert_episode
    from wmpo_core.sim.experts import make_expert

    if args.episodes < 1:
        raise WmpoError(f"--episodes must be >= 1, got {args.episodes}")
    writer = None
    if args.video:
        import imageio.v2 as imageio

        writer = imageio.get_writer(args.video, fps=20, macro_block_size=1)
    successes = 0
    cfg = SimConfig(task=args.task, image_size=args.image_size, render=writer is not None)
    try:
        with SimArm(cfg) as arm:
            for i in range(args.episodes):
                seed = args.seed + i
                expert = make_expert(args.task, args.noise, seed=seed, perturbation=args.perturb)
                t0 = time.monotonic()
                ep = run_expert_episode(arm, expert, seed)
                successes += ep.success
                when = f"success at step {ep.success_step}" if ep.success else "failure"
                print(
                    f"episode {i} seed {seed}: {when} ({ep.length} steps, "
                    f"{time.monotonic() - t0:.1f} s)",
                    flush=True,
                )
                if writer is not None:
                    for frame in ep.frames:
                        writer.append_data(np.asarray(frame))
    finally:
        if writer is not None:
            writer.close()
    rate = successes / args.episodes
    print(f"{args.task}: {successes}/{args.episodes} successes ({rate:.0%}), noise {args.noise}")
    if args.video:
        print(f"video: {args.video}")
    return 0
