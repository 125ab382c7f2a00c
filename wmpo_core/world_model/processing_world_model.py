"""Frames and actions in and out of the world model, and training windows.

Frames enter as uint8 [..., H, W, 3] (what cameras, the episode store and the
policy use) and leave the same way; inside they are float [..., 3, H, W] in
[-1, 1]. Every check that can catch a user mistake (frame size, action
dimension, empty episode) raises WorldModelError naming what was expected.

Index convention (the episode store's): action t is applied after observing
frame t, so frame t+1 results from action t. A window ending its context at
frame s predicts frames s+1..s+K from actions s..s+K-1; its context is frames
s-c+1..s (frame 0 repeated before the episode starts) and its past actions
s-c..s-1 (flagged invalid before the start, as at the start of a rollout).
"""

from __future__ import annotations

import numpy as np
import torch

from wmpo_core.world_model.configuration_world_model import WorldModelConfig, WorldModelError


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1]."""
    x = frames if torch.is_tensor(frames) else torch.from_numpy(np.array(frames, copy=True))
    return x.movedim(-1, -3).float().div(127.5).sub(1.0)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    y = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return y.movedim(-3, -1).cpu().numpy()


def check_frames(frames: np.ndarray, config: WorldModelConfig, what: str = "first_frames") -> None:
    s = config.image_size
    shape = tuple(np.shape(frames))
    if len(shape) < 3 or shape[-3:] != (s, s, 3):
        raise WorldModelError(
            f"{what}: expected frames [..., {s}, {s}, 3] uint8 for this world model "
            f"(image_size={s}), got shape {shape}; resize frames to {s}x{s}"
        )
    if shape[0] == 0:
        raise WorldModelError(f"{what}: empty batch/episode (0 frames)")
    if np.asarray(frames).dtype != np.uint8:
        raise WorldModelError(f"{what}: expected uint8 frames, got {np.asarray(frames).dtype}")


def check_actions(actions: np.ndarray, config: WorldModelConfig, what: str = "actions") -> None:
    shape = tuple(np.shape(actions))
    if len(shape) < 1 or shape[-1] != config.action_dim:
        raise WorldModelError(
            f"{what}: expected action dimension {config.action_dim} (last axis), got shape "
            f"{shape}; the world model was trained on {config.action_dim}-D actions"
        )
    if not np.isfinite(np.asarray(actions, dtype=np.float32)).all():
        raise WorldModelError(f"{what}: actions contain NaN/Inf")


class WindowDataset(torch.utils.data.Dataset):
    """All (episode, s) windows of a list of episodes with at least one chunk of future.

    Each window carries `n_chunks` chunks of future actions and target frames; near an
    episode's end the chunks past it are padded (edge values) and `n_valid` says how many
    are real, so training may unroll only that deep. Episodes are (frames uint8 [T,H,W,3],
    actions float32 [T,D]) pairs held in RAM (a few hundred 64 px episodes are ~100 MB).
    """

    def __init__(
        self,
        episodes: list[tuple[np.ndarray, np.ndarray]],
        config: WorldModelConfig,
        n_chunks: int = 2,
    ):
        self.config = config
        self.n_chunks = n_chunks
        self.episodes = []
        self.index: list[tuple[int, int]] = []
        k = config.chunk_size
        for frames, actions in episodes:
            check_frames(frames, config, "episode frames")
            check_actions(actions, config, "episode actions")
            frames = np.ascontiguousarray(frames)
            actions = np.clip(np.asarray(actions, dtype=np.float32), -1, 1)
            cum = np.concatenate([np.zeros((1, 3), np.float32), np.cumsum(actions[:, :3], 0)])
            e = len(self.episodes)
            self.episodes.append((frames, actions, cum.astype(np.float32)))
            self.index.extend((e, s) for s in range(len(frames) - k))
        if not self.index:
            raise WorldModelError(
                f"no training windows: every episode is shorter than {k + 1} frames"
            )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, s = self.index[i]
        frames, actions, cum = self.episodes[e]
        c, k = self.config.context_frames, self.config.chunk_size
        ctx = np.clip(np.arange(s - c + 1, s + 1), 0, None)
        past = np.arange(s - c, s)
        valid = past >= 0
        past_actions = np.where(valid[:, None], actions[np.clip(past, 0, None)], 0.0)
        last = len(frames) - 1  # frame `last` results from action `last - 1`
        fut = np.minimum(np.arange(s, s + self.n_chunks * k), last - 1)
        return {
            "context": torch.from_numpy(frames[ctx]),
            "past_actions": torch.from_numpy(past_actions.astype(np.float32)),
            "past_valid": torch.from_numpy(valid.astype(np.float32)),
            "actions": torch.from_numpy(actions[fut]),
            "cum": torch.from_numpy(cum[s]),
            "target": torch.from_numpy(frames[fut + 1]),
            "n_valid": torch.tensor(min(self.n_chunks, (last - s) // k)),
        }


def to_model_batch(raw: dict[str, torch.Tensor], chunk: int, config: WorldModelConfig) -> dict:
    """Slice chunk `chunk` of a raw window batch and convert frames to [-1, 1] floats."""
    k = config.chunk_size
    sl = slice(chunk * k, (chunk + 1) * k)
    return {
        "context": frames_to_tensor(raw["context"]),
        "past_actions": raw["past_actions"],
        "past_valid": raw["past_valid"],
        "actions": raw["actions"][:, sl],
        "cum": raw["cum"],
        "target": frames_to_tensor(raw["target"][:, sl]),
    }


def advance(batch: dict, predicted: torch.Tensor, next_actions: torch.Tensor) -> dict:
    """The conditioning for the next chunk after `predicted` [B,K,3,H,W] frames.

    Used both by rollouts and by training on the model's own predictions, so the
    two cannot disagree about what the model sees after its first chunk.
    """
    c = batch["context"].shape[1]
    k = predicted.shape[1]
    hist_frames = torch.cat([batch["context"], predicted], dim=1)[:, -c:]
    hist_actions = torch.cat([batch["past_actions"], batch["actions"]], dim=1)[:, -c:]
    hist_valid = torch.cat(
        [batch["past_valid"], torch.ones_like(batch["past_valid"][:, :1]).expand(-1, k)], dim=1
    )[:, -c:]
    return {
        "context": hist_frames,
        "past_actions": hist_actions,
        "past_valid": hist_valid,
        "actions": next_actions,
        "cum": batch["cum"] + batch["actions"][:, :, :3].sum(dim=1),
    }


def initial_batch(first: torch.Tensor, actions: torch.Tensor, config: WorldModelConfig) -> dict:
    """Conditioning at the start of a rollout: the first frame repeated c times, no past."""
    b = first.shape[0]
    c = config.context_frames
    return {
        "context": first[:, None].expand(-1, c, -1, -1, -1).contiguous(),
        "past_actions": first.new_zeros(b, c, config.action_dim),
        "past_valid": first.new_zeros(b, c),
        "actions": actions,
        "cum": first.new_zeros(b, 3),
    }
