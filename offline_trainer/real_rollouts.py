"""Real rollouts of a policy in the embedded sim, counted against a real-episode budget P.

WMPO compares methods at the same number P of *real* trajectories (Table 1). This
module is the one place that spends them: every episode goes through
`RealBudget.take`, which refuses to exceed P. Episodes run through
`offline_trainer.eval_policy.rollout` (the same open-loop chunk execution the
evaluator uses); `SampledChunkPolicy` wraps the VLA so each chunk is *sampled* at
a temperature and its image, tokens and exact log-probs are kept (what GRPO and
DPO need).

Labels: the sim's privileged success flag stands in for the operator's label on a
real robot (`labelled_by="sim"`). An episode ends at the first success or at the
horizon, as on the robot when the operator presses "success"; episodes written to a
store (`collect_to_store`) go on 8 steps past the success flag, as the scripted experts'
do, so a stored success ends on frames that show its result.

Seeds: demonstrations use seeds from 0 (`wmpo collect`), evaluation from 100000
(eval_policy.EVAL_SEED_START); real rollouts for training use
[ROLLOUT_SEED_START, EVAL_SEED_START), so no method is scored on an initial state
it trained on.

    python -m offline_trainer.real_rollouts --policy CKPT --task Lift --episodes 32 --out STORE
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from offline_trainer.eval_policy import EVAL_SEED_START, rollout
from wmpo_core.errors import WmpoError
from wmpo_core.policy_api import Observation
from wmpo_core.sim.episode import EXTRA_STEPS_AFTER_SUCCESS

ROLLOUT_SEED_START = 50_000
"""First seed of training rollouts (below the evaluation seeds, above the demonstrations)."""


class BudgetExceeded(WmpoError):
    """A method asked for more real episodes than its budget P allows."""


@dataclass
class RealBudget:
    total: int
    """P: real episodes this method may run in all."""
    used: int = 0
    """Real episodes run so far."""

    def __post_init__(self) -> None:
        if self.total < 0 or not 0 <= self.used <= self.total:
            raise WmpoError(f"RealBudget: need 0 <= used ({self.used}) <= total ({self.total})")

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def take(self, n: int = 1) -> None:
        """Spend n real episodes; raises BudgetExceeded (spending nothing) if fewer are left."""
        if n > self.remaining:
            raise BudgetExceeded(
                f"real-episode budget P={self.total} exhausted: {self.used} used, {n} more "
                "asked; every method gets the same P (raise the budget, not the count)"
            )
        self.used += n


@dataclass
class RealRollout:
    """One real episode of a sampling policy, with what GRPO / DPO need per chunk."""

    seed: int
    instruction: str
    success: bool
    length: int
    """Control steps executed."""
    frames: list[np.ndarray]
    """uint8 [H, W, 3] sim frames: the reset frame, then one per step (length + 1)."""
    actions: np.ndarray
    """float32 [length, D]: the actions executed."""
    chunk_images: np.ndarray
    """uint8 [C, S, S, 3]: the frame each chunk was predicted from, at the policy's size."""
    tokens: torch.Tensor
    """long [C, K, D]: sampled action tokens."""
    logprobs: torch.Tensor
    """float [C, K, D]: their log-probs at the sampling temperature (zeros when greedy)."""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class SampledChunkPolicy:
    """A VLAGRPOPolicy as a ChunkPolicy: samples each chunk and records it.

    temperature > 0 draws from the global torch RNG through `VLAGRPOPolicy.sample_chunk`
    (the same path as the imagined rollouts, so the GRPO update reproduces the log-probs);
    temperature 0 is greedy, as on the robot.
    """

    def __init__(self, vla, temperature: float):
        self.vla = vla
        self.temperature = float(temperature)
        cfg = vla.config
        self.action_names = tuple(cfg.action_names)
        self.chunk_size = int(cfg.chunk_size)
        self.image_size = int(cfg.image_size)
        self.version = ""
        self.reset()

    def reset(self) -> None:
        self.images: list[np.ndarray] = []
        """What the policy saw per chunk: [S, S, 3], or [2, S, S, 3] with the first frame."""
        self.tokens: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self.actions: list[np.ndarray] = []

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        from wmpo_core.policy.processing_policy import prepare_image

        img = prepare_image(obs.images["camera"], self.image_size)
        if getattr(self.vla, "reads_first_frame", False):
            first = self.images[0][0] if self.images else img
            img = np.stack([img, first])
        images = torch.from_numpy(img)[None]
        if self.temperature > 0:
            actions, tokens, logp = self.vla.sample_chunk(
                images, [obs.instruction], self.temperature
            )
        else:
            with torch.no_grad():
                tokens = self.vla.token_logits(images, [obs.instruction]).argmax(-1).cpu()
            actions = torch.from_numpy(self.vla.processor.tokenizer.decode(tokens))
            logp = torch.zeros(tokens.shape)
        self.images.append(img)
        self.tokens.append(tokens[0].long())
        self.logprobs.append(logp[0].float())
        chunk = np.asarray(actions[0], dtype=np.float32)
        self.actions.append(chunk)
        return chunk


