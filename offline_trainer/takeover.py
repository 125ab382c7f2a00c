"""Expert takeovers: the policy acts, then the scripted expert takes over and finishes.

Behaviour cloning learns the expert's actions on the expert's own states. A cloned
policy drifts off them, and its errors compound over a long horizon: nothing in
the demonstrations shows how to get back (the DAgger argument, Ross et al. 2011).
A takeover episode starts like a policy rollout. At `takeover_step` the policy
stops and a fresh scripted expert finishes the episode from wherever the policy
left the arm. This is the simulated form of an operator who grabs the teleop
device when the robot goes wrong (HG-DAgger). Trained on the expert's part, the
policy sees corrections from the states it reaches itself.

The whole episode is stored as one `kind='rollout'` episode (frames and the
actions really executed, policy part included), so nothing is lost and the world
model can train on all of it. `extra.takeover_step` marks where the expert
began. Behaviour cloning (`wmpo train policy --with-takeovers`) takes windows only
from that step on: the policy's own actions before it are not labels.

    wmpo collect --task NutAssemblySquare --takeover-from CKPT --episodes 200 \
        --out STORE --noise 0.05 --image-size 64 --seed-start 60000
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from wmpo_core.errors import WmpoError
from wmpo_core.policy_api import Observation
from wmpo_core.sim.episode import EXTRA_STEPS_AFTER_SUCCESS, SuccessWatch

TAKEOVER_SALT = 104_729
"""Mixed into the seed for the takeover-step draw, so it is independent of the expert's
noise and of `collect.perturbation_for`."""


@dataclass
class TakeoverEpisode:
    seed: int
    success: bool
    """The sim's success flag at the end (after the extra steps)."""
    success_step: int | None
    takeover_step: int | None
    """Step at which the expert took over; None when the policy's part already ended the
    episode (a success, or the horizon)."""
    frames: np.ndarray
    """uint8 [T, H, W, 3]: frame t is observed before action t."""
    actions: np.ndarray
    """float32 [T, 7]: the action executed after frame t (the policy's, then the expert's)."""

    @property
    def length(self) -> int:
        return len(self.actions)


def parse_step_range(text: str) -> tuple[int, int]:
    """'LO:HI' -> (LO, HI), both inclusive, 0 <= LO <= HI."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or int(match[1]) > int(match[2]):
        raise WmpoError(f"--takeover-steps must be LO:HI with 0 <= LO <= HI, got '{text}'")
    return int(match[1]), int(match[2])


def takeover_step_for(seed: int, lo: int, hi: int) -> int:
    """Deterministic per seed: the step at which the expert takes over, in [lo, hi]."""
    return int(np.random.default_rng([seed, TAKEOVER_SALT]).integers(lo, hi + 1))


def run_takeover_episode(
    arm,
    policy,
    expert,
    seed: int,
    takeover_step: int,
    instruction: str,
    extra_steps: int = EXTRA_STEPS_AFTER_SUCCESS,
) -> TakeoverEpisode:
    """Reset `arm` to `seed`; `policy` (a ChunkPolicy) plays its chunks open-loop for
    `takeover_step` steps, then `expert` (fresh: reset here) acts until success +
    `extra_steps`, until it is done without success, or until the horizon."""
    if takeover_step < 0:
        raise WmpoError(f"takeover_step must be >= 0, got {takeover_step}")
    obs = arm.reset(seed)
    policy.reset()
    expert.reset()
    frames, actions, queue = [], [], []
    watch = SuccessWatch(extra_steps)
    took_over = False
    for t in range(arm.horizon):
        if t < takeover_step:
            if not queue:
                chunk = policy.predict_chunk(
                    Observation(images={"camera": obs.image}, instruction=instruction)
                )
                queue = [np.asarray(a, dtype=np.float64) for a in chunk]
            action = queue.pop(0)
        else:
            took_over = True
            action = expert.act(arm.privileged_state())
        frames.append(obs.image)
        actions.append(action)
        obs = arm.step(action)
        if watch.update(arm.success(), t + 1):
            break
        if took_over and watch.success_step is None and expert.done:
            break
    return TakeoverEpisode(
        seed=seed,
        success=watch.success_step is not None,
        success_step=watch.success_step,
        takeover_step=takeover_step if took_over else None,
        frames=np.stack(frames),
        actions=np.asarray(actions, dtype=np.float32),
    )


def takeover_episode_id(task: str, version: str, seed: int) -> str:
    """Unique per (policy, seed): a second round with a newer policy adds, never collides."""
    tag = re.sub(r"[^A-Za-z0-9_.-]", "_", version)[:40]
    return f"{task.lower()}-takeover-{tag}-s{seed:06d}"


def collect_takeovers(args) -> int:
    """`wmpo collect --takeover-from CKPT`: one takeover episode per seed into the store."""
    from tqdm import tqdm

    from offline_trainer.collect import sim_episode_meta
    from wmpo_core.interfaces import TASK_INSTRUCTIONS
    from wmpo_core.policy import load_policy_checkpoint
    from wmpo_core.sim.arm import SimArm, SimConfig
    from wmpo_core.sim.experts import make_expert
    from wmpo_core.store import EpisodeStore

    lo, hi = parse_step_range(args.takeover_steps)
    policy = load_policy_checkpoint(args.takeover_from)  # greedy, as on the robot
    version = str(getattr(policy, "version", "")) or "policy"
    store = EpisodeStore(args.out, create=True)
    have = set(store.ids())
    seeds = [args.seed_start + i for i in range(args.episodes)]
    todo = [s for s in seeds if takeover_episode_id(args.task, version, s) not in have]
    if len(todo) < len(seeds):
        print(f"wmpo collect: {len(seeds) - len(todo)} takeovers already in {args.out}, skipped")
    instruction = TASK_INSTRUCTIONS[args.task]
    cfg = SimConfig(task=args.task, image_size=args.image_size, camera=args.camera, render=True)
    ok = taken = 0
    t0 = time.monotonic()
    with SimArm(cfg) as arm:
        bar = tqdm(todo, desc=f"takeovers {args.task}", unit="ep", file=sys.stderr)
        for seed in bar:
            step = takeover_step_for(seed, lo, hi)
            expert = make_expert(args.task, args.noise, seed=seed)
            ep = run_takeover_episode(arm, policy, expert, seed, step, instruction)
            meta = sim_episode_meta(
                takeover_episode_id(args.task, version, seed),
                args.task,
                seed,
                ep.success,
                "rollout",
                policy_version=version,
                extra={
                    "takeover_step": ep.takeover_step,
                    "takeover_by": type(expert).__name__,
                    "noise": args.noise,
                    "success_step": ep.success_step,
                    "extra_steps_after_success": EXTRA_STEPS_AFTER_SUCCESS,
                    "camera": args.camera,
                },
            )
            store.add(meta, ep.frames, ep.actions)
            taken += ep.takeover_step is not None
            ok += ep.success and ep.takeover_step is not None
            bar.set_postfix(taken=taken, rescued=ok)
    print(
        f"wmpo collect: {len(todo)} takeover episodes of {version}: the expert took over "
        f"{taken}, and {ok} of those succeeded ({time.monotonic() - t0:.0f} s) -> {args.out}"
    )
    return 0
