"""Online GRPO in the real (embedded) sim: Table 1's "GRPO" baseline.

The same objective, config and update as `offline_trainer.grpo` (GRPOConfig,
compute_advantages, dynamic sampling, compute_loss, one PPO epoch: the update is
`GRPOTrainer.update`, inherited, not copied). Only the rollouts differ: each of
the G rollouts of a group is a *real* SimArm episode from the same initial state
(the same seed), run until the sim's success flag or the horizon, and every one
of them is paid from the real budget P (real_rollouts.RealBudget), dropped groups
included: on a robot a rollout costs the same whatever its group did. The run
stops when P cannot pay for one more group of G (a remainder < G stays unspent).

Reward = the sim's success flag, standing in for the operator's label on a robot.

    wmpo train grpo-online --policy BC --task Lift --budget 128 --out RUN
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from offline_trainer.grpo.config import PRESETS, GRPOConfig
from offline_trainer.grpo.objective import dynamic_sampling_mask, group_success_rates
from offline_trainer.grpo.rollout import RolloutBatch
from offline_trainer.grpo.trainer import METRICS, POLICY_DIR, GRPOTrainer
from offline_trainer.real_rollouts import (
    ROLLOUT_SEED_START,
    RealBudget,
    RealRollout,
    SampledChunkPolicy,
    collect_real_rollouts,
)
from wmpo_core.errors import WmpoError


@dataclass
class OnlineRunConfig:
    task: str
    """Sim task the policy is trained on (Lift | Stack | NutAssemblySquare)."""
    budget: int
    """P: real episodes the whole run may use (every group member counts)."""
    seed_start: int = ROLLOUT_SEED_START + 20_000
    """Initial state of the n-th group drawn = seed_start + n (fresh states, below the
    evaluation seeds; offset from the base-policy rollouts DPO / WMPO use)."""
    horizon: int | None = None
    """Real episode step limit (None: the task's, as in evaluation)."""

    def __post_init__(self) -> None:
        if self.budget < 0:
            raise WmpoError(f"OnlineRunConfig.budget must be >= 0, got {self.budget}")
        if self.horizon is not None and self.horizon < 1:
            raise WmpoError(f"OnlineRunConfig.horizon must be >= 1, got {self.horizon}")


def rollouts_to_batch(rollouts: Sequence[RealRollout]) -> RolloutBatch:
    """Real episodes -> the RolloutBatch the GRPO update consumes (chunks padded)."""
    t = max(len(r.tokens) for r in rollouts)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.new_zeros((t - len(x), *x.shape[1:]))]) if len(x) < t else x

    return RolloutBatch(
        observations=torch.stack([pad(torch.from_numpy(r.chunk_images)) for r in rollouts]),
        tokens=torch.stack([pad(r.tokens) for r in rollouts]),
        logprobs=torch.stack([pad(r.logprobs) for r in rollouts]),
        chunk_mask=torch.stack(
            [torch.arange(t) < len(r.tokens) for r in rollouts]  # every sampled chunk ran
        ),
        success=torch.tensor([r.success for r in rollouts]),
        end_frame=torch.tensor([r.length for r in rollouts]),
        instructions=[r.instruction for r in rollouts],
    )


class OnlineGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose `collect` runs real sim episodes under a budget."""

    def __init__(
        self,
        config: GRPOConfig,
        policy: Any,
        arm: Any,
        run: OnlineRunConfig,
        out_dir: str | Path,
        parent: str = "",
        **kwargs: Any,
    ):
        if config.temperature <= 0:
            raise WmpoError("online GRPO samples its rollouts: GRPOConfig.temperature must be > 0")
        if kwargs.get("export_fn") is None and hasattr(policy, "save"):
            # The VLA's own checkpoint format (normalization stats included), via the policy
            # package's save_policy_checkpoint.
            kwargs["export_fn"] = lambda path, fields: policy.save(path, fields, parent)
        kwargs.setdefault("manifest_fields", {"baseline": "grpo-online", "real_budget": run.budget})
        super().__init__(config, policy, None, None, None, out_dir, frozen_modules=[], **kwargs)
        from wmpo_core.sim.tasks import task_spec

        self.arm = arm
        self.run_config = run
        self.budget = RealBudget(run.budget)
        self.groups_drawn = 0
        self.instruction = task_spec(run.task).instruction
        self.sampler = SampledChunkPolicy(policy, config.temperature)

    def can_continue(self) -> bool:
        return (
            self.iteration < self.config.iterations
            and self.budget.remaining >= self.config.group_size
        )

    def train(
        self, callbacks: Sequence[Callable[[int, dict[str, float]], None]] = ()
    ) -> list[dict[str, float]]:
        """Iterate until `config.iterations` or until P cannot pay for another group."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        rows = []
        while self.can_continue():
            rows.append(self.step())
            if self.iteration % self.config.checkpoint_every == 0 or not self.can_continue():
                self.save_state()
            for callback in callbacks:
                callback(self.iteration, rows[-1])
        self.export_policy(self.out_dir / POLICY_DIR, rows[-1] if rows else {})
        return rows

    def collect(self, generator: torch.Generator) -> tuple[RolloutBatch | None, dict[str, float]]:
        cfg = self.config
        g = cfg.group_size
        kept: list[RolloutBatch] = []
        everything: list[RealRollout] = []
        n_kept = drawn = rounds = all_s = all_f = 0
        spent_before = self.budget.used
        while (
            n_kept < cfg.groups_per_step
            and rounds < cfg.max_sampling_rounds
            and self.budget.remaining >= g
        ):
            need = min(cfg.groups_per_step - n_kept, self.budget.remaining // g)
            seeds = [self.run_config.seed_start + self.groups_drawn + i for i in range(need)]
            self.groups_drawn += need
            rollouts = collect_real_rollouts(
                self.arm,
                self.sampler,
                [s for s in seeds for _ in range(g)],
                self.budget,
                self.instruction,
            )
            everything += rollouts
            batch = rollouts_to_batch(rollouts)
            rates = group_success_rates(batch.success.view(need, g))
            keep = dynamic_sampling_mask(rates, cfg.success_rate_low, cfg.success_rate_high)
            all_s += int((rates == 1.0).sum())
            all_f += int((rates == 0.0).sum())
            drawn += need
            rounds += 1
            n_kept += int(keep.sum())
            if keep.any():
                kept.append(batch.select(torch.arange(need * g).view(need, g)[keep].reshape(-1)))
        success = torch.tensor([r.success for r in everything], dtype=torch.float)
        chunks = torch.tensor([len(r.tokens) for r in everything], dtype=torch.float)
        steps = torch.tensor([r.length for r in everything], dtype=torch.float)
        row = {
            "rollout/success_rate": float(success.mean()),
            "rollout/mean_length": float(chunks.mean()),
            "rollout/mean_success_length": float(chunks[success > 0].mean())
            if bool((success > 0).any())
            else float("nan"),
            "rollout/mean_steps": float(steps.mean()),
            "rollout/real_episodes": float(self.budget.used - spent_before),
            "budget/real_episodes_used": float(self.budget.used),
            "budget/real_episodes_total": float(self.budget.total),
            "groups/drawn": float(drawn),
            "groups/kept": float(n_kept),
            "groups/frac_dropped": 1.0 - n_kept / max(drawn, 1),
            "groups/frac_all_success": all_s / max(drawn, 1),
            "groups/frac_all_failure": all_f / max(drawn, 1),
            "groups/sampling_rounds": float(rounds),
        }
        return (RolloutBatch.concat(kept) if kept else None), row

    def resume(self) -> bool:
        """Resume the policy/optimizer, then the spent budget and seed counter from metrics."""
        resumed = super().resume()
        path = self.out_dir / METRICS
        if resumed and path.is_file():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            self.budget.used = int(sum(r.get("rollout/real_episodes", 0.0) for r in rows))
            self.groups_drawn = int(sum(r.get("groups/drawn", 0.0) for r in rows))
        return resumed


# -- CLI ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="policy checkpoint to start from")
    parser.add_argument("--task", required=True, help="Lift | Stack | NutAssemblySquare")
    parser.add_argument("--budget", type=int, required=True, help="P: real episodes in all")
    parser.add_argument("--out", required=True, help="run directory (re-run to resume)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument(
        "--iterations",
        type=int,
        default=10_000,
        help="iteration cap (default: run until the budget is spent)",
    )
    parser.add_argument("--seed", type=int, default=None, help="override GRPOConfig.seed")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override GRPOConfig fields"
    )
    parser.add_argument("--seed-start", type=int, default=OnlineRunConfig.seed_start)
    parser.add_argument("--horizon", type=int, default=None, help="step limit (default: task's)")
    parser.add_argument("--image-size", type=int, default=None, help="camera size (policy's)")
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> int:
    from offline_trainer.grpo.cli import config_from_args
    from offline_trainer.real_rollouts import load_vla, open_arm

    torch.set_num_threads(args.threads)
    config = config_from_args(args)
    run_cfg = OnlineRunConfig(
        task=args.task, budget=args.budget, seed_start=args.seed_start, horizon=args.horizon
    )
    policy, _ = load_vla(args.policy)
    parent = str(Path(args.policy).resolve())
    config.notes.update({"policy": parent, "online": True, "task": args.task})
    with open_arm(args.task, args.image_size or policy.config.image_size, args.horizon) as arm:
        trainer = OnlineGRPOTrainer(
            config,
            policy,
            arm,
            run_cfg,
            args.out,
            parent=parent,
        )
        trainer.train()
    print(
        f"grpo-online: {trainer.iteration} iterations, {trainer.budget.used}/{args.budget} real "
        f"episodes; policy -> {Path(args.out) / POLICY_DIR}"
    )
    return 0
