"""The promotion gate: a candidate policy must beat its parent where both can be judged fairly.

Both policies act greedily (as on the robot) inside the same frozen world model,
from the same real initial frames, judged by the same reward model. The gate
also refuses weights that are not finite (checked on load) and actions that are
not sane: outside [-1, 1], NaN, or drifting far from the parent's on real frames
(GRPO moves a policy a little per cycle; a large jump means something broke).
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
from wmpo_core.store import EpisodeStore

MAX_MEAN_ACTION_SHIFT = 0.5  # mean |candidate - parent| per action dim, in [-1, 1] units
# "Greedy" for the rollout API, which needs log-probs (T > 0): at 1e-3 a token whose logit
# is 0.01 below the best is sampled with probability e^-10.
GREEDY_TEMPERATURE = 1e-3


def _imagined_success(policy, imagination, reward, frames, instructions, max_chunks) -> float:
    batch = imagine_rollouts(
        policy,
        imagination,
        reward,
        frames,
        instructions,
        max_chunks=max_chunks,
        temperature=GREEDY_TEMPERATURE,
    )
    return float(batch.success.float().mean())


def _greedy_actions(policy, frames: torch.Tensor, instructions: list[str]) -> np.ndarray:
    actions, _, _ = policy.sample_chunk(frames, instructions, GREEDY_TEMPERATURE)
    return np.asarray(actions, dtype=np.float64)


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
) -> dict[str, Any]:
    """Returns the gate record: both imagined success rates, action checks, passed, reason."""
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
        p_success = _imagined_success(
            parent_policy, imagination, detector, frames, instructions, max_chunks
        )
        c_success = _imagined_success(
            cand_policy, imagination, detector, frames, instructions, max_chunks
        )
        p_act = _greedy_actions(parent_policy, frames, instructions)
        c_act = _greedy_actions(cand_policy, frames, instructions)
    finite = bool(np.isfinite(c_act).all())
    in_bounds = bool(finite and np.abs(c_act).max() <= 1.0 + 1e-6)
    shift = float(np.abs(c_act - p_act).mean()) if finite else float("inf")
    checks = {
        "finite_actions": finite,
        "actions_in_bounds": in_bounds,
        "action_shift_ok": shift <= MAX_MEAN_ACTION_SHIFT,
        "beats_parent": c_success > p_success + margin,
    }
    failed = [k for k, ok in checks.items() if not ok]
    return {
        "passed": not failed,
        "reason": "all checks passed" if not failed else "failed: " + ", ".join(failed),
        "parent_imagined_success": p_success,
        "candidate_imagined_success": c_success,
        "mean_action_shift": shift,
        "initial_states": len(instructions),
        "max_chunks": max_chunks,
        "checks": checks,
    }
