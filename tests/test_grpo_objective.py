"""The GRPO objective against hand-computed values (small explicit tensors)."""

from __future__ import annotations

import math

import pytest
import torch

from offline_trainer.grpo.config import GRPOConfig
from offline_trainer.grpo.objective import (
    compute_advantages,
    compute_loss,
    dynamic_sampling_mask,
    group_success_rates,
    token_logprobs,
)
from wmpo_core.errors import WmpoError


def test_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    adv = compute_advantages(rewards, eps=1e-6)
    # group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    expected0 = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6)
    torch.testing.assert_close(adv[0], expected0)
    # an all-success group has no signal at all
    assert torch.equal(adv[1], torch.zeros(4))
    # group 2: mean 0.5, std sqrt(4 * 0.25 / 3)
    s = math.sqrt(1.0 / 3.0)
    torch.testing.assert_close(adv[2], torch.tensor([-0.5, 0.5, -0.5, 0.5]) / (s + 1e-6))
    # advantages sum to zero within a group
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(3), atol=1e-5, rtol=0)


def test_advantages_reject_bad_shapes():
    with pytest.raises(ValueError):
        compute_advantages(torch.ones(8))
    with pytest.raises(ValueError):
        compute_advantages(torch.ones(3, 1))


def test_dynamic_sampling_keeps_exactly_the_middle_groups():
    g = 8
    successes = torch.zeros(5, g, dtype=torch.bool)
    for row, n in enumerate([0, 1, 4, 7, 8]):  # rates 0, 0.125, 0.5, 0.875, 1.0
        successes[row, :n] = True
    rates = group_success_rates(successes)
    torch.testing.assert_close(rates, torch.tensor([0.0, 0.125, 0.5, 0.875, 1.0]))
    keep = dynamic_sampling_mask(rates, 0.1, 0.9)
    assert keep.tolist() == [False, True, True, True, False]


def test_dynamic_sampling_bounds_are_inclusive():
    rates = torch.tensor([1 / 10, 9 / 10, 0.0999, 0.9001])
    assert dynamic_sampling_mask(rates, 0.1, 0.9).tolist() == [True, True, False, False]


def test_token_logprobs_and_entropy_at_temperature():
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0]]))  # probs 1/6, 2/6, 3/6 at T = 1
    logp, ent = token_logprobs(logits, torch.tensor([2]), temperature=1.0)
    torch.testing.assert_close(logp, torch.log(torch.tensor([0.5])))
    p = torch.tensor([1.0, 2.0, 3.0]) / 6
    torch.testing.assert_close(ent, -(p * p.log()).sum().unsqueeze(0))
    # T = 2 takes the square root of the weights
    w = torch.tensor([1.0, 2.0, 3.0]).sqrt()
    logp2, _ = token_logprobs(logits, torch.tensor([0]), temperature=2.0)
    torch.testing.assert_close(logp2, torch.log(w[0] / w.sum()).unsqueeze(0))


