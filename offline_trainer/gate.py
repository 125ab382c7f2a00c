"""The promotion gate: a candidate policy must beat its parent where both can be judged fairly.

Both policies act greedily (as on the robot) inside the same frozen world model,
from the same real initial frames, judged by the same reward model. The gate
also refuses weights that are not finite (checked on load) and actions that are
not sane: outside [-1, 1], NaN, drifting far from the parent's on real frames
(GRPO moves a policy a little per cycle; a large jump means something broke), or
tripping the robot's safety filter (bounds, step limit) on its imagined rollouts
far more often than the parent does: the demo's session-2 candidate passed every
other check and then clamped 2.5x as often as its parent on the arm.

Imagined success is evidence only where imagination agrees with reality: the gate
replays the newest labelled real episodes' own actions in the world model and asks
the reward model for a verdict on each; the balanced agreement with the real labels
must reach `min_agreement`. The demo's session-3 candidate that went 0.00 -> 0.58 in
imagination and 0/12 on the robot came from a pair that agreed 0.45 (chance) there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_trainer.grpo.adapters import load_models
from offline_trainer.grpo.config import GRPOConfig
from offline_trainer.grpo.rollout import imagine_rollouts
from offline_trainer.grpo.trainer import StoreInitialStates
from wmpo_core.runtime.safety import SafetyConfig, SafetyFilter
from wmpo_core.store import EpisodeStore

MAX_MEAN_ACTION_SHIFT = 0.5  # mean |candidate - parent| per action dim, in [-1, 1] units
# "Greedy" for the rollout API, which needs log-probs (T > 0): at 1e-3 a token whose logit
# is 0.01 below the best is sampled with probability e^-10.
GREEDY_TEMPERATURE = 1e-3
# Safety-filter interventions per executed step on imagined rollouts: the candidate may
# exceed its parent's rate by this factor plus this slack, no more.
MAX_INTERVENTION_RATIO = 1.5
INTERVENTION_SLACK = 0.05
AGREEMENT_EPISODES = 48  # newest labelled real episodes replayed for the agreement check


class _ActionRecorder:
    """Passes sample_chunk through and keeps the actions, so the gate can replay them."""

    def __init__(self, policy) -> None:
        self.policy, self.chunks = policy, []
        self.reads_first_frame = getattr(policy, "reads_first_frame", False)

    def sample_chunk(self, images, instructions, temperature):
        actions, tokens, logp = self.policy.sample_chunk(images, instructions, temperature)
        self.chunks.append(np.asarray(actions, dtype=np.float64))
        return actions, tokens, logp


def intervention_rate(chunks: list[np.ndarray], chunk_mask: np.ndarray) -> float:
    """Fraction of executed steps the executor's default safety filter would clamp or
    step-limit, over every rollout's live chunks (chunks: [B, K, D] each; mask [B, C])."""
    steps = hits = 0
    for i in range(chunk_mask.shape[0]):
        safety = SafetyFilter(SafetyConfig())
        for c, chunk in enumerate(chunks):
            if not chunk_mask[i, c]:
                break
            for action in chunk[i]:
                command = safety.filter(action, now=0.0)
                steps += 1
                hits += bool(command is not None and command.reasons)
    return hits / max(steps, 1)


def _imagined_rollouts(policy, imagination, reward, frames, instructions, max_chunks):
    """(imagined success rate, safety interventions per step) of greedy rollouts."""
    recorder = _ActionRecorder(policy)
    batch = imagine_rollouts(
        recorder,
        imagination,
        reward,
        frames,
        instructions,
        max_chunks=max_chunks,
        temperature=GREEDY_TEMPERATURE,
    )
    rate = intervention_rate(recorder.chunks, batch.chunk_mask.numpy())
    return float(batch.success.float().mean()), rate


def _greedy_actions(policy, frames: torch.Tensor, instructions: list[str]) -> np.ndarray:
    """The first chunk from each first frame (which is also the episode's first frame)."""
    if getattr(policy, "reads_first_frame", False):
        frames = torch.stack([frames, frames], dim=1)
    actions, _, _ = policy.sample_chunk(frames, instructions, GREEDY_TEMPERATURE)
    return np.asarray(actions, dtype=np.float64)


