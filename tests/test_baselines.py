"""Table 1 baselines: DPO objective and step, online GRPO in the real sim under a budget P."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from offline_trainer.baselines.dpo import (
    DPOConfig,
    Trajectory,
    dpo_loss,
    make_pairs,
    train_dpo,
    trajectory_from_episode,
    trajectory_logprob,
)
from offline_trainer.real_rollouts import BudgetExceeded, RealBudget
from wmpo_core.errors import WmpoError

INSTRUCTION = "lift the red cube"


def tiny_policy_checkpoint(
    path: Path, image_size: int = 32, cameras: tuple[str, ...] = ("camera",)
) -> Path:
    from wmpo_core.policy.checkpoint_policy import save_policy_checkpoint
    from wmpo_core.policy.configuration_policy import preset_config
    from wmpo_core.policy.modeling_policy import VLAPolicyModel
    from wmpo_core.policy.processing_policy import NormalizationStats

    torch.manual_seed(0)
    cfg = preset_config(
        "tiny",
        image_size=image_size,
        d_model=32,
        n_layers=1,
        vision_channels=(8, 16, 16),
        vision_grid=4,
        cameras=cameras,
    )
    rng = np.random.default_rng(0)
    stats = NormalizationStats.from_actions(rng.uniform(-0.5, 0.5, (200, 7)))
    return save_policy_checkpoint(
        path, VLAPolicyModel(cfg), stats, instructions=[INSTRUCTION], episode_ids=[]
    )


def test_dpo_loss_matches_hand_computed_values():
    # pair 1: chosen ratio -10 - (-12) = 2, rejected ratio -9 - (-8) = -1 -> h = 0.5 * 3 = 1.5
    # pair 2: chosen ratio 0, rejected ratio 1 -> h = 0.5 * -1 = -0.5
    loss, metrics = dpo_loss(
        torch.tensor([-10.0, -5.0]),
        torch.tensor([-9.0, -6.0]),
        torch.tensor([-12.0, -5.0]),
        torch.tensor([-8.0, -7.0]),
        beta=0.5,
    )
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(0.5))) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert metrics["rewards/accuracy"] == 0.5
    assert metrics["rewards/margin"] == pytest.approx((1.5 - 0.5) / 2)
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * (2 + 0) / 2)
    # equal log-ratios: the loss is log 2 whatever beta is
    zero, _ = dpo_loss(*(torch.zeros(3),) * 4, beta=7.0)
    assert float(zero) == pytest.approx(math.log(2))


def test_make_pairs_puts_same_state_pairs_first_and_caps():
    def t(seed, ok):
        return Trajectory(f"{seed}{ok}", seed, ok, None, None, None, INSTRUCTION)

    trajs = [t(1, True), t(2, False), t(1, False), t(3, True)]
    pairs = make_pairs(trajs, DPOConfig(max_pairs=10))
    assert pairs[0] == (0, 2)  # the only same-state pair
    assert set(pairs) == {(0, 2), (0, 1), (3, 1), (3, 2)}
    assert make_pairs(trajs, DPOConfig(cross_state_pairs=False)) == [(0, 2)]
    assert len(make_pairs(trajs, DPOConfig(max_pairs=2))) == 2


def test_dpo_step_raises_chosen_log_ratio_over_rejected(tmp_path):
    from offline_trainer.real_rollouts import load_vla
    from wmpo_core.store import EpisodeMeta, EpisodeStore

    ckpt = tiny_policy_checkpoint(tmp_path / "policy")
    policy, _ = load_vla(ckpt)
    reference, _ = load_vla(ckpt)
    store = EpisodeStore(tmp_path / "store", create=True)
    rng = np.random.default_rng(1)
    for i, ok in enumerate([True, False]):
        steps = 13  # one full chunk of 8 and one cut to 5 actions by "success"
        meta = EpisodeMeta(
            id=f"e{i}",
            task="Lift",
            instruction=INSTRUCTION,
            success=ok,
            kind="rollout",
            seed=7,
            extra={"executed_steps": steps},
        )
        frames = rng.integers(0, 255, (steps + 1, 48, 48, 3), dtype=np.uint8)
        store.add(meta, frames, rng.uniform(-0.5, 0.5, (steps + 1, 7)))
    trajs = [
        trajectory_from_episode(store.load(i), policy.processor, policy.config) for i in store.ids()
    ]
    assert trajs[0].tokens.shape == (2, 8, 7) and int(trajs[0].mask.sum()) == 13
    assert trajs[0].images.shape == (2, 32, 32, 3)

    def margin() -> float:
        with torch.no_grad():
            lp = [trajectory_logprob(m, t, 1.0) for m in (policy, reference) for t in trajs]
        return float((lp[0] - lp[2]) - (lp[1] - lp[3]))

    assert margin() == pytest.approx(0.0, abs=1e-4)  # pi == ref before the step
    cfg = DPOConfig(epochs=1, pairs_per_step=1, learning_rate=1e-3, beta=0.1)
    rows = train_dpo(policy, reference, trajs, cfg, log=lambda _m: None)
    assert len(rows) == 1 and rows[0]["losses/dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert margin() > 0.5  # one step: the chosen trajectory gained log-prob over the rejected
    ref_params = dict(reference.named_parameters())
    assert all(not p.requires_grad for p in ref_params.values())

    with pytest.raises(WmpoError, match="at least one success and one failure"):
        train_dpo(policy, reference, trajs[:1], cfg, log=lambda _m: None)

    # The NLL-on-chosen term (RPO) is the per-token NLL of the success, added to the loss.
    fresh, _ = load_vla(ckpt)
    with torch.no_grad():
        nll = -float(trajectory_logprob(fresh, trajs[0], 1.0)) / (13 * 7)
    rows = train_dpo(
        fresh, reference, trajs, DPOConfig(epochs=1, nll_coef=0.5), log=lambda _m: None
    )
    assert rows[0]["losses/chosen_nll"] == pytest.approx(nll, rel=1e-4)
    assert rows[0]["losses/dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)
    with pytest.raises(WmpoError, match="nll_coef must be >= 0"):
        DPOConfig(nll_coef=-1.0)


def test_real_budget_refuses_to_overspend():
    budget = RealBudget(3)
    budget.take(2)
    with pytest.raises(BudgetExceeded, match="P=3 exhausted"):
        budget.take(2)
    assert budget.used == 2  # a refused request spends nothing
    budget.take(1)
    assert budget.remaining == 0


@pytest.mark.sim
def test_online_grpo_in_the_real_sim_counts_episodes_against_the_budget(tmp_path):
    """Tiny policy, 32 px camera, 8-step real Lift episodes: G = 2, one group per
    iteration, P = 5 -> two iterations (4 episodes), then P cannot pay for a group."""
    from offline_trainer.baselines.online_grpo import OnlineGRPOTrainer, OnlineRunConfig
    from offline_trainer.grpo.config import GRPOConfig
    from offline_trainer.real_rollouts import (
        SampledChunkPolicy,
        add_to_store,
        collect_real_rollouts,
        load_vla,
        open_arm,
    )
    from wmpo_core.policy.checkpoint_policy import load_policy
    from wmpo_core.store import EpisodeStore

    torch.set_num_threads(1)
    ckpt = tiny_policy_checkpoint(tmp_path / "policy")
    config = GRPOConfig.for_preset(
        "tiny",
        group_size=2,
        groups_per_step=1,
        max_sampling_rounds=1,
        success_rate_low=0.0,  # untrained policy: keep the group to drive the update path
        success_rate_high=1.0,
        minibatch_trajectories=2,
        micro_batch_trajectories=2,
        learning_rate=1e-2,
        iterations=100,
        checkpoint_every=1,
    )
    run = OnlineRunConfig(task="Lift", budget=5, horizon=8)
    policy, _ = load_vla(ckpt)
    out = tmp_path / "run"
    with open_arm("Lift", 32, horizon=8) as arm:
        trainer = OnlineGRPOTrainer(config, policy, arm, run, out, log=None)
        rows = trainer.train()
        assert len(rows) == 2 and trainer.iteration == 2
        assert trainer.budget.used == 4 and trainer.budget.remaining == 1
        assert [r["budget/real_episodes_used"] for r in rows] == [2.0, 4.0]
        for r in rows:
            assert r["rollout/real_episodes"] == 2.0 and r["rollout/mean_steps"] == 8.0
            assert r["train/optimizer_steps"] == 1.0
            assert r["debug/first_logprob_max_abs_diff"] < 1e-5  # real rollouts' log-probs
        # Resuming restores the spent budget: nothing is left to run.
        again = OnlineGRPOTrainer(config, load_vla(ckpt)[0], arm, run, out, log=None)
        assert again.train() == [] and again.budget.used == 4

        # The budget refuses the episode that would exceed P, after running the affordable one.
        budget = RealBudget(5, used=4)
        sampler = SampledChunkPolicy(policy, 1.0)
        with pytest.raises(BudgetExceeded):
            collect_real_rollouts(arm, sampler, [50_000, 50_001], budget, INSTRUCTION)
        assert budget.used == 5
        (r,) = collect_real_rollouts(arm, sampler, [50_002], RealBudget(1), INSTRUCTION)
    # The stored rollout re-tokenizes to exactly the sampled tokens (what DPO trains on).
    store = EpisodeStore(tmp_path / "store", create=True)
    add_to_store(store, r, "Lift", "r0", "v0")
    traj = trajectory_from_episode(store.load("r0"), policy.processor, policy.config)
    assert torch.equal(traj.tokens, r.tokens) and int(traj.mask.sum()) == r.length == 8
    assert store.meta("r0").labelled_by == "sim" and store.meta("r0").n_frames == 9

    _, _, manifest = load_policy(out / "policy")
    assert manifest["baseline"] == "grpo-online" and manifest["real_budget"] == 5
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(m["rollout/real_episodes"] for m in metrics) == 4


class _ExpertChunks:
    """The scripted Lift expert as a one-action ChunkPolicy (reads the sim's state)."""

    def __init__(self, arm, seed: int):
        from wmpo_core.sim.experts import make_expert

        self.arm, self.expert = arm, make_expert("Lift", seed=seed)

    def reset(self) -> None:
        self.expert.reset()

    def predict_chunk(self, obs) -> np.ndarray:
        return self.expert.act(self.arm.privileged_state())[None].astype(np.float32)


def test_stored_rollouts_go_on_past_the_success_flag_and_evaluation_does_not():
    """A stored success must end on frames that show its result (as the experts' episodes
    do); evaluation still stops at the flag, so success rates and lengths are unchanged."""
    from offline_trainer.eval_policy import rollout
    from offline_trainer.real_rollouts import open_arm

    with open_arm("Lift", 32, horizon=120) as arm:
        at_flag, frames = rollout(arm, _ExpertChunks(arm, 1), 1, INSTRUCTION, record=True)
        assert at_flag.success and len(frames) == at_flag.length + 1
        after, frames = rollout(
            arm, _ExpertChunks(arm, 1), 1, INSTRUCTION, record=True, extra_steps=8
        )
        assert after.success and after.length == at_flag.length + 8
        assert len(frames) == after.length + 1 and arm.success()  # still held up
        # A horizon that cuts the extra steps short still counts the flag that is up.
        with open_arm("Lift", 32, horizon=at_flag.length + 3) as short:
            cut, _ = rollout(short, _ExpertChunks(short, 1), 1, INSTRUCTION, extra_steps=8)
        assert cut.success and cut.length == at_flag.length + 3
        with pytest.raises(WmpoError, match="extra_steps must be >= 0"):
            rollout(arm, _ExpertChunks(arm, 1), 1, INSTRUCTION, extra_steps=-1)


def test_collect_to_store_is_idempotent_and_labels_rollouts(tmp_path):
    from offline_trainer.real_rollouts import collect_to_store
    from wmpo_core.store import EpisodeStore

    torch.set_num_threads(1)
    ckpt = tiny_policy_checkpoint(tmp_path / "policy")
    kw = dict(image_size=32, horizon=8, progress=False)
    ids = collect_to_store(ckpt, "Lift", 2, tmp_path / "store", repeats=2, **kw)
    assert len(ids) == 2 and ids[0].endswith("-50000-0") and ids[1].endswith("-50000-1")
    store = EpisodeStore(tmp_path / "store")
    for episode_id in ids:
        meta = store.meta(episode_id)
        assert meta.kind == "rollout" and meta.seed == 50_000 and meta.n_frames == 9
        assert meta.success is False and meta.labelled_by == "sim"
    mtimes = sorted(p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file())
    # Re-running (a resumed table) runs nothing new and returns the same ids.
    assert collect_to_store(ckpt, "Lift", 2, tmp_path / "store", repeats=2, **kw) == ids
    again = sorted(p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert again == mtimes and sorted(store.ids()) == sorted(ids)


def test_dpo_and_real_rollouts_hand_a_first_frame_policy_its_episode_start(tmp_path):
    """Both baselines feed a policy that reads EPISODE_START each chunk's frame beside the
    episode's first, as the runtime ChunkPolicy and imagination do."""
    from offline_trainer.real_rollouts import SampledChunkPolicy, load_vla
    from wmpo_core.policy.configuration_policy import EPISODE_START
    from wmpo_core.policy_api import Observation
    from wmpo_core.store import EpisodeMeta, EpisodeStore

    ckpt = tiny_policy_checkpoint(tmp_path / "policy", cameras=("camera", EPISODE_START))
    policy, _ = load_vla(ckpt)
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (13, 32, 32, 3), dtype=np.uint8)
    store = EpisodeStore(tmp_path / "store", create=True)
    meta = EpisodeMeta(id="e0", task="Lift", instruction=INSTRUCTION, success=True, seed=1)
    store.add(meta, frames, rng.uniform(-0.5, 0.5, (13, 7)))
    traj = trajectory_from_episode(store.load("e0"), policy.processor, policy.config)
    assert tuple(traj.images.shape) == (2, 2, 32, 32, 3)  # chunks at steps 0 and 8
    assert torch.equal(traj.images[1, 0], torch.from_numpy(frames[8]))
    assert torch.equal(traj.images[1, 1], torch.from_numpy(frames[0]))
    assert torch.isfinite(trajectory_logprob(policy, traj, 1.0))

    sampler = SampledChunkPolicy(policy, temperature=1.0)
    for t in (0, 8):
        sampler.predict_chunk(Observation({"camera": frames[t]}, INSTRUCTION))
    assert [img.shape for img in sampler.images] == [(2, 32, 32, 3)] * 2
    assert np.array_equal(sampler.images[1][1], frames[0])
    assert np.array_equal(sampler.images[1][0], frames[8])
