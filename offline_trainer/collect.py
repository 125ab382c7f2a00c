"""`wmpo collect --task Lift --episodes N --out STORE`: scripted-expert episodes into a store.

The fast path (no ROS, no bags) that feeds policy and world-model training:
each episode runs the scripted expert straight through `SimArm` and lands in
the episode store (wmpo_core/store.py) as frames + actions + meta.

- Seeds: episode i uses seed `--seed-start + i` for both the initial state and the
  expert's noise; ids are `<task>-s<seed>` so a re-run with the same seeds skips
  the episodes already stored (resume after Ctrl-C).
- `--perturb-frac F`: that fraction of episodes (chosen by seed, deterministically)
  get one off-expert perturbation (wmpo_core/sim/experts.py PERTURBATIONS, cycled)
  and are stored as kind='rollout'; clean ones as kind='demonstration'. World
  models need the failures and detours these produce (docs/sim.md).
- Labels: success is the sim's privileged flag at the episode's end
  (labelled_by='sim'). Episodes end 8 steps after success, or at the horizon.
- `--takeover-from CKPT`: expert takeovers instead of demonstrations. The policy acts
  greedily for a number of steps drawn per seed from `--takeover-steps LO:HI`, then a
  fresh scripted expert finishes the episode (offline_trainer/takeover.py); stored as
  kind='rollout' with `extra.takeover_step`, for `wmpo train policy --with-takeovers`.
- Keep collection seeds below 100000: evaluation (`wmpo eval policy`) starts there.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import DEFAULT_CONTROL_RATE_HZ, EE_ACTION_NAMES, TASK_INSTRUCTIONS, TASKS

EVAL_SEED_START = 100_000  # offline_trainer/eval_policy.py evaluates from here on


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="Lift", choices=TASKS)
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes")
    parser.add_argument("--out", required=True, help="episode store folder (created if missing)")
    parser.add_argument("--noise", type=float, default=0.0, help="expert action noise sigma")
    parser.add_argument(
        "--perturb-frac",
        type=float,
        default=0.0,
        help="fraction of episodes with an off-expert perturbation (stored as kind='rollout')",
    )
    parser.add_argument("--image-size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--seed-start", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--camera", default="agentview", help="robosuite camera")
    parser.add_argument(
        "--takeover-from",
        metavar="CKPT",
        default=None,
        help="expert takeovers: this policy acts first, then the scripted expert finishes "
        "(DAgger-style correction data; see docs/policy.md)",
    )
    parser.add_argument(
        "--takeover-steps",
        metavar="LO:HI",
        default="20:200",
        help="with --takeover-from: the expert takes over at a step drawn per seed from "
        "[LO, HI] (default 20:200)",
    )


def perturbation_for(seed: int, frac: float) -> str | None:
    """Deterministic per seed: whether (and how) this episode is perturbed."""
    from wmpo_core.sim.experts import PERTURBATIONS

    rng = np.random.default_rng([seed, 7919])  # independent of the expert's own stream
    if rng.random() >= frac:
        return None
    return PERTURBATIONS[int(rng.integers(len(PERTURBATIONS)))]


def sim_episode_meta(
    episode_id_: str, task: str, seed: int, success: bool, kind: str, extra: dict, **fields
):
    """The EpisodeMeta of an episode run in the embedded sim, labelled by its success flag."""
    from wmpo_core.store import EpisodeMeta

    return EpisodeMeta(
        id=episode_id_,
        task=task,
        instruction=TASK_INSTRUCTIONS[task],
        success=success,
        kind=kind,
        labelled_by="sim",
        seed=seed,
        fps=DEFAULT_CONTROL_RATE_HZ,
        action_names=list(EE_ACTION_NAMES),
        source="sim",
        extra=extra,
        **fields,
    )


def episode_id(task: str, seed: int) -> str:
    return f"{task.lower()}-s{seed:06d}"


def _check(args: argparse.Namespace) -> None:
    if args.episodes < 1:
        raise WmpoError(f"--episodes must be >= 1, got {args.episodes}")
    if not 0.0 <= args.perturb_frac <= 1.0:
        raise WmpoError(f"--perturb-frac must be in [0, 1], got {args.perturb_frac}")
    if args.noise < 0:
        raise WmpoError(f"--noise must be >= 0, got {args.noise}")
    if args.seed_start < 0 or args.seed_start + args.episodes > EVAL_SEED_START:
        raise WmpoError(
            f"seeds {args.seed_start}..{args.seed_start + args.episodes - 1} overlap the "
            f"evaluation seeds (>= {EVAL_SEED_START}); use a lower --seed-start"
        )
    if args.takeover_from is not None and args.perturb_frac > 0:
        raise WmpoError("--perturb-frac and --takeover-from do not combine: choose one")


def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.takeover_from is not None:
        from offline_trainer.takeover import collect_takeovers, parse_step_range

        parse_step_range(args.takeover_steps)  # a bad range fails before the policy loads
        return collect_takeovers(args)
    from tqdm import tqdm

    from wmpo_core.sim.arm import SimArm, SimConfig
    from wmpo_core.sim.episode import EXTRA_STEPS_AFTER_SUCCESS, run_expert_episode
    from wmpo_core.sim.experts import make_expert
    from wmpo_core.store import EpisodeStore

    store = EpisodeStore(args.out, create=True)
    have = set(store.ids())
    seeds = [args.seed_start + i for i in range(args.episodes)]
    todo = [s for s in seeds if episode_id(args.task, s) not in have]
    if len(todo) < len(seeds):
        print(f"wmpo collect: {len(seeds) - len(todo)} episodes already in {args.out}, skipped")
    cfg = SimConfig(task=args.task, image_size=args.image_size, camera=args.camera, render=True)
    counts = {"demonstration": [0, 0], "rollout": [0, 0]}  # kind -> [successes, episodes]
    t0 = time.monotonic()
    with SimArm(cfg) as arm:
        bar = tqdm(
            todo, desc=f"collect {args.task}", unit="ep", file=sys.stderr, dynamic_ncols=True
        )
        for seed in bar:
            perturbation = perturbation_for(seed, args.perturb_frac)
            expert = make_expert(args.task, args.noise, seed=seed, perturbation=perturbation)
            ep = run_expert_episode(arm, expert, seed)
            kind = "demonstration" if perturbation is None else "rollout"
            meta = sim_episode_meta(
                episode_id(args.task, seed),
                args.task,
                seed,
                ep.success,
                kind,
                extra={
                    "perturbation": perturbation,
                    "noise": args.noise,
                    "expert": type(expert).__name__,
                    "success_step": ep.success_step,
                    "extra_steps_after_success": EXTRA_STEPS_AFTER_SUCCESS,
                    "camera": args.camera,
                },
            )
            store.add(meta, ep.frames, ep.actions)
            counts[kind][0] += ep.success
            counts[kind][1] += 1
            done = sum(n for _, n in counts.values())
            bar.set_postfix(success=f"{sum(s for s, _ in counts.values()) / done:.0%}")
    for kind, (ok, n) in counts.items():
        if n:
            print(f"wmpo collect: {kind}: {ok}/{n} successes")
    print(f"wmpo collect: {len(todo)} episodes in {time.monotonic() - t0:.0f} s -> {args.out}")
    return 0
