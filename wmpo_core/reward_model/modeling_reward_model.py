"""The success reward model: VideoMAE clip classifier + stride-1 sliding-window verdict."""

from __future__ import annotations

import numpy as np
import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from wmpo_core.reward_model.configuration_reward_model import RewardModelConfig, RewardModelError
from wmpo_core.reward_model.processing_reward_model import (
    check_episode_frames,
    clips_to_pixel_values,
    window_starts,
)


def build_videomae(config: RewardModelConfig) -> VideoMAEForVideoClassification:
    if config.preset == "base":
        try:
            return VideoMAEForVideoClassification.from_pretrained(
                config.base_path, num_labels=2, ignore_mismatched_sizes=True, local_files_only=True
            )
        except OSError as exc:
            raise RewardModelError(
                f"{config.base_path}: not a local VideoMAE checkpoint ({exc}); download "
                "MCG-NJU/videomae-base on a networked machine and pass its directory"
            ) from None
    hf = VideoMAEConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_frames=config.num_frames,
        tubelet_size=config.tubelet_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        num_labels=2,
        use_mean_pooling=True,
    )
    return VideoMAEForVideoClassification(hf)


class ConvClipClassifier(torch.nn.Module):
    """A clip's frames stacked as channels -> 5 conv layers (two stride 2) -> max + mean pool.

    Max-pooling keeps a small, localised cue (the cube in the gripper, or left on the
    table) that averaging over a whole frame dilutes."""

    def __init__(self, config: RewardModelConfig):
        super().__init__()
        c, w = 3 * config.num_frames, config.conv_channels
        half = max(w // 2, 8)
        act = torch.nn.GELU
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(c, half, 3, padding=1), act(),
            torch.nn.Conv2d(half, half, 3, padding=1, stride=2), act(),
            torch.nn.Conv2d(half, w, 3, padding=1), act(),
            torch.nn.Conv2d(w, w, 3, padding=1, stride=2), act(),
            torch.nn.Conv2d(w, w, 3, padding=1), act(),
        )  # fmt: skip
        self.head = torch.nn.Linear(2 * w, 2)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.features(pixel_values.flatten(1, 2))  # [N, F*3, H, W]
        return self.head(torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1))


class RewardModel(torch.nn.Module):
    """P(success) of clips; `detect_success` applies it to a whole episode."""

    def __init__(self, config: RewardModelConfig, hf_config: dict | None = None):
        super().__init__()
        self.config = config
        if config.backbone == "conv":
            self.net = ConvClipClassifier(config)
        elif hf_config is not None:  # a saved model: its architecture, no base weights needed
            self.net = VideoMAEForVideoClassification(VideoMAEConfig.from_dict(hf_config))
        else:
            self.net = build_videomae(config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits [N, 2] of normalised clips [N, F, 3, H, W]."""
        if self.config.backbone == "conv":
            return self.net(pixel_values)
        return self.net(pixel_values=pixel_values).logits

    @torch.no_grad()
    def clip_probs(self, clips: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """P(success) of uint8 clips [N, F, H, W, 3]."""
        dev = next(self.parameters()).device
        out = []
        for i in range(0, len(clips), batch_size):
            x = clips_to_pixel_values(clips[i : i + batch_size]).to(dev)
            out.append(torch.softmax(self(x), dim=-1)[:, 1].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def window_probs(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(P(success) per stride-1 window, the frame index each window ends at)."""
        check_episode_frames(frames, self.config)
        idx = window_starts(len(frames), self.config.num_frames)
        frames = np.asarray(frames)
        return self.clip_probs(frames[idx]), idx[:, -1]

    def detect_success(self, frames: np.ndarray) -> tuple[bool, int]:
        """(success, end_index): the earliest window above the threshold ends the episode
        as a success at its last frame; otherwise (False, T - 1)."""
        probs, ends = self.window_probs(frames)
        above = np.flatnonzero(probs > self.config.threshold)
        if above.size:
            return True, int(ends[above[0]])
        return False, len(frames) - 1

    def detect_success_batch(self, episodes: np.ndarray) -> list[tuple[bool, int]]:
        """`detect_success` for a batch of equal-length episodes [B, T, H, W, 3]."""
        if np.ndim(episodes) != 5:
            raise RewardModelError(
                f"episodes: expected [B, T, H, W, 3], got shape {np.shape(episodes)}"
            )
        b, t = np.shape(episodes)[:2]
        check_episode_frames(episodes[0], self.config)
        idx = window_starts(t, self.config.num_frames)
        clips = np.asarray(episodes)[:, idx]  # [B, n_windows, F, H, W, 3]
        clips = clips.reshape(b * len(idx), *clips.shape[2:])
        probs = self.clip_probs(clips).reshape(b, len(idx))
        out = []
        for p in probs:
            above = np.flatnonzero(p > self.config.threshold)
            out.append((True, int(idx[above[0], -1])) if above.size else (False, t - 1))
        return out
