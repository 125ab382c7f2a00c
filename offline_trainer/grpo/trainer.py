"""The GRPO training loop in imagination (WMPO): rollouts, dynamic sampling, one PPO epoch.

One iteration:
  1. draw initial real frames, imagine G rollouts from each (rollout.imagine_rollouts);
  2. keep groups whose success rate is in [low, high]; draw more until `groups_per_step`
     groups are kept or `max_sampling_rounds` is reached;
  3. per-group advantages, then `ppo_epochs` passes of mini-batch PPO-clip updates with
     gradient clipping;
  4. log metrics (one JSON line per iteration) and, every `checkpoint_every`, write a
     resumable state (safetensors + JSON, published by atomic rename; never pickle).

The world and reward models are frozen (eval mode, requires_grad False), checked every
iteration. The global torch RNG is re-seeded from (seed, iteration) at the start of each
iteration, so a run resumed from iteration k continues exactly like the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from offline_trainer.grpo.config import GRPOConfig
from offline_trainer.grpo.objective import (
    compute_advantages,
    compute_loss,
    dynamic_sampling_mask,
    group_success_rates,
    token_logprobs,
)
from offline_trainer.grpo.rollout import (
    Imagination,
    RolloutBatch,
    SuccessDetector,
    TrainablePolicy,
    imagine_rollouts,
)
from wmpo_core.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from wmpo_core.errors import CheckpointError, WmpoError
from wmpo_core.fileio import atomic_write_json

STATE_KIND = "grpo-state"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest.json"
METRICS = "metrics.jsonl"
POLICY_DIR = "policy"
# Fields that may differ between a run and its resumption (they do not change the maths).
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "keep_checkpoints", "notes"}


class InitialStates(Protocol):
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """n real initial frames uint8 [n, H, W, 3] and their instructions."""
        ...


class StoreInitialStates:
    """Initial states = the first frame of each episode of an episode store."""

    def __init__(self, store: Any, episode_ids: Sequence[str] | None = None):
        ids = list(episode_ids) if episode_ids is not None else store.ids()
        if not ids:
            raise WmpoError(
                f"{store.root}: no episodes to draw initial states from; record or collect some first"
            )
        frames, instructions = [], []
        for episode_id in ids:
            episode = store.load(episode_id)
            frames.append(np.array(episode.frames[0]))
            instructions.append(episode.meta.instruction)
        shapes = {f.shape for f in frames}
        if len(shapes) != 1:
            raise WmpoError(f"{store.root}: first frames have different shapes {sorted(shapes)}")
        self.episode_ids = ids
        self.frames = torch.from_numpy(np.stack(frames))
        self.instructions = instructions
        # Rollouts repeated from one reset share a byte-identical first frame.
        self.distinct = len({(f.tobytes(), s) for f, s in zip(frames, instructions, strict=True)})

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        # Without replacement while possible, so one iteration sees distinct initial states.
        count = len(self.instructions)
        idx = torch.cat(
            [torch.randperm(count, generator=generator) for _ in range(-(-n // count))]
        )[:n]
        return self.frames[idx], [self.instructions[i] for i in idx.tolist()]


def modules_of(obj: Any) -> list[torch.nn.Module]:
    """The nn.Modules inside a model wrapper: itself, or its direct attributes."""
    if isinstance(obj, torch.nn.Module):
        return [obj]
    return (
        [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)]
        if hasattr(obj, "__dict__")
        else []
    )


def freeze(modules: Iterable[torch.nn.Module]) -> None:
    for module in modules:
        module.eval()
        module.requires_grad_(False)


def assert_frozen(modules: Iterable[torch.nn.Module], what: str) -> None:
    for module in modules:
        trainable = [n for n, p in module.named_parameters() if p.requires_grad]
        training = [n or type(module).__name__ for n, m in module.named_modules() if m.training]
        if trainable or training:
            raise WmpoError(
                f"{what} must stay frozen during GRPO, but parameters {trainable[:3]} require grad "
                f"/ modules {training[:3]} are in train mode; something unfroze it"
            )


def iteration_seed(seed: int, iteration: int) -> int:
    return (seed * 1_000_003 + iteration * 7_919) % (2**63 - 1)


# Warn when at least this fraction of an iteration's groups were all-failure.
ALL_FAILURE_HINT = 0.8


class GRPOTrainer:
    def __init__(
        self,
        config: GRPOConfig,
        policy: TrainablePolicy,
        imagination: Imagination,
        reward: SuccessDetector,
        initial_states: InitialStates,
        out_dir: str | Path,
        *,
        reference: TrainablePolicy | None = None,
        frozen_modules: Sequence[torch.nn.Module] | None = None,
        policy_config: dict[str, Any] | None = None,
        manifest_fields: dict[str, Any] | None = None,
        export_fn: Callable[[Path, dict[str, Any]], Path] | None = None,
        log: Callable[[str], None] | None = print,
    ):
        if config.kl_coef > 0 and reference is None:
            raise WmpoError("GRPOConfig.kl_coef > 0 needs a reference policy; pass reference=...")
        self.config = config
        self.policy = policy
        self.imagination = imagination
        self.reward = reward
        self.initial_states = initial_states
        self.reference = reference
        self.out_dir = Path(out_dir)
        self.log = log or (lambda _msg: None)
        self.policy_config = policy_config
        self.manifest_fields = manifest_fields or {}
        self.export_fn = export_fn
        self.frozen = (
            list(frozen_modules)
            if frozen_modules is not None
            else (modules_of(imagination) + modules_of(reward) + modules_of(reference))
        )
        freeze(self.frozen)
        # Dropout off while training too: the first update must see ratio == 1 exactly.
        policy.eval()
        self.params = [p for p in policy.parameters() if p.requires_grad]
        if not self.params:
            raise WmpoError("the policy has no trainable parameters (all requires_grad False)")
        frozen_ids = {id(p) for m in self.frozen for p in m.parameters()}
        if any(id(p) in frozen_ids for p in self.params):
            raise WmpoError("the policy shares parameters with the frozen world/reward model")
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=config.learning_rate,
            betas=config.adam_betas,
            weight_decay=config.weight_decay,
        )
        self.iteration = 0  # iterations completed

    # -- the loop -------------------------------------------------------------
    def train(
        self, callbacks: Sequence[Callable[[int, dict[str, float]], None]] = ()
    ) -> list[dict[str, float]]:
        """Run (or resume) until `config.iterations`; returns this call's metrics rows."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.resume()
        rows = []
        while self.iteration < self.config.iterations:
            row = self.step()
            rows.append(row)
            last = self.iteration == self.config.iterations
            if self.iteration % self.config.checkpoint_every == 0 or last:
                self.save_state()
            for callback in callbacks:
                callback(self.iteration, row)
        self.export_policy(self.out_dir / POLICY_DIR, rows[-1] if rows else {})
        return rows

    def step(self) -> dict[str, float]:
        """One iteration: collect, update, log. Increments `self.iteration`."""
        cfg = self.config
        it = self.iteration + 1
        seed = iteration_seed(cfg.seed, it)
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        assert_frozen(self.frozen, "the world / reward model")
        t0 = time.perf_counter()
        batch, row = self.collect(generator)
        t1 = time.perf_counter()
        if batch is not None:
            advantages = compute_advantages(
                batch.rewards.view(-1, cfg.group_size), cfg.advantage_eps
            ).view(-1)
            row.update(self.update(batch, advantages, generator))
        else:
            row["train/skipped"] = 1.0
        assert_frozen(self.frozen, "the world / reward model")
        row.update(
            {
                "iteration": float(it),
                "time/rollout_s": t1 - t0,
                "time/update_s": time.perf_counter() - t1,
            }
        )
        self.iteration = it
        self._append_metrics(row)
        self.log(
            f"grpo it {it}/{cfg.iterations}: success {row['rollout/success_rate']:.3f}, "
            f"kept {int(row['groups/kept'])}/{int(row['groups/drawn'])} groups, "
            f"clip {row.get('losses/clip_frac', 0.0):.3f}"
        )
        if row.get("groups/frac_all_failure", 0.0) >= ALL_FAILURE_HINT:
            # Measured on Lift (docs/benchmarks.md): a label-smoothed tiny BC policy that
            # succeeds 31 % of the time at T = 1.0 succeeds 6 % at the paper's 1.6.
            self.log(
                f"grpo: {100 * row['groups/frac_all_failure']:.0f} % of groups never succeeded "
                f"at temperature {cfg.temperature:g}; a tiny BC policy may need a lower one "
                "(--set temperature=0.5, the tiny preset's), or the reward model misses "
                "imagined successes"
            )
        return row

    def collect(self, generator: torch.Generator) -> tuple[RolloutBatch | None, dict[str, float]]:
        """Rollouts with dynamic sampling; returns kept trajectories (groups contiguous)."""
        cfg = self.config
        g = cfg.group_size
        kept: list[RolloutBatch] = []
        n_kept = drawn = rounds = 0
        successes, lengths, all_s, all_f = [], [], 0, 0
        while n_kept < cfg.groups_per_step and rounds < cfg.max_sampling_rounds:
            need = cfg.groups_per_step - n_kept
            frames, instructions = self.initial_states.sample(need, generator)
            frames = frames.repeat_interleave(g, dim=0)
            instructions = [s for s in instructions for _ in range(g)]
            parts = [
                imagine_rollouts(
                    self.policy,
                    self.imagination,
                    self.reward,
                    frames[i : i + cfg.rollout_batch_size],
                    instructions[i : i + cfg.rollout_batch_size],
                    max_chunks=cfg.max_chunks,
                    temperature=cfg.temperature,
                )
                for i in range(0, len(instructions), cfg.rollout_batch_size)
            ]
            batch = RolloutBatch.concat(parts)
            rates = group_success_rates(batch.success.view(need, g))
            keep = dynamic_sampling_mask(rates, cfg.success_rate_low, cfg.success_rate_high)
            successes.append(batch.success.float())
            lengths.append(batch.lengths.float())
            all_s += int((rates == 1.0).sum())
            all_f += int((rates == 0.0).sum())
            drawn += need
            rounds += 1
            n_kept += int(keep.sum())
            if keep.any():
                index = torch.arange(need * g).view(need, g)[keep].reshape(-1)
                kept.append(batch.select(index))
        success = torch.cat(successes)
        length = torch.cat(lengths)
        row = {
            "rollout/success_rate": float(success.mean()),
            "rollout/mean_length": float(length.mean()),
            "rollout/mean_success_length": float(length[success > 0].mean())
            if bool((success > 0).any())
            else float("nan"),
            "groups/drawn": float(drawn),
            "groups/kept": float(n_kept),
            "groups/frac_dropped": 1.0 - n_kept / drawn,
            "groups/frac_all_success": all_s / drawn,
            "groups/frac_all_failure": all_f / drawn,
            "groups/sampling_rounds": float(rounds),
        }
        return (RolloutBatch.concat(kept) if kept else None), row

    def _logprobs(
        self, policy: TrainablePolicy, sub: RolloutBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recompute token log-probs / entropies for the executed chunks: [n, T*K*D] each."""
        n, t = sub.chunk_mask.shape
        valid = sub.chunk_mask.nonzero(as_tuple=True)
        images = sub.observations[valid]
        instructions = [sub.instructions[i] for i in valid[0].tolist()]
        logits = policy.token_logits(images, instructions)
        dev = logits.device  # rollouts live on the CPU, the policy may not
        valid = tuple(v.to(dev) for v in valid)
        tokens = sub.tokens.to(dev)[valid]
        if tuple(logits.shape[:-1]) != tuple(tokens.shape):
            raise WmpoError(
                f"policy.token_logits returned {tuple(logits.shape)}, expected "
                f"[M, K, D, V] with [M, K, D] = {tuple(tokens.shape)}"
            )
        logp, entropy = token_logprobs(logits, tokens, self.config.temperature)
        out_logp = logp.new_zeros(sub.tokens.shape).index_put(valid, logp)  # padding: 0
        out_ent = entropy.new_zeros(sub.tokens.shape).index_put(valid, entropy)
        return out_logp.reshape(n, -1), out_ent.reshape(n, -1)

    def update(
        self, batch: RolloutBatch, advantages: torch.Tensor, generator: torch.Generator
    ) -> dict[str, float]:
        cfg = self.config
        n = batch.n
        sums: dict[str, float] = {}
        tokens_total = 0
        grad_norms = []
        first_diff = None
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for mb in order.split(cfg.minibatch_trajectories):
                self.optimizer.zero_grad(set_to_none=True)
                for micro in mb.split(cfg.micro_batch_trajectories):
                    sub = batch.select(micro)
                    logp, entropy = self._logprobs(self.policy, sub)
                    dev = logp.device
                    mask = sub.chunk_mask[:, :, None, None].expand(sub.tokens.shape)
                    mask = mask.reshape(len(micro), -1).to(dev)
                    old = sub.logprobs.reshape(len(micro), -1).to(dev)
                    if first_diff is None:  # nothing updated yet: must match the rollout
                        first_diff = float((logp.detach() - old).abs()[mask].max())
                    ref = None
                    if cfg.kl_coef > 0:
                        with torch.no_grad():
                            ref, _ = self._logprobs(self.reference, sub)
                    out = compute_loss(
                        logp,
                        old,
                        advantages[micro].to(dev),
                        mask,
                        clip_eps_low=cfg.clip_eps_low,
                        clip_eps_high=cfg.clip_eps_high,
                        ref_logp=ref,
                        kl_coef=cfg.kl_coef,
                        entropy=entropy,
                        entropy_coef=cfg.entropy_coef,
                    )
                    # Mean over the mini-batch's trajectories = weighted sum of micro means.
                    (out.loss * (len(micro) / len(mb))).backward()
                    for key, value in out.metrics.items():
                        sums[key] = sums.get(key, 0.0) + value * out.n_tokens
                    tokens_total += out.n_tokens
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                grad_norms.append(float(norm))
                self.optimizer.step()
        row = {key: value / max(tokens_total, 1) for key, value in sums.items()}
        row.update(
            {
                "losses/grad_norm": float(np.mean(grad_norms)),
                "train/optimizer_steps": float(len(grad_norms)),
                "train/trajectories": float(n),
                "train/tokens": float(tokens_total),
                "train/advantage_abs_mean": float(advantages.abs().mean()),
                "debug/first_logprob_max_abs_diff": float(first_diff or 0.0),
            }
        )
        return row

    # -- persistence ----------------------------------------------------------
    def _append_metrics(self, row: dict[str, float]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / METRICS, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")

    def save_state(self) -> Path:
        """Publish a resumable state for the iterations completed so far."""
        ckpt_root = self.out_dir / CHECKPOINTS_DIR
        name = f"iter-{self.iteration:06d}"
        tensors = {f"policy.{k}": v.detach().clone() for k, v in self.policy.state_dict().items()}
        opt_tensors, opt_meta = _flatten_optimizer(self.optimizer.state_dict())
        tensors.update(opt_tensors)
        path = save_checkpoint(
            ckpt_root / name,
            kind=STATE_KIND,
            config=self.config.to_dict(),
            state_dict=tensors,
            extras={"trainer_state": {"iteration": self.iteration}, "optimizer": opt_meta},
            overwrite=True,
        )
        atomic_write_json(ckpt_root / LATEST, {"iteration": self.iteration, "path": name})
        states = sorted(p for p in ckpt_root.glob("iter-*") if p.is_dir())
        for old in states[: -self.config.keep_checkpoints]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def resume(self) -> bool:
        """Load the latest resumable state in out_dir, if any. Returns whether it did."""
        latest = self.out_dir / CHECKPOINTS_DIR / LATEST
        if not latest.is_file():
            return False
        pointer = json.loads(latest.read_text())
        path = self.out_dir / CHECKPOINTS_DIR / pointer["path"]
        ckpt = load_checkpoint(path, kind=STATE_KIND)
        saved = GRPOConfig.from_dict(ckpt.config).to_dict()
        current = self.config.to_dict()
        changed = sorted(
            k for k in current if current[k] != saved[k] and k not in RESUMABLE_CHANGES
        )
        if changed:
            raise CheckpointError(
                f"{path}: was trained with different GRPO settings {changed} "
                f"(saved { {k: saved[k] for k in changed} }); resume with the same settings or "
                "use a fresh --out directory"
            )
        policy_state = {k[7:]: v for k, v in ckpt.state_dict.items() if k.startswith("policy.")}
        load_state_strict(self.policy, policy_state, str(path))
        opt_state = _unflatten_optimizer(
            {k: v for k, v in ckpt.state_dict.items() if k.startswith("optim.")},
            ckpt.extras["optimizer"],
        )
        self.optimizer.load_state_dict(opt_state)
        self.iteration = int(ckpt.extras["trainer_state"]["iteration"])
        self._truncate_metrics(self.iteration)
        self.log(f"grpo: resumed from {path} after iteration {self.iteration}")
        return True

    def _truncate_metrics(self, iteration: int) -> None:
        """Drop metric rows of iterations after the resumed one (they will be redone)."""
        path = self.out_dir / METRICS
        if not path.is_file():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        keep = [line for line in rows if json.loads(line).get("iteration", 0) <= iteration]
        atomic_write_json_lines(path, keep)

    def export_policy(self, path: Path, metrics: dict[str, float]) -> Path:
        """The trained policy as a verified checkpoint (kind 'policy').

        `export_fn(path, manifest_fields)` writes it when given (the real VLA needs its
        normalization stats beside the weights); otherwise a plain checkpoint is written."""
        clean = {k: v for k, v in metrics.items() if isinstance(v, float) and np.isfinite(v)}
        fields = {
            "trainer": "grpo",
            "grpo": self.config.to_dict(),
            "iterations": self.iteration,
            "metrics": clean,
            **self.manifest_fields,
        }
        if self.export_fn is not None:
            return self.export_fn(path, fields)
        config = self.policy_config
        if config is None:
            policy_cfg = getattr(self.policy, "config", None)
            config = dataclasses.asdict(policy_cfg) if dataclasses.is_dataclass(policy_cfg) else {}
        return save_checkpoint(
            path,
            kind="policy",
            config=config,
            state_dict={k: v.detach().clone() for k, v in self.policy.state_dict().items()},
            manifest_fields=fields,
            overwrite=True,
        )


def atomic_write_json_lines(path: Path, lines: list[str]) -> None:
    from wmpo_core.fileio import atomic_write_bytes

    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode())


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state -> safetensors-able tensors + JSON (no pickle)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        per_param.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        per_param.setdefault(int(index), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": per_param, "param_groups": groups}