def run_real_episode(
    arm, policy: SampledChunkPolicy, seed: int, instruction: str, extra_steps: int = 0
) -> RealRollout:
    """One episode through eval_policy.rollout, with the sampled chunks attached; it goes on
    `extra_steps` after the success flag rises (see `rollout`)."""
    result, frames = rollout(arm, policy, seed, instruction, record=True, extra_steps=extra_steps)
    executed = np.concatenate(policy.actions)[: result.length]  # the last chunk may be cut
    return RealRollout(
        seed=seed,
        instruction=instruction,
        success=bool(result.success),
        length=int(result.length),
        frames=frames,
        actions=executed.astype(np.float32),
        chunk_images=np.stack(policy.images),
        tokens=torch.stack(policy.tokens),
        logprobs=torch.stack(policy.logprobs),
        seconds=result.seconds,
    )


def open_arm(task: str, image_size: int, horizon: int | None = None):
    from wmpo_core.sim.arm import SimArm, SimConfig

    return SimArm(SimConfig(task=task, image_size=image_size, render=True, horizon=horizon))


def collect_real_rollouts(
    arm,
    policy: SampledChunkPolicy,
    seeds: Sequence[int],
    budget: RealBudget,
    instruction: str,
    progress: bool = False,
    extra_steps: int = 0,
) -> list[RealRollout]:
    """One real episode per seed (repeat a seed for a group), each paid from `budget` first.
    `extra_steps`: steps recorded after the success flag rises (0: the episode ends there,
    what the online GRPO baseline rewards)."""
    out = []
    for seed in seeds:
        if seed >= EVAL_SEED_START:
            raise WmpoError(
                f"seed {seed} is an evaluation seed (>= {EVAL_SEED_START}); training rollouts "
                f"use seeds from {ROLLOUT_SEED_START}"
            )
        budget.take(1)
        out.append(run_real_episode(arm, policy, int(seed), instruction, extra_steps))
        if progress:
            ok = sum(r.success for r in out)
            print(
                f"  real rollout {budget.used}/{budget.total}: seed {seed} "
                f"{'success' if out[-1].success else 'failure'} in {out[-1].length} steps "
                f"({ok}/{len(out)} so far)",
                flush=True,
            )
    return out


def add_to_store(store, rollout_: RealRollout, task: str, episode_id: str, version: str) -> Path:
    """Write a rollout as a labelled 'rollout' episode (for alignment / reward / DPO).

    The store keeps every frame including the one after the last action (it shows the
    outcome the reward model must see); that frame gets a copy of the last action so
    frames and actions stay [T] each (`extra.executed_steps` = the real action count).
    """
    from wmpo_core.interfaces import EE_ACTION_NAMES
    from wmpo_core.store import EpisodeMeta

    actions = rollout_.actions
    last = actions[-1:] if len(actions) else np.zeros((1, len(EE_ACTION_NAMES)), np.float32)
    meta = EpisodeMeta(
        id=episode_id,
        task=task,
        instruction=rollout_.instruction,
        success=rollout_.success,
        kind="rollout",
        policy_version=version,
        labelled_by="sim",  # stands in for the operator's label on a real robot
        seed=rollout_.seed,
        action_names=list(EE_ACTION_NAMES),
        source="sim",
        extra={"executed_steps": rollout_.length, **rollout_.extra},
    )
    return store.add(meta, np.stack(rollout_.frames), np.concatenate([actions, last]))


