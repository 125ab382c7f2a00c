"""Expert takeovers: the policy acts, the scripted expert finishes, BC clones only the
expert's part (offline_trainer/takeover.py, `wmpo collect --takeover-from`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from offline_trainer.baselines.dpo import load_trajectories as load_dpo_trajectories
from offline_trainer.datasets import (
    WindowDataset,
    WindowSpec,
    expert_labelled_from,
    select_episodes,
)
from offline_trainer.report import real_success_by_version
from offline_trainer.takeover import parse_step_range, run_takeover_episode, takeover_step_for
from offline_trainer.train_policy import TrainPolicyConfig, _identity, train_policy
from wmpo_core.cli import main as wmpo
from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import TASK_INSTRUCTIONS
from wmpo_core.policy import load_policy_checkpoint
from wmpo_core.policy_api import Observation
from wmpo_core.sim.arm import SimArm, SimConfig
from wmpo_core.sim.episode import SuccessWatch, run_expert_episode
from wmpo_core.sim.experts import make_expert
from wmpo_core.store import EpisodeMeta, EpisodeStore
from wmpo_core.world_model.training import select_episodes as select_world_model_episodes

REPO = Path(__file__).resolve().parents[1]
LIFT_POLICY = REPO / "assets" / "policies" / "Lift"
LIFT = TASK_INSTRUCTIONS["Lift"]
SMALL = dict(d_model=32, n_layers=1, n_heads=2, vision_channels=(8, 8, 8), vision_grid=4)


@pytest.fixture(scope="module")
def lift_arm():
    with SimArm(SimConfig(task="Lift", image_size=64, render=True)) as arm:
        yield arm


@pytest.mark.sim
def test_the_policy_acts_until_the_takeover_step_then_the_expert_finishes(lift_arm):
    policy = load_policy_checkpoint(LIFT_POLICY)
    seed = 70_001
    ep = run_takeover_episode(lift_arm, policy, make_expert("Lift", 0.05, seed), seed, 12, LIFT)
    assert ep.takeover_step == 12 and ep.success
    assert len(ep.frames) == len(ep.actions) == ep.length
    # The first 12 actions are the policy's own greedy chunks (the second one cut at 4).
    obs = lift_arm.reset(seed)
    policy.reset()
    first = policy.predict_chunk(Observation(images={"camera": obs.image}, instruction=LIFT))
    np.testing.assert_allclose(ep.actions[:8], first, atol=1e-6)
    np.testing.assert_array_equal(ep.frames[0], obs.image)
    # From step 12 on the expert acts: it finishes the lift the policy started.
    assert ep.success_step is not None and ep.success_step > 12


@pytest.mark.sim
def test_a_takeover_at_step_zero_is_the_experts_own_episode(lift_arm):
    policy = load_policy_checkpoint(LIFT_POLICY)
    seed = 70_002
    ep = run_takeover_episode(lift_arm, policy, make_expert("Lift", 0.05, seed), seed, 0, LIFT)
    ref = run_expert_episode(lift_arm, make_expert("Lift", 0.05, seed), seed)
    assert ep.takeover_step == 0 and ep.success == ref.success
    np.testing.assert_array_equal(ep.actions, ref.actions)
    np.testing.assert_array_equal(ep.frames, ref.frames)


def test_a_negative_takeover_step_is_refused_before_the_sim_resets():
    with pytest.raises(WmpoError, match="takeover_step must be >= 0"):
        run_takeover_episode(None, None, None, 0, -1, LIFT)


def test_success_must_hold_for_the_extra_steps():
    watch = SuccessWatch(extra_steps=2)
    assert [watch.update(f, t) for t, f in enumerate([0, 1, 1, 0, 1, 1, 1], 1)] == [
        False, False, False, False, False, False, True,
    ]  # fmt: skip
    assert watch.success_step == 5  # the first rise (step 2) was lost at step 4


def test_takeover_steps_parse_and_draw_deterministically():
    assert parse_step_range("20:200") == (20, 200)
    for bad in ("200:20", "20", "a:b", "-1:5"):
        with pytest.raises(WmpoError, match="LO:HI"):
            parse_step_range(bad)
    draws = [takeover_step_for(s, 20, 200) for s in range(200)]
    assert draws == [takeover_step_for(s, 20, 200) for s in range(200)]
    assert min(draws) >= 20 and max(draws) <= 200 and len(set(draws)) > 50


def _toy_store(root: Path) -> EpisodeStore:
    """One demonstration, one successful and one failed takeover; actions count steps."""
    store = EpisodeStore(root, create=True)
    frames = np.zeros((20, 16, 16, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(20)
    actions = np.zeros((20, 7), np.float32)
    actions[:, 0] = np.arange(20) / 20
    for id_, kind, success, step in [
        ("demo", "demonstration", True, None),
        ("took", "rollout", True, 6),
        ("lost", "rollout", False, 6),
        ("own", "rollout", False, None),
    ]:
        version = "" if kind == "demonstration" else "p0"
        meta = EpisodeMeta(id_, "Lift", LIFT, success=success, kind=kind, policy_version=version)
        if step is not None:
            meta.extra["takeover_step"] = step
        store.add(meta, frames, actions)
    return store


def test_bc_windows_of_a_takeover_start_where_the_expert_took_over(tmp_path):
    store = _toy_store(tmp_path / "store")
    assert select_episodes(store, task="Lift") == ["demo"]
    ids = select_episodes(store, task="Lift", successful_takeovers=True)
    assert ids == ["demo", "took"]  # the failed takeover is not cloned
    data = WindowDataset(
        store, ids, WindowSpec(future_actions=4), first_anchor=expert_labelled_from
    )
    anchors = {e: sorted(t for i, t in data.index if i == e) for e in (0, 1)}
    assert anchors[0][0] == 0 and anchors[1][0] == 6 and anchors[1][-1] == 19
    # Normalization stats see the expert's actions only, not the policy's prefix.
    assert len(data.all_actions()) == 20 + 14
    world = WindowDataset(store, ids, WindowSpec(future_actions=4))  # the world model: all
    assert len(world) == 40


def test_a_takeover_is_not_counted_as_the_policys_own_rollout(tmp_path):
    store = _toy_store(tmp_path / "store")
    # Real success per version (cycle report): only the rollout the policy finished itself.
    assert real_success_by_version(store.root, "Lift")["p0"]["n"] == 1
    # World-model alignment on the policy's own rollouts, and DPO's preference data.
    aligned = select_world_model_episodes([store.root], policy_version="p0", split="all")
    assert [meta.id for _, meta in aligned] == ["own"]
    assert load_dpo_trajectories(store.root, None, None, ["took", "lost"]) == []


def test_training_with_takeovers_clones_their_expert_part(tmp_path):
    store = _toy_store(tmp_path / "store")
    cfg = dict(data=str(store.root), task="Lift", steps=2, batch_size=4, progress=False)
    cfg |= dict(policy_overrides=SMALL, val_episodes=0, chunk_size=4)
    train_policy(TrainPolicyConfig(out=str(tmp_path / "a"), with_takeovers=True, **cfg))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["data"]["episode_ids"] == ["demo", "took"]  # never "lost" or "own"
    train_policy(TrainPolicyConfig(out=str(tmp_path / "b"), **cfg))
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["data"]["episode_ids"] == ["demo"]


@pytest.mark.sim
def test_collect_takeovers_cli_writes_rollouts_marked_with_the_takeover_step(tmp_path, capsys):
    out = tmp_path / "store"
    args = ["collect", "--task", "Lift", "--episodes", "2", "--out", str(out), "--image-size"]
    args += ["64", "--seed-start", "70010", "--takeover-from", str(LIFT_POLICY)]
    args += ["--takeover-steps", "5:9", "--noise", "0.05"]
    assert wmpo(args) == 0
    metas = EpisodeStore(out).metas()
    assert [m.seed for m in metas] == [70010, 70011]
    for m in metas:
        assert m.kind == "rollout" and m.labelled_by == "sim" and m.policy_version
        assert m.extra["takeover_step"] == takeover_step_for(m.seed, 5, 9)
        assert m.extra["takeover_by"] == "LiftExpert" and "-takeover-" in m.id
    assert "the expert took over 2" in capsys.readouterr().out
    assert wmpo(args) == 0  # same seeds and policy again: nothing re-collected
    assert "2 takeovers already in" in capsys.readouterr().out
    assert wmpo(args + ["--perturb-frac", "0.5"]) == 1
    assert "do not combine" in capsys.readouterr().err
    assert wmpo(args[:-4] + ["--takeover-steps", "9:5"]) == 1
    assert "LO:HI" in capsys.readouterr().err


def test_a_run_without_takeovers_keeps_its_resume_identity():
    # Training states saved before --with-takeovers existed must still resume.
    cfg = dict(data="STORE", out="OUT")
    assert "with_takeovers" not in _identity(TrainPolicyConfig(**cfg), ["a"])
    assert _identity(TrainPolicyConfig(**cfg, with_takeovers=True), ["a"])["with_takeovers"]