def _loss_case():
    # 2 trajectories x 3 token slots; the second has only 2 real tokens (slot 3 is padding).
    old = torch.zeros(2, 3)
    ratios = torch.tensor([[1.0, 1.5, 0.5], [0.7, 1.1, 1.0]])
    logp = ratios.log().clone()
    logp[1, 2] = 100.0  # garbage in a padded slot must not matter
    logp.requires_grad_(True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    adv = torch.tensor([1.0, -1.0])
    return logp, old, adv, mask


def test_loss_hand_computed_with_asymmetric_clip():
    logp, old, adv, mask = _loss_case()
    out = compute_loss(logp, old, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    # trajectory 0 (A = +1): -min(r, clip(r, 0.8, 1.28)) = -1, -1.28, -0.5 -> mean -2.78 / 3
    # trajectory 1 (A = -1): -min(-r, -clip(r)) = 0.8 (clipped), 1.1 -> mean 0.95
    expected = (-2.78 / 3 + 0.95) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    # clipping is active on 2 of the 5 real tokens: r = 1.5 with A > 0, r = 0.7 with A < 0
    assert out.metrics["losses/clip_frac"] == pytest.approx(0.4)
    assert out.metrics["losses/clip_frac_high"] == pytest.approx(0.2)
    assert out.metrics["losses/clip_frac_low"] == pytest.approx(0.2)
    assert out.n_tokens == 5
    assert math.isfinite(out.metrics["losses/ratio_mean"])

    out.loss.backward()
    grad = logp.grad
    # d/dlogp of -r A / n_tokens / N, zero where clipped and in padding
    expected_grad = torch.tensor([[-1.0 / 6, 0.0, -0.5 / 6], [0.0, 1.1 / 4, 0.0]])
    torch.testing.assert_close(grad, expected_grad)


def test_clipped_ratios_get_no_gradient_only_in_the_clipped_direction():
    old = torch.zeros(4, 1)
    # ratios above 1 + 0.28 and below 1 - 0.2, each with a positive and a negative advantage
    logp = torch.log(torch.tensor([[1.4], [1.4], [0.7], [0.7]])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    out = compute_loss(logp, old, adv, torch.ones(4, 1, dtype=torch.bool))
    out.loss.backward()
    g = logp.grad.squeeze(1)
    assert g[0] == 0.0  # r too high, A > 0: pushing it higher is clipped
    assert g[1] > 0.0  # r too high, A < 0: still pulled back down (loss grows with logp)
    assert g[2] < 0.0  # r too low, A > 0: still pushed up
    assert g[3] == 0.0  # r too low, A < 0: pushing it lower is clipped
    assert out.metrics["losses/clip_frac"] == pytest.approx(0.5)
    # inside the range nothing is clipped
    logp_in = torch.log(torch.tensor([[1.27], [0.81]])).requires_grad_(True)
    out_in = compute_loss(logp_in, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), torch.ones(2, 1))
    out_in.loss.backward()
    assert out_in.metrics["losses/clip_frac"] == 0.0
    assert (logp_in.grad != 0).all()


def test_token_mean_is_per_trajectory():
    # A 1-token trajectory weighs as much as a 4-token one (not 1/5 of the tokens).
    old = torch.zeros(2, 4)
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    out = compute_loss(logp, old, torch.tensor([1.0, 1.0]), mask)
    out.loss.backward()
    torch.testing.assert_close(logp.grad[0, 0], torch.tensor(-0.5))
    torch.testing.assert_close(logp.grad[1], torch.full((4,), -0.125))


def test_kl_to_reference_hand_computed():
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[math.log(2.0), 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = compute_loss(logp, logp.detach(), torch.tensor([0.0]), mask, ref_logp=ref, kl_coef=0.5)
    # k3 = exp(d) - d - 1 with d = ref - logp: (2 - ln 2 - 1) and 0, token mean, times 0.5
    k3 = 2.0 - math.log(2.0) - 1.0
    assert out.loss.item() == pytest.approx(0.5 * k3 / 2, abs=1e-6)
    assert out.metrics["losses/kl_ref"] == pytest.approx(k3 / 2, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logp"):
        compute_loss(logp, logp.detach(), torch.tensor([0.0]), mask, kl_coef=0.5)


def test_entropy_bonus_and_metric():
    logp = torch.zeros(1, 2, requires_grad=True)
    ent = torch.tensor([[1.0, 3.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = compute_loss(
        logp, logp.detach(), torch.tensor([0.0]), mask, entropy=ent, entropy_coef=0.1
    )
    assert out.loss.item() == pytest.approx(-0.1 * 2.0)
    assert out.metrics["losses/entropy"] == pytest.approx(2.0)


def test_config_defaults_are_the_papers_and_checks_fail_at_construction():
    cfg = GRPOConfig()
    assert (cfg.group_size, cfg.temperature) == (8, 1.6)
    assert (cfg.success_rate_low, cfg.success_rate_high) == (0.1, 0.9)
    assert (cfg.clip_eps_low, cfg.clip_eps_high, cfg.kl_coef) == (0.2, 0.28, 0.0)
    assert (cfg.max_grad_norm, cfg.ppo_epochs, cfg.groups_per_step) == (1.0, 1, 64)
    tiny = GRPOConfig.for_preset("tiny", iterations=3)
    assert tiny.iterations == 3 and tiny.group_size == 8 and tiny.preset == "tiny"
    assert tiny.temperature == 0.5  # tiny policies' measured temperature (docs/grpo.md)
    assert GRPOConfig.for_preset("tiny", temperature=1.0).temperature == 1.0
    assert GRPOConfig.from_dict(tiny.to_dict()) == tiny
    for bad in (
        {"group_size": 1},
        {"temperature": 0.0},
        {"success_rate_low": 0.6, "success_rate_high": 0.4},
        {"clip_eps_low": 1.0},
        {"micro_batch_trajectories": 256},
        {"preset": "huge"},
        {"kl_coef": -1.0},
    ):
        with pytest.raises(WmpoError, match="GRPOConfig"):
            GRPOConfig(**bad)
    with pytest.raises(WmpoError, match="unknown field"):
        GRPOConfig.from_dict({"groupsize": 8})