def load_vla(path: str | Path, device: str = "cpu"):
    """A policy checkpoint as VLAGRPOPolicy (sampling + exact log-probs) and its version."""
    from offline_trainer.grpo.adapters import VLAGRPOPolicy
    from wmpo_core.policy.checkpoint_policy import load_policy, policy_version

    model, processor, manifest = load_policy(path)
    return VLAGRPOPolicy(model, processor, manifest, device), policy_version(manifest)


def collect_to_store(
    policy_path: str | Path,
    task: str,
    episodes: int,
    out: str | Path,
    *,
    seed_start: int = ROLLOUT_SEED_START,
    repeats: int = 1,
    temperature: float = 1.0,
    image_size: int = 64,
    horizon: int | None = None,
    progress: bool = True,
    extra_steps: int = EXTRA_STEPS_AFTER_SUCCESS,
) -> list[str]:
    """P real rollouts of a policy into an episode store; returns the new episode ids.

    A success is recorded `extra_steps` past the sim's flag (the scripted experts' 8), so
    its last frames show the result: the world model aligned on these episodes learns what
    the policy's success looks like after the instant, and the reward model's positives
    (a success's final window) show it too.

    `repeats` > 1 runs each initial state that many times (DPO can then pair a success
    and a failure from the same state). Idempotent: ids already in the store are skipped
    and still count against P, so a resumed collection never exceeds it.
    """
    from wmpo_core.sim.tasks import task_spec
    from wmpo_core.store import EpisodeStore

    vla, version = load_vla(policy_path)
    store = EpisodeStore(out, create=True)
    have = set(store.ids())
    budget = RealBudget(episodes)
    sampler = SampledChunkPolicy(vla, temperature)
    instruction = task_spec(task).instruction
    ids = []
    successes = 0
    torch.manual_seed(seed_start)
    bar = tqdm(total=episodes, desc=f"rollouts {task}", unit="ep", disable=not progress)
    with open_arm(task, image_size, horizon) as arm, bar:
        for i in range(episodes):
            seed = seed_start + i // repeats
            episode_id = f"{task}-rollout-{version}-{seed}-{i % repeats}"
            ids.append(episode_id)
            if episode_id in have:
                budget.take(1)
                successes += int(store.meta(episode_id).success)
            else:
                (r,) = collect_real_rollouts(
                    arm, sampler, [seed], budget, instruction, extra_steps=extra_steps
                )
                add_to_store(store, r, task, episode_id, version)
                successes += int(r.success)
            bar.update(1)
            bar.set_postfix(success=f"{successes}/{i + 1}")
    return ids


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="policy checkpoint to roll out")
    p.add_argument("--task", required=True, help="Lift | Stack | NutAssemblySquare")
    p.add_argument("--episodes", type=int, required=True, help="P: real episodes to run")
    p.add_argument("--out", required=True, help="episode store to add the rollouts to")
    p.add_argument("--seed-start", type=int, default=ROLLOUT_SEED_START)
    p.add_argument("--repeats", type=int, default=1, help="episodes per initial state")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--image-size", type=int, default=64, help="stored frame size")
    p.add_argument("--horizon", type=int, default=None, help="step limit (default: task's)")
    p.add_argument(
        "--extra-steps",
        type=int,
        default=EXTRA_STEPS_AFTER_SUCCESS,
        help="steps recorded after the success flag rises, so a success ends on its result",
    )
    p.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    ids = collect_to_store(
        args.policy,
        args.task,
        args.episodes,
        args.out,
        seed_start=args.seed_start,
        repeats=args.repeats,
        temperature=args.temperature,
        image_size=args.image_size,
        horizon=args.horizon,
        extra_steps=args.extra_steps,
    )
    print(f"{len(ids)} real rollouts in {args.out} ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
