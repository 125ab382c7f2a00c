"""Offline DPO on success / failure pairs of real rollouts: Table 1's "DPO" baseline.

Data: P real rollouts of the base policy in an episode store (real_rollouts.py),
labelled by the sim's success flag (the operator's label on a robot). Pairs:
(chosen = a success, rejected = a failure) of the same task; pairs from the same
initial state come first, then cross-state pairs up to `max_pairs` (with small P a
state rarely has both outcomes).

Objective (Rafailov et al. 2023, eq. 7), trajectory level, the base policy frozen
as the reference:

    log pi(tau) = sum over executed chunks c of log pi(a_c | o_c)     (chunk-level
                  log-prob = sum of its K x D token log-softmaxes, the policy's exact
                  log-prob API; a chunk cut short by success counts only its executed
                  actions)
    h           = beta * [(log pi(tau_w) - log ref(tau_w)) - (log pi(tau_l) - log ref(tau_l))]
    loss        = -log sigmoid(h), mean over pairs

Tokens are the stored actions re-encoded by the policy's action tokenizer (exact for
the policy's own rollouts, whose actions are bin centres; nearest bin for anything
else, e.g. ingested robot bags).

    wmpo train dpo --policy BC --data STORE --out DPO [--episodes ID ...]
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from offline_trainer.overrides import parse_field_overrides
from wmpo_core.errors import WmpoError


@dataclass
class DPOConfig:
    beta: float = 0.1
    """DPO temperature on the log-ratio margin (Rafailov et al.: 0.1)."""
    learning_rate: float = 2e-6
    """AdamW learning rate. Picked on validation seeds (200000+, never Table 1's), Lift,
    32 rollouts (docs/baselines.md): at the tiny GRPO preset's 1e-4, and at 1e-5, DPO drove
    the 26 % policy to 0 %; at 2e-6 it kept 5/30 against the base's 7/30."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    epochs: int = 2
    """Passes over the pairs (few: with small P the pairs share trajectories, and DPO
    overfits them quickly)."""
    pairs_per_step: int = 8
    """Pairs per optimizer step."""
    max_pairs: int = 256
    """Cap on pairs (same-state pairs are kept first, then random cross-state ones)."""
    cross_state_pairs: bool = True
    """Also pair a success with a failure from a different initial state of the task."""
    temperature: float = 1.0
    """Temperature of the log-probs (1 = the policy's own distribution)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip per step."""
    seed: int = 0
    """Pair sampling and shuffling."""
    nll_coef: float = 0.0
    """Weight of a negative log-likelihood term on the chosen trajectories, per executed
    token (Pang et al. 2024, "RPO"). 0 = plain DPO. Plain trajectory-level DPO can raise
    the margin by pushing the long failures' likelihood down, which also pushes down the
    ordinary approach actions they share with successes (session 7 measured the 26 % Lift
    policy at 0 % after it); the NLL term keeps the successes' actions likely."""

    def __post_init__(self) -> None:
        for name in ("epochs", "pairs_per_step", "max_pairs"):
            if int(getattr(self, name)) < 1:
                raise WmpoError(f"DPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("beta", "learning_rate", "temperature", "max_grad_norm"):
            if not float(getattr(self, name)) > 0:
                raise WmpoError(f"DPOConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "nll_coef"):
            if not float(getattr(self, name)) >= 0:
                raise WmpoError(f"DPOConfig.{name} must be >= 0, got {getattr(self, name)}")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """-log sigmoid(beta * (chosen log-ratio - rejected log-ratio)), mean over pairs [N]."""
    chosen_ratio = policy_chosen - ref_chosen.detach()
    rejected_ratio = policy_rejected - ref_rejected.detach()
    logits = beta * (chosen_ratio - rejected_ratio)
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "losses/dpo_loss": float(loss),
            "rewards/chosen": float(beta * chosen_ratio.mean()),
            "rewards/rejected": float(beta * rejected_ratio.mean()),
            "rewards/margin": float(logits.mean()),
            "rewards/accuracy": float((logits > 0).float().mean()),
        }
    return loss, metrics


@dataclass
class Trajectory:
    """One labelled episode as the policy's chunks."""

    episode_id: str
    seed: int | None
    success: bool
    images: torch.Tensor
    """uint8 [C, S, S, 3]: the frame each chunk was predicted from ([C, 2, S, S, 3] with the
    episode's first frame beside it, for a policy reading it)."""
    tokens: torch.Tensor
    """long [C, K, D]."""
    mask: torch.Tensor
    """bool [C, K]: actions actually executed (the last chunk may be cut by success)."""
    instruction: str


def trajectory_from_episode(episode: Any, processor: Any, config: Any) -> Trajectory:
    """A store episode -> chunks at multiples of K (open-loop execution, as recorded)."""
    from wmpo_core.policy.processing_policy import prepare_image

    k = int(config.chunk_size)
    meta = episode.meta
    steps = int(meta.extra.get("executed_steps", meta.n_frames))
    if steps < 1:
        raise WmpoError(f"episode {meta.id}: no executed actions")
    actions = np.asarray(episode.actions[:steps], dtype=np.float32)
    n_chunks = -(-steps // k)
    padded = np.concatenate([actions, np.repeat(actions[-1:], n_chunks * k - steps, axis=0)])
    tokens = torch.from_numpy(processor.tokenizer.encode(padded)).view(n_chunks, k, -1)
    mask = (torch.arange(n_chunks * k) < steps).view(n_chunks, k)
    frames = np.stack(
        [
            prepare_image(np.asarray(episode.frames[c * k]), config.image_size)
            for c in range(n_chunks)
        ]
    )
    if config.reads_episode_start:  # each chunk's frame beside the episode's first
        frames = np.stack([frames, np.broadcast_to(frames[:1], frames.shape)], axis=1)
    return Trajectory(
        meta.id, meta.seed, bool(meta.success), torch.from_numpy(frames), tokens, mask,
        meta.instruction,
    )  # fmt: skip


def trajectory_logprob(policy: Any, traj: Trajectory, temperature: float) -> torch.Tensor:
    """log pi(tau): sum of the executed actions' token log-probs (differentiable), scalar."""
    from wmpo_core.policy.modeling_policy import token_log_probs

    logits = policy.token_logits(traj.images, [traj.instruction] * len(traj.images))
    logp = token_log_probs(logits, traj.tokens.to(logits.device), temperature)  # [C, K, D]
    return (logp.sum(dim=-1) * traj.mask.to(logp.device)).sum()


def chosen_nll(chosen: Sequence[tuple[torch.Tensor, Trajectory]]) -> torch.Tensor:
    """Mean over pairs of -log pi(tau_w) / (its executed tokens): a per-token NLL, so a long
    success weighs no more than a short one."""
    per_token = [-lp / (traj.mask.sum() * traj.tokens.shape[-1]) for lp, traj in chosen]
    return torch.stack(per_token).mean()


def make_pairs(trajectories: Sequence[Trajectory], config: DPOConfig) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs: same-state pairs first, then cross-state ones."""
    wins = [i for i, t in enumerate(trajectories) if t.success]
    losses = [i for i, t in enumerate(trajectories) if not t.success]
    every = list(itertools.product(wins, losses))
    same = [(w, lo) for w, lo in every if trajectories[w].seed == trajectories[lo].seed]
    same_set = set(same)
    cross = [p for p in every if p not in same_set] if config.cross_state_pairs else []
    rng = random.Random(config.seed)
    rng.shuffle(same)
    rng.shuffle(cross)
    return (same + cross)[: config.max_pairs]


def train_dpo(
    policy: Any,
    reference: Any,
    trajectories: Sequence[Trajectory],
    config: DPOConfig,
    log=print,
) -> list[dict[str, float]]:
    """Optimise `policy` (a VLAGRPOPolicy) in place; `reference` is frozen. Returns metric rows."""
    pairs = make_pairs(trajectories, config)
    if not pairs:
        n_ok = sum(t.success for t in trajectories)
        raise WmpoError(
            f"DPO needs at least one success and one failure; got {n_ok} successes in "
            f"{len(trajectories)} rollouts (collect more rollouts or raise the temperature)"
        )
    reference.eval()
    reference.requires_grad_(False)
    with torch.no_grad():
        ref = torch.stack(
            [trajectory_logprob(reference, t, config.temperature) for t in trajectories]
        )
    policy.eval()  # no dropout: before the first step pi == ref exactly
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    rows = []
    for epoch in range(config.epochs):
        first = len(rows)
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for start in range(0, len(order), config.pairs_per_step):
            chunk = [pairs[i] for i in order[start : start + config.pairs_per_step]]
            opt.zero_grad(set_to_none=True)
            # Each trajectory in the step is forwarded once, however many pairs share it.
            used = sorted({i for pair in chunk for i in pair})
            logp = {
                i: trajectory_logprob(policy, trajectories[i], config.temperature) for i in used
            }
            device = next(iter(logp.values())).device
            w = torch.tensor([c for c, _ in chunk])
            lo = torch.tensor([r for _, r in chunk])
            loss, metrics = dpo_loss(
                torch.stack([logp[c] for c, _ in chunk]),
                torch.stack([logp[r] for _, r in chunk]),
                ref[w].to(device),
                ref[lo].to(device),
                config.beta,
            )
            if config.nll_coef > 0:
                nll = chosen_nll([(logp[c], trajectories[c]) for c, _ in chunk])
                loss = loss + config.nll_coef * nll
                metrics["losses/chosen_nll"] = float(nll.detach())
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            rows.append({**metrics, "losses/grad_norm": float(norm), "epoch": float(epoch + 1)})
        epoch_rows = rows[first:]
        log(
            f"dpo epoch {epoch + 1}/{config.epochs}: "
            f"loss {np.mean([r['losses/dpo_loss'] for r in epoch_rows]):.4f}, "
            f"accuracy {np.mean([r['rewards/accuracy'] for r in epoch_rows]):.2f}, "
            f"{len(pairs)} pairs"
        )
    return rows


def load_trajectories(
    store_root: str | Path, processor: Any, config: Any, episode_ids: Sequence[str] | None
) -> list[Trajectory]:
    from wmpo_core.store import EpisodeStore

    store = EpisodeStore(store_root)
    ids = list(episode_ids) if episode_ids else store.ids()
    out = []
    for episode_id in ids:
        episode = store.load(episode_id)
        if episode.meta.success is None:
            continue  # unlabelled: no preference
        if episode.meta.taken_over:
            continue  # an expert finished it: its actions and outcome are not the policy's
        out.append(trajectory_from_episode(episode, processor, config))
    return out


# -- CLI ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", required=True, help="base policy checkpoint (and reference)")
    parser.add_argument("--data", required=True, help="episode store of labelled rollouts")
    parser.add_argument("--out", required=True, help="policy checkpoint directory to write")
    parser.add_argument("--episodes", nargs="*", default=None, help="only these episode ids")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override DPOConfig fields"
    )
    parser.add_argument("--threads", type=int, default=1)


def config_from_sets(items: Sequence[str]) -> DPOConfig:
    return DPOConfig(**parse_field_overrides(items, DPOConfig))


def run(args: argparse.Namespace) -> int:
    from offline_trainer.real_rollouts import load_vla

    torch.set_num_threads(args.threads)
    config = config_from_sets(args.set)
    torch.manual_seed(config.seed)
    policy, version = load_vla(args.policy)
    reference, _ = load_vla(args.policy)
    trajectories = load_trajectories(args.data, policy.processor, policy.config, args.episodes)
    t0 = time.monotonic()
    rows = train_dpo(policy, reference, trajectories, config)
    last = rows[-1]
    fields = {
        "trainer": "dpo",
        "baseline": "dpo",
        "dpo": asdict(config),
        "data_store": str(Path(args.data).resolve()),
        "rollouts": [t.episode_id for t in trajectories],
        "metrics": {k: v for k, v in last.items() if np.isfinite(v)},
    }
    path = policy.save(Path(args.out), fields, parent=str(Path(args.policy).resolve()))
    n_ok = sum(t.success for t in trajectories)
    print(
        f"dpo: {len(trajectories)} rollouts ({n_ok} successes) of {version}, "
        f"{len(rows)} steps in {time.monotonic() - t0:.0f} s; policy -> {path}"
    )
    return 0
