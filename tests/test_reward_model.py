"""Reward model: calibration, sliding-window verdicts, training, checkpoints, bad input.

A real transformers VideoMAEForVideoClassification at a tiny size, trained on the
toy pixel world (wmpo_core.world_model.synthetic).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.cli import main as wmpo
from wmpo_core.errors import WmpoError
from wmpo_core.reward_model import (
    RewardModel,
    RewardModelConfig,
    RewardModelError,
    calibrate_threshold,
    load_reward_model,
    save_reward_model,
)
from wmpo_core.reward_model.processing_reward_model import training_clips, window_starts
from wmpo_core.world_model.synthetic import make_toy_store

TINY = dict(
    image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_calibration_picks_the_f1_best_threshold():
    thr, f1 = calibrate_threshold(
        np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), np.array([0, 0, 0, 1, 1, 1])
    )
    assert f1 == 1.0 and 0.3 < thr < 0.7
    # One negative scores above two positives: best F1 keeps all positives (3 TP, 1 FP).
    scores = np.array([0.1, 0.2, 0.85, 0.6, 0.7, 0.9])
    thr, f1 = calibrate_threshold(scores, np.array([0, 0, 0, 1, 1, 1]))
    assert 0.2 < thr < 0.6 and f1 == pytest.approx(6 / 7)
    with pytest.raises(RewardModelError, match="no positive"):
        calibrate_threshold(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(RewardModelError, match="equal-length"):
        calibrate_threshold(np.array([0.1]), np.array([0, 1]))


def test_windows_are_stride_one_and_pad_short_episodes():
    idx = window_starts(10, 8)
    assert idx.shape == (3, 8) and idx[0].tolist() == list(range(8)) and idx[-1, -1] == 9
    short = window_starts(3, 8)  # shorter than a clip: one window, first frame repeated
    assert short.shape == (1, 8) and short[0].tolist() == [0] * 6 + [1, 2]
    rng = np.random.default_rng(0)
    clips = training_clips(np.zeros((40, 4, 4, 3), np.uint8), True, 8, rng)
    labels = [y for _, y in clips]
    assert labels[0] == 1 and clips[0][0][-1] >= 37 and all(y == 0 for y in labels[1:])
    assert all(c[-1] < 30 for c, _ in clips[1:])  # negatives come from the first 75 %
    known = training_clips(np.zeros((40, 4, 4, 3), np.uint8), True, 8, rng, success_step=20)
    assert [y for _, y in known][:2] == [1, 1] and known[1][0][-1] >= 20
    assert all(c[-1] < 18 for c, y in known if y == 0)  # 3 frames before the success
    fails = training_clips(np.zeros((40, 4, 4, 3), np.uint8), False, 8, rng)
    assert all(y == 0 for _, y in fails) and fails[0][0][-1] == 39
    # Stratified: one negative ending in each 8-frame stretch, so no stretch is missed.
    assert sorted(c[-1] // 8 for c, _ in fails[1:]) == [0, 1, 2, 3, 4]


class _ScriptedScores(RewardModel):
    """The real windowing/threshold logic over a known score per window: the score is
    the mean red level of the window's last frame (checks the arithmetic, not learning)."""

    def clip_probs(self, clips, batch_size=64):
        return np.asarray(clips)[:, -1, ..., 0].mean(axis=(1, 2)) / 255.0


def test_detect_success_returns_the_earliest_window_above_threshold():
    rm = _ScriptedScores(RewardModelConfig(**TINY, threshold=0.5))
    frames = np.zeros((20, 32, 32, 3), np.uint8)
    frames[12:, ..., 0] = 200  # success visible from frame 12 on
    frames[16, ..., 0] = 0
    assert rm.detect_success(frames) == (True, 12)
    assert rm.detect_success(np.zeros((20, 32, 32, 3), np.uint8)) == (False, 19)
    batch = np.stack([frames, np.zeros_like(frames)])
    assert rm.detect_success_batch(batch) == [(True, 12), (False, 19)]


