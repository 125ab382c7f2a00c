"""GRPOConfig: every knob of GRPO in imagination, with the paper's defaults.

Defaults follow WMPO (arXiv 2511.09515) and the authors' public training
scripts (see docs/grpo.md): G = 8 rollouts per initial state, rollout
temperature 1.6, dynamic sampling in [0.1, 0.9], PPO-clip with the DAPO
asymmetric range (0.2, 0.28), no KL, no entropy bonus, one PPO epoch,
grad clip 1.0. `GRPOConfig.for_preset` applies the documented per-preset
overrides (`tiny` runs on a CPU in minutes; `base` is the paper's scale).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from wmpo_core.errors import WmpoError


@dataclass
class GRPOConfig:
    # --- sampling ------------------------------------------------------------
    group_size: int = 8
    """G: imagined rollouts per initial state (WMPO: 8)."""
    groups_per_step: int = 64
    """Initial states (groups) per training iteration, after dynamic sampling (WMPO: 64)."""
    temperature: float = 1.6
    """Rollout sampling temperature; the PPO log-probs are taken at the same temperature
    (WMPO: 1.6, high so that groups of 8 disagree often enough to give a signal)."""
    max_chunks: int = 48
    """Imagined horizon in action chunks (WMPO: 23-48 chunks of 8 actions per task)."""
    rollout_batch_size: int = 512
    """Trajectories imagined together in one world-model batch (memory knob only)."""

    # --- dynamic sampling ----------------------------------------------------
    success_rate_low: float = 0.1
    """Keep a group only if its success rate is >= this (WMPO/DAPO dynamic sampling)."""
    success_rate_high: float = 0.9
    """Keep a group only if its success rate is <= this. All-success / all-failure groups
    have zero advantage everywhere and would only dilute the batch."""
    max_sampling_rounds: int = 4
    """Draw fresh groups at most this many times per iteration to fill `groups_per_step`
    kept groups; after that the update runs on what was kept (skipped if nothing was)."""

    # --- objective -----------------------------------------------------------
    advantage_eps: float = 1e-6
    """eps in A = (R - mean) / (std + eps), per group."""
    clip_eps_low: float = 0.2
    """PPO ratio lower clip: 1 - clip_eps_low (WMPO: 0.2)."""
    clip_eps_high: float = 0.28
    """PPO ratio upper clip: 1 + clip_eps_high (WMPO/DAPO 'clip-higher': 0.28, lets rare
    good tokens grow faster than common ones shrink)."""
    kl_coef: float = 0.0
    """Weight of a k3 KL penalty to a frozen reference policy (WMPO: 0, none). > 0 needs a
    reference policy passed to the trainer."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (WMPO: 0). Entropy is always logged as losses/entropy."""

    # --- optimisation --------------------------------------------------------
    learning_rate: float = 5e-6
    """AdamW learning rate (WMPO: 5e-6 for the 7B OpenVLA-OFT)."""
    weight_decay: float = 0.01
    """AdamW weight decay (WMPO: 0.01)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip per optimizer step (WMPO: 1.0)."""
    ppo_epochs: int = 1
    """Passes over one iteration's trajectories (WMPO: 1, so the update stays on-policy)."""
    minibatch_trajectories: int = 128
    """Trajectories per optimizer step (WMPO: 128 of 512)."""
    micro_batch_trajectories: int = 16
    """Trajectories per forward/backward inside a mini-batch (gradient accumulation; memory
    knob only, the loss is the same)."""

    # --- run -----------------------------------------------------------------
    iterations: int = 100
    """Training iterations (rollout + update) in a run."""
    seed: int = 0
    """Seeds the global torch RNG at the start of every iteration (seed, iteration), so a run
    resumed from a checkpoint continues exactly as the uninterrupted one."""
    checkpoint_every: int = 10
    """Write a resumable training state every this many iterations (and at the end)."""
    keep_checkpoints: int = 2
    """Resumable states kept on disk (older ones are deleted after a new one is published)."""

    # --- bookkeeping ---------------------------------------------------------
    preset: str = "base"
    """Which preset the defaults came from ('tiny' | 'base'); recorded in checkpoints."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance recorded with the run (e.g. model checkpoint paths)."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)  # JSON round-trips give a list
        _check(
            self.group_size >= 2,
            f"group_size must be >= 2 (a group needs a baseline), got {self.group_size}",
        )
        for name in (
            "groups_per_step",
            "max_chunks",
            "rollout_batch_size",
            "max_sampling_rounds",
            "ppo_epochs",
            "minibatch_trajectories",
            "micro_batch_trajectories",
            "iterations",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and value >= 1, f"{name} must be an int >= 1, got {value!r}"
            )
        _check(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"temperature must be > 0, got {self.temperature}",
        )
        _check(
            0.0 <= self.success_rate_low <= self.success_rate_high <= 1.0,
            "need 0 <= success_rate_low <= success_rate_high <= 1, got "
            f"[{self.success_rate_low}, {self.success_rate_high}]",
        )
        _check(
            0.0 < self.clip_eps_low < 1.0 and self.clip_eps_high > 0.0,
            f"need 0 < clip_eps_low < 1 and clip_eps_high > 0, got ({self.clip_eps_low}, {self.clip_eps_high})",
        )
        _check(self.advantage_eps > 0, f"advantage_eps must be > 0, got {self.advantage_eps}")
        _check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        _check(self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        _check(
            self.micro_batch_trajectories <= self.minibatch_trajectories,
            f"micro_batch_trajectories ({self.micro_batch_trajectories}) must be <= "
            f"minibatch_trajectories ({self.minibatch_trajectories})",
        )
        _check(
            self.preset in PRESETS, f"preset must be one of {sorted(PRESETS)}, got '{self.preset}'"
        )

    @property
    def trajectories_per_step(self) -> int:
        return self.group_size * self.groups_per_step

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GRPOConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WmpoError(
                f"GRPO config: unknown field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**data)

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> GRPOConfig:
        """The preset's defaults, then `overrides` (field name -> value)."""
        if preset not in PRESETS:
            raise WmpoError(f"unknown GRPO preset '{preset}'; choose from {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[preset], "preset": preset, **overrides})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise WmpoError(f"GRPOConfig: {message}")


# Per-preset overrides of the dataclass defaults (which are the paper's).
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's scale (GPU): every default as in WMPO.
    "base": {},
    # A CPU in minutes: fewer initial states, a short horizon, a small policy that tolerates
    # a larger learning rate. G, clip range and dynamic sampling stay the paper's.
    "tiny": {
        # A label-smoothed tiny BC policy has flat token distributions (4.46 of 5.55 nats):
        # at the paper's 1.6 the 26 % Lift policy succeeds 6 % of the time, and GRPO at 1.0
        # moved the sampled policy but not the greedy one. At 0.5 online GRPO raised greedy
        # success too (26 -> 54 %), and WMPO did in one of two settings (docs/grpo.md).
        "temperature": 0.5,
        "groups_per_step": 4,
        "max_chunks": 12,
        "rollout_batch_size": 32,
        "learning_rate": 1e-4,
        "minibatch_trajectories": 16,
        "micro_batch_trajectories": 16,
        "iterations": 20,
        "checkpoint_every": 5,
    },
}
