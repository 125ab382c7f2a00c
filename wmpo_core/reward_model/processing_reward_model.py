"""Clips in, probabilities out: normalisation, sliding windows, training clips, calibration."""

from __future__ import annotations

import numpy as np
import torch

from wmpo_core.reward_model.configuration_reward_model import RewardModelConfig, RewardModelError

# VideoMAE's ImageNet normalisation (its pretrained weights expect it).
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)


def check_episode_frames(frames: np.ndarray, config: RewardModelConfig) -> None:
    s = config.image_size
    shape = tuple(np.shape(frames))
    if len(shape) != 4 or shape[1:] != (s, s, 3):
        raise RewardModelError(
            f"frames: expected an episode [T, {s}, {s}, 3] uint8 (reward model image_size={s}), "
            f"got shape {shape}; resize frames to {s}x{s}"
        )
    if shape[0] == 0:
        raise RewardModelError("frames: empty episode (0 frames); nothing to judge")
    if np.asarray(frames).dtype != np.uint8:
        raise RewardModelError(f"frames: expected uint8, got {np.asarray(frames).dtype}")


def clips_to_pixel_values(clips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, F, H, W, 3] -> float [N, F, 3, H, W], ImageNet-normalised."""
    x = clips if torch.is_tensor(clips) else torch.from_numpy(np.array(clips, copy=True))
    x = x.movedim(-1, -3).float() / 255.0
    return (x - MEAN) / STD


def window_starts(n_frames: int, num_frames: int) -> np.ndarray:
    """Frame indices [n_windows, F] of stride-1 windows; the first frame repeated when the
    episode is shorter than a clip. Window i ends at frame i + F - 1 (clipped)."""
    ends = np.arange(min(num_frames - 1, n_frames - 1), n_frames)
    idx = ends[:, None] - np.arange(num_frames - 1, -1, -1)[None]
    return np.clip(idx, 0, None)


def training_clips(
    frames: np.ndarray,
    success: bool,
    num_frames: int,
    rng: np.random.Generator,
    success_step: int | None = None,
    stride: int = 8,
) -> list[tuple[np.ndarray, int]]:
    """Clip indices and labels of one episode (WMPO recipe, denser negatives).

    The final window of a success is positive (with a 0-2 frame jitter); when the step
    at which the sim first flagged success is known, two more positives end anywhere
    from that step on. Negatives are *stratified*: one window ending in every `stride`
    frames of a failure (its final window included), and of a success before it
    succeeded (3 frames of margin; without a known step, its first 75 %). A failure's
    hardest windows (the arm rising with nothing in the gripper) are then always seen:
    with only a few random negatives the sliding-window verdict fires on them.
    """
    t = len(frames)
    out: list[tuple[np.ndarray, int]] = []

    def clip(end: int) -> np.ndarray:
        return np.clip(np.arange(end - num_frames + 1, end + 1), 0, None)

    def negatives(hi: int) -> list[tuple[np.ndarray, int]]:
        """One window ending in each stride-long stretch of [0, hi)."""
        ends = [int(rng.integers(lo, min(lo + stride, hi))) for lo in range(0, hi, stride)]
        return [(clip(e), 0) for e in ends]

    if success:
        out.append((clip(t - 1 - int(rng.integers(0, min(3, t)))), 1))
        if success_step is not None and 3 <= success_step < t:
            # Any window ending once the sim flagged success is a success: the verdict fires
            # on the earliest window above threshold, so those are the ones that matter.
            out += [(clip(int(rng.integers(success_step, t))), 1) for _ in range(2)]
            out += negatives(success_step - 2)
        else:
            out += negatives(max(1, int(0.75 * t)))
    else:
        out.append((clip(t - 1), 0))
        out += negatives(t)
    return out


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold maximising F1 of `scores > threshold` against binary `labels`.

    Candidates are midpoints between sorted distinct scores; ties in F1 go to the
    largest margin (the midpoint of the best run). Returns (threshold, f1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.size == 0:
        raise RewardModelError(
            f"calibration: need equal-length non-empty scores and labels, got {s.shape} / {y.shape}"
        )
    if not y.any():
        raise RewardModelError("calibration: no positive (success) examples in the held-out split")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    f1s = []
    for c in cands:
        pred = s > c
        tp = float((pred & y).sum())
        fp = float((pred & ~y).sum())
        fn = float((~pred & y).sum())
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1e-9))
    f1s = np.array(f1s)
    best = np.flatnonzero(np.isclose(f1s, f1s.max()))
    thr = float(cands[best[len(best) // 2]])
    return float(np.clip(thr, 0.0, 1.0)), float(f1s.max())