def test_bad_input_raises_reward_model_error():
    rm = RewardModel(RewardModelConfig(**TINY))
    with pytest.raises(RewardModelError, match=r"\[T, 32, 32, 3\].*got shape \(5, 64, 64, 3\)"):
        rm.detect_success(np.zeros((5, 64, 64, 3), np.uint8))
    with pytest.raises(RewardModelError, match="empty episode"):
        rm.detect_success(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(RewardModelError, match="multiple of patch_size"):
        RewardModelConfig(image_size=30)
    assert issubclass(RewardModelError, WmpoError)


def _train_toy(tmp_path, *extra: str):
    """`wmpo train reward` on a 24-episode toy store -> (exit code, store, out dir)."""
    store = make_toy_store(tmp_path / "store", n=24, size=32, steps=30)
    out = tmp_path / "rm"
    rc = wmpo(
        ["train", "reward", "--data", str(tmp_path / "store"), "--out", str(out),
         "--max-epochs", "12", "--minutes", "2", "--heldout-frac", "0", "--cal-frac", "0.25",
         *extra]
    )  # fmt: skip
    return rc, store, out


def _toy_agreement(rm, store) -> tuple[float, list]:
    verdicts = [(rm.detect_success(np.asarray(e.frames))[0], e.meta.success) for e in store]
    return float(np.mean([v == y for v, y in verdicts])), verdicts


def test_train_cli_learns_the_toy_outcome_and_round_trips(tmp_path):
    rc, store, out = _train_toy(tmp_path)
    assert rc == 0
    rm = load_reward_model(out)
    assert 0.0 <= rm.config.threshold <= 1.0
    agree, verdicts = _toy_agreement(rm, store)
    assert agree >= 0.8, verdicts
    # Saving keeps the calibrated threshold and the exact scores.
    rm.config.threshold = 0.37
    save_reward_model(tmp_path / "rm2", rm)
    again = load_reward_model(tmp_path / "rm2")
    clip = np.asarray(next(iter(store)).frames)[:8][None]
    assert again.config.threshold == 0.37
    assert np.allclose(again.clip_probs(clip), rm.clip_probs(clip), atol=1e-6)


def test_conv_backbone_learns_the_toy_outcome_and_round_trips(tmp_path):
    rc, store, out = _train_toy(tmp_path, "--backbone", "conv")
    assert rc == 0
    rm = load_reward_model(out)
    assert rm.config.backbone == "conv" and not (out / "videomae_config.json").exists()
    agree, verdicts = _toy_agreement(rm, store)
    assert agree >= 0.8, verdicts
    clip = np.asarray(next(iter(store)).frames)[:8][None]
    assert np.allclose(load_reward_model(out).clip_probs(clip), rm.clip_probs(clip), atol=1e-6)
    # Fine-tuning (what `wmpo cycle` does) keeps the init model's architecture unasked.
    rc = wmpo(
        ["train", "reward", "--data", str(tmp_path / "store"), "--out", str(tmp_path / "rm2"),
         "--init", str(out), "--max-epochs", "1", "--heldout-frac", "0", "--cal-frac", "0.25"]
    )  # fmt: skip
    refreshed = load_reward_model(tmp_path / "rm2")
    assert rc == 0 and refreshed.config.backbone == "conv"
    # Too few calibration episodes (24 x 0.25 < 10) to set a threshold: the init's is kept.
    assert refreshed.config.threshold == rm.config.threshold
    with pytest.raises(RewardModelError, match="backbone"):
        RewardModelConfig(backbone="resnet")
    with pytest.raises(RewardModelError, match="pretrained VideoMAE"):
        RewardModelConfig(preset="base", backbone="conv", base_path="x")


def test_init_from_a_model_of_another_frame_size_is_refused(tmp_path, capsys):
    rc, _, out = _train_toy(tmp_path, "--backbone", "conv", "--max-epochs", "1")
    assert rc == 0
    make_toy_store(tmp_path / "small", n=8, size=16, steps=20)
    rc = wmpo(
        ["train", "reward", "--data", str(tmp_path / "small"), "--out", str(tmp_path / "rm2"),
         "--init", str(out), "--max-epochs", "1", "--heldout-frac", "0"]
    )  # fmt: skip
    assert rc == 1 and "32 px model, 16 px frames" in capsys.readouterr().err
    assert not (tmp_path / "rm2").exists()


def test_imagined_from_calibrates_on_imagined_episodes_and_reports_their_agreement(tmp_path):
    """`--imagined-from WM`: the threshold is fit to the calibration episodes' imagined
    replays (what GRPO thresholds), and held-out agreement is reported on them too."""
    from wmpo_core.world_model import build_network, save_world_model, tiny_config
    from wmpo_core.world_model.training import is_heldout, select_episodes

    cfg = tiny_config(image_size=32)
    save_world_model(tmp_path / "wm", cfg, build_network(cfg))
    make_toy_store(tmp_path / "store", n=24, size=32, steps=30)
    out = tmp_path / "rm"
    rc = wmpo(
        ["train", "reward", "--data", str(tmp_path / "store"), "--out", str(out),
         "--backbone", "conv", "--max-epochs", "1", "--heldout-frac", "0.25",
         "--cal-frac", "0.25", "--imagined-from", str(tmp_path / "wm")]
    )  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert 0.0 <= metrics["heldout/imagined_balanced_agreement"] <= 1.0
    # Calibration used only the imagined copies of the calibration split (one per episode),
    # not the real ones beside them (which would double the count).
    selected = select_episodes([str(tmp_path / "store")], heldout_frac=0.25, labelled_only=True)
    n_cal = sum(is_heldout(m.id + "/reward-cal", 0.25) for _, m in selected)
    assert n_cal > 0 and metrics["cal/episodes"] == n_cal
    assert json.loads((out / "manifest.json").read_text())["imagined_from"] == str(tmp_path / "wm")