def imagination_agreement(
    world_model: str | Path, reward: str | Path, store: EpisodeStore, episodes: list[str]
) -> dict[str, Any]:
    """Balanced agreement between the reward model's verdict on each episode re-imagined
    from its first frame and real actions, and the episode's real label."""
    from offline_trainer.eval_imagination import imagine_episode
    from wmpo_core.reward_model import load_reward_model
    from wmpo_core.world_model import load_world_model
    from wmpo_core.world_model.metrics import balanced_agreement

    wm, rm = load_world_model(world_model), load_reward_model(reward)
    truth, verdicts = [], []
    for episode_id in episodes:
        ep = store.load(episode_id)
        verdicts.append(bool(rm.detect_success(imagine_episode(wm, ep))[0]))
        truth.append(bool(ep.meta.success))
    truth_a = np.array(truth, dtype=bool)
    both = 0 < truth_a.sum() < len(truth_a)
    return {
        "agreement": balanced_agreement(np.array(verdicts), truth_a) if both else float("nan"),
        "episodes": len(truth),
        "successes": int(truth_a.sum()),
        "imagined_successes": int(sum(verdicts)),
    }


def _agreement_check(record: dict[str, Any], min_agreement: float) -> bool:
    if min_agreement <= 0:
        return True
    agreement = record["agreement"]
    return bool(np.isfinite(agreement) and agreement >= min_agreement)


def evaluate_gate(
    *,
    parent: str | Path,
    candidate: str | Path,
    world_model: str | Path,
    reward: str | Path,
    store: str | Path,
    episodes: list[str],
    margin: float = 0.0,
    max_chunks: int | None = None,
    labelled_episodes: list[str] | None = None,
    min_agreement: float = 0.0,
) -> dict[str, Any]:
    """Returns the gate record: both imagined success rates, action checks, the imagination
    agreement on `labelled_episodes` (checked against `min_agreement` when > 0), passed,
    reason."""
    max_chunks = max_chunks or GRPOConfig.for_preset("tiny").max_chunks
    states = StoreInitialStates(EpisodeStore(store), episodes)
    torch.manual_seed(0)
    parent_policy, imagination, detector = load_models(str(parent), str(world_model), str(reward))
    cand_policy, _, _ = load_models(str(candidate), str(world_model), str(reward))
    size = imagination.image_size
    from offline_trainer.grpo.adapters import _resize_batch

    frames = torch.from_numpy(_resize_batch(states.frames.numpy(), size))
    instructions = list(states.instructions)
    with torch.no_grad():
        p_success, p_rate = _imagined_rollouts(
            parent_policy, imagination, detector, frames, instructions, max_chunks
        )
        c_success, c_rate = _imagined_rollouts(
            cand_policy, imagination, detector, frames, instructions, max_chunks
        )
        p_act = _greedy_actions(parent_policy, frames, instructions)
        c_act = _greedy_actions(cand_policy, frames, instructions)
    agreement = imagination_agreement(
        world_model, reward, EpisodeStore(store), list(labelled_episodes or [])
    )
    finite = bool(np.isfinite(c_act).all())
    in_bounds = bool(finite and np.abs(c_act).max() <= 1.0 + 1e-6)
    shift = float(np.abs(c_act - p_act).mean()) if finite else float("inf")
    checks = {
        "finite_actions": finite,
        "actions_in_bounds": in_bounds,
        "action_shift_ok": shift <= MAX_MEAN_ACTION_SHIFT,
        "safety_interventions_ok": c_rate <= MAX_INTERVENTION_RATIO * p_rate + INTERVENTION_SLACK,
        "beats_parent": c_success > p_success + margin,
        "imagination_agrees_with_reality": _agreement_check(agreement, min_agreement),
    }
    failed = [k for k, ok in checks.items() if not ok]
    return {
        "passed": not failed,
        "reason": "all checks passed" if not failed else "failed: " + ", ".join(failed),
        "parent_imagined_success": p_success,
        "candidate_imagined_success": c_success,
        "mean_action_shift": shift,
        "parent_interventions_per_step": p_rate,
        "candidate_interventions_per_step": c_rate,
        "imagination_agreement": agreement,
        "min_agreement": min_agreement,
        "initial_states": len(instructions),
        "max_chunks": max_chunks,
        "checks": checks,
    }
