"""`wmpo eval imagination`: action edits, and the whole report on real sim episodes.

The models are untrained tiny ones saved to disk (what they imagine is noise); what is
tested is the evaluation itself: the copy-frame baseline, the balanced verdict counts, and
the counterfactual labels, which come from replaying each edit in the real sim.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from offline_trainer.eval_imagination import EDITS, edit_actions
from wmpo_core.cli import main as wmpo
from wmpo_core.errors import WmpoError
from wmpo_core.store import EpisodeStore
from wmpo_core.world_model.metrics import psnr, ranking_auc


def _grasp_then_lift(t_close: int = 10, n: int = 40) -> np.ndarray:
    a = np.zeros((n, 7), np.float32)
    a[:, 6] = -1.0
    a[t_close:, 6] = 1.0
    a[t_close:, 2] = 0.5
    return a


def test_edits_change_only_what_they_name():
    rng = np.random.default_rng(0)
    a = _grasp_then_lift()
    never = edit_actions(a, "gripper_never_closes", rng)
    assert np.all(never[:, 6] == -1.0) and np.array_equal(never[:, :6], a[:, :6])
    opens = edit_actions(a, "gripper_opens_mid_lift", rng)
    t_open = int(np.flatnonzero(opens[10:, 6] < 0)[0]) + 10
    assert t_open > 10 and np.all(opens[t_open:, 6] == -1) and np.all(opens[10:t_open, 6] == 1)
    lateral = edit_actions(a, "lateral_offset", rng)
    moved = np.flatnonzero(lateral[:, 1] != a[:, 1])
    assert list(moved) == list(range(0, 10))  # the 10 steps before the grasp, sideways only
    assert np.abs(lateral[moved, 1]).max() == pytest.approx(0.6)
    stall = edit_actions(a, "stall", rng)
    assert len(stall) == len(a) + 16 and np.all(stall[6:22, :6] == 0)
    assert np.array_equal(stall[22:], a[6:])
    assert np.array_equal(a, _grasp_then_lift()), "the recording itself is never edited"


def test_edits_refuse_what_does_not_apply():
    rng = np.random.default_rng(0)
    never_closed = np.zeros((30, 7), np.float32) - 1.0
    assert all(edit_actions(never_closed, kind, rng) is None for kind in EDITS)
    with pytest.raises(WmpoError, match="unknown edit type 'tilt'"):
        edit_actions(_grasp_then_lift(), "tilt", rng)


def test_ranking_auc_against_hand_counts():
    truth = np.array([True, True, False, False])
    assert ranking_auc(np.array([0.9, 0.8, 0.1, 0.2]), truth) == 1.0
    assert ranking_auc(np.array([0.1, 0.2, 0.9, 0.8]), truth) == 0.0
    # success scores 0.5, 0.3; failures 0.4, 0.3: pairs (0.5>0.4, 0.5>0.3, 0.3<0.4, 0.3=0.3)
    assert ranking_auc(np.array([0.5, 0.3, 0.4, 0.3]), truth) == pytest.approx(2.5 / 4)
    assert np.isnan(ranking_auc(np.array([0.5, 0.3]), np.array([True, True])))


@pytest.mark.sim
def test_report_on_real_sim_episodes(tmp_path, capsys):
    from wmpo_core.reward_model import save_reward_model
    from wmpo_core.reward_model.configuration_reward_model import RewardModelConfig
    from wmpo_core.reward_model.modeling_reward_model import RewardModel
    from wmpo_core.world_model import build_network, save_world_model, tiny_config

    store_dir = tmp_path / "store"
    # Seeds 30-37, every episode perturbed: successes and failures, deterministically.
    args = ["collect", "--task", "Lift", "--episodes", "8", "--out", str(store_dir)]
    assert wmpo([*args, "--image-size", "32", "--perturb-frac", "1.0", "--seed-start", "30"]) == 0
    store = EpisodeStore(store_dir)
    outcomes = [m.success for m in store.metas()]
    assert 0 < sum(outcomes) < len(outcomes), outcomes
    wcfg = tiny_config(image_size=32)
    save_world_model(tmp_path / "wm", wcfg, build_network(wcfg))
    rcfg = RewardModelConfig(image_size=32, hidden_size=32, num_layers=1, intermediate_size=64)
    save_reward_model(tmp_path / "rm", RewardModel(rcfg))
    capsys.readouterr()
    rc = wmpo(
        [
            "eval", "imagination", "--world-model", str(tmp_path / "wm"),
            "--reward", str(tmp_path / "rm"), "--data", str(store_dir), "--heldout-frac", "1.0",
            "--episodes", "8", "--out", str(tmp_path / "report"), "--videos", "2",
            "--counterfactual", "--cf-episodes", "2", "--edits", "gripper_never_closes,stall",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "imagined success on a real failure (exploitable)" in printed
    report = json.loads((tmp_path / "report/report.json").read_text())
    o = report["outcome"]
    k = min(sum(outcomes), len(outcomes) - sum(outcomes))
    assert o["n"] == 2 * k and o["n_success"] == k  # balanced
    wrong = o["imagined_success_on_real_failure"] + o["imagined_failure_on_real_success"]
    # Balanced agreement = mean of the per-class accuracies.
    expected = 1 - 0.5 * (
        o["imagined_success_on_real_failure"] / k + o["imagined_failure_on_real_success"] / k
    )
    assert o["agreement_imagined"] == pytest.approx(expected) and 0 <= wrong <= 2 * k
    assert o["agreement_always_success"] == 0.5
    assert 0.0 <= o["auc_imagined"] <= 1.0 and 0.0 <= o["auc_real_frames"] <= 1.0
    assert "ranking AUC of the best window" in printed
    # The copy-frame baseline is the first real frame against the real frame at h.
    first = next(m for m in store.metas() if m.n_frames > 8)
    frames = np.asarray(store.load(first.id).frames)
    row = report["fidelity"]["8"]
    assert row["n"] >= 1 and np.isfinite(row["psnr"])
    assert row["psnr_copy"] > 0 and np.isfinite(psnr(frames[0], frames[8]))
    # Counterfactual labels come from the real sim: a gripper that never closes lifts nothing.
    cf = report["counterfactual"]
    assert cf["gripper_never_closes"]["n"] >= 1
    assert cf["gripper_never_closes"]["true_successes"] == 0
    assert cf["stall"]["n"] >= 1
    assert len(list((tmp_path / "report").glob("*.mp4"))) == 2
