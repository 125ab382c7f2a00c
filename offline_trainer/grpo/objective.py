"""The GRPO objective, top to bottom (docs/grpo.md puts each line beside its equation).

Shapes: N trajectories, L token slots per trajectory (chunks x K actions x D dims,
padded), `mask` [N, L] marks the real tokens. Rewards are per trajectory (success
at the end, 0/1), so one advantage is broadcast to every token of a trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def compute_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """A_i = (R_i - mean(R_group)) / (std(R_group) + eps) for rewards [n_groups, G].

    std is the unbiased (n - 1) estimate, as torch.std and the authors' GRPO code use.
    A group where every rollout got the same reward gets A = 0 everywhere.
    """
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [n_groups, G >= 2], got {tuple(rewards.shape)}")
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def group_success_rates(success: torch.Tensor) -> torch.Tensor:
    """Fraction of successful rollouts per group, success bool/float [n_groups, G]."""
    return success.float().mean(dim=1)


def dynamic_sampling_mask(success_rate: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Keep groups whose success rate lies in [low, high] (both ends included).

    Groups of all-successes or all-failures have zero advantage: they add no gradient,
    only dilute the token mean, so DAPO / WMPO drop them and draw more.
    """
    tol = 1e-9  # 1/10 == 0.1 must count as inside [0.1, 0.9]
    return (success_rate >= low - tol) & (success_rate <= high + tol)


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each sampled token and the entropy of its distribution, at `temperature`.

    logits [..., V], tokens [...] (long). The PPO ratio uses the same temperature as the
    rollout sampler, so an un-updated policy reproduces the rollout's log-probs exactly.
    """
    logp_all = F.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1)
    return logp, entropy


@dataclass
class LossOutput:
    loss: torch.Tensor
    """Scalar to minimise: mean over trajectories of the per-trajectory token mean."""
    metrics: dict[str, float]
    """Namespaced diagnostics over the real tokens (losses/...)."""
    n_tokens: int
    """Real tokens the metrics average over (to combine micro-batches)."""


def masked_mean_per_row(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the masked entries of each row: [N, L] -> [N]."""
    m = mask.to(x.dtype)
    return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def compute_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.28,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossOutput:
    """PPO-clip with an asymmetric range, token-mean per trajectory, mean over trajectories.

    logp, old_logp, mask, ref_logp, entropy: [N, L]; advantages: [N].
        r_t     = exp(logp_t - old_logp_t)
        l_t     = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A)
        L_i     = mean_t l_t            (+ kl_coef * k3_t - entropy_coef * H_t, same mean)
        loss    = mean_i L_i
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or logp.ndim != 2:
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)}, mask {tuple(mask.shape)} "
            "must all be [N, L]"
        )
    if advantages.shape != (logp.shape[0],):
        raise ValueError(f"advantages must be [N={logp.shape[0]}], got {tuple(advantages.shape)}")
    mask = mask.bool()
    adv = advantages.float().unsqueeze(1)
    old_logp = old_logp.detach()
    # Masked slots may hold padding: zero their log-ratio so exp() cannot overflow.
    log_ratio = torch.where(mask, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp (log-probs of the reference policy)")
        # k3 estimator of KL(pi || ref): exp(d) - d - 1 with d = ref - logp; >= 0, unbiased.
        d = torch.where(mask, ref_logp.detach() - logp, torch.zeros_like(logp))
        kl = torch.exp(d) - d - 1.0
        per_token = per_token + kl_coef * kl
    if entropy_coef > 0.0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy")
        per_token = per_token - entropy_coef * entropy
    loss = masked_mean_per_row(per_token, mask).mean()

    with torch.no_grad():
        n = int(mask.sum())
        denom = max(n, 1)
        # Clipping is active where the clipped term is the smaller one and differs: there the
        # token gets no gradient (ratio above 1 + eps_high with A > 0, below 1 - eps_low with A < 0).
        clip_high = (ratio > 1.0 + clip_eps_high) & (adv > 0) & mask
        clip_low = (ratio < 1.0 - clip_eps_low) & (adv < 0) & mask
        metrics = {
            "losses/policy_loss": float(loss),
            "losses/clip_frac": float((clip_high | clip_low).sum()) / denom,
            "losses/clip_frac_high": float(clip_high.sum()) / denom,
            "losses/clip_frac_low": float(clip_low.sum()) / denom,
            # k3 estimate of KL(old || new), to watch the step size.
            "losses/approx_kl": float(((ratio - 1.0) - log_ratio)[mask].sum()) / denom,
            "losses/ratio_mean": float(ratio[mask].sum()) / denom,
        }
        if entropy is not None:
            metrics["losses/entropy"] = float(entropy[mask].sum()) / denom
        if kl_coef > 0.0:
            metrics["losses/kl_ref"] = float(kl[mask].sum()) / denom
    return LossOutput(loss=loss, metrics=metrics, n_tokens=n)
