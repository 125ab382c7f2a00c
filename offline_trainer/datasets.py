"""Windows of (frames, actions) over an episode store, memory-mapped.

One dataset serves every trainer: a `WindowSpec` says how many frames before
and after the anchor step t and how many actions before and after it a sample
holds, e.g.

- policy BC: 1 context frame (t) and K future actions (t .. t+K-1);
- world model: c context frames (t-c+1 .. t), K future frames (t+1 .. t+K),
  past actions for the context and the K actions that cause the future frames.

Indices outside the episode are clamped to its first / last step (the paper
fills a missing context by repeating the first frame) and flagged in
`frame_valid` / `action_valid`, so a loss can ignore padding. Frames stay in
the store's `.npy` files opened with `mmap_mode='r'`: a sample reads only its
own frames, and the page cache (not the process) holds the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from wmpo_core.errors import StoreError
from wmpo_core.images import resize_rgb
from wmpo_core.store import Episode, EpisodeMeta, EpisodeStore


@dataclass
class WindowSpec:
    context_frames: int = 1
    """Frames up to and including the anchor step t (t-c+1 .. t)."""
    future_frames: int = 0
    """Frames after the anchor (t+1 .. t+F)."""
    past_actions: int = 0
    """Actions before the anchor (t-P .. t-1)."""
    future_actions: int = 8
    """Actions from the anchor on (t .. t+K-1); action t is applied after seeing frame t."""
    stride: int = 1
    """Step between anchors within an episode."""
    min_valid_future_actions: int = 1
    """Drop anchors with fewer real (unpadded) future actions than this."""
    first_frame: bool = False
    """Append the episode's first frame after the window's frames (a policy reading the
    'episode_start' camera sees the scene before the arm covers it)."""

    def __post_init__(self) -> None:
        for name in ("context_frames", "future_frames", "past_actions", "future_actions"):
            if getattr(self, name) < 0:
                raise ValueError(f"WindowSpec.{name} must be >= 0, got {getattr(self, name)}")
        if self.context_frames + self.future_frames == 0:
            raise ValueError("WindowSpec needs at least one frame (context_frames + future_frames)")
        if self.stride < 1:
            raise ValueError(f"WindowSpec.stride must be >= 1, got {self.stride}")
        if self.min_valid_future_actions > max(self.future_actions, 1):
            raise ValueError(
                f"min_valid_future_actions ({self.min_valid_future_actions}) exceeds "
                f"future_actions ({self.future_actions})"
            )

    @property
    def frame_offsets(self) -> np.ndarray:
        return np.arange(-self.context_frames + 1, self.future_frames + 1)

    @property
    def action_offsets(self) -> np.ndarray:
        return np.arange(-self.past_actions, self.future_actions)


def select_episodes(
    store: EpisodeStore,
    task: str | None = None,
    kinds: Sequence[str] = ("demonstration",),
    successful_rollouts: bool = False,
    drop_failed_demonstrations: bool = False,
    where: Callable[[EpisodeMeta], bool] | None = None,
    successful_takeovers: bool = False,
) -> list[str]:
    """Episode ids to train on: demonstrations of a task, optionally successful rollouts
    and successful expert takeovers (offline_trainer/takeover.py)."""
    ids = []
    for meta in store.metas():
        if task is not None and meta.task != task:
            continue
        keep = meta.kind in kinds
        if meta.kind == "demonstration" and drop_failed_demonstrations and meta.success is False:
            keep = False  # unlabelled (None) demonstrations stay: teleop is presumed good
        if successful_rollouts and meta.kind == "rollout" and meta.success:
            keep = True
        if successful_takeovers and meta.success and meta.taken_over:
            keep = True
        if keep and (where is None or where(meta)):
            ids.append(meta.id)
    return ids


def expert_labelled_from(meta: EpisodeMeta) -> int:
    """First step whose action is the expert's: the takeover step, or 0 for any other
    episode. Behaviour cloning anchors windows from here on (the policy's own actions
    before a takeover are not labels)."""
    return int(meta.extra["takeover_step"]) if meta.taken_over else 0


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset of windows; `get_batch` gathers many at once without collation."""

    def __init__(
        self,
        store: EpisodeStore | str,
        episode_ids: Sequence[str] | None = None,
        spec: WindowSpec | None = None,
        image_size: int | None = None,
        first_anchor: Callable[[EpisodeMeta], int] | None = None,
    ):
        """`first_anchor(meta)`: the episode's first anchor step (default 0); the world model
        trains on every step, behaviour cloning passes `expert_labelled_from`."""
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
        self.spec = spec or WindowSpec()
        self.first_anchor = first_anchor or (lambda meta: 0)
        ids = list(self.store.ids() if episode_ids is None else episode_ids)
        if not ids:
            raise StoreError(f"{self.store.root}: no episodes selected for training")
        self.episodes: list[Episode] = [self.store.load(i, mmap=True) for i in ids]
        dims = {e.actions.shape[1] for e in self.episodes}
        if len(dims) != 1:
            raise StoreError(f"{self.store.root}: episodes disagree on action dims {sorted(dims)}")
        self.action_dim = dims.pop()
        sizes = {e.frames.shape[1:3] for e in self.episodes}
        if image_size is None and len(sizes) != 1:
            raise StoreError(
                f"{self.store.root}: episodes have frame sizes {sorted(sizes)}; pass image_size"
            )
        self.image_size = image_size or next(iter(sizes))[0]
        self._resize = any(s != (self.image_size, self.image_size) for s in sizes)
        self.index = self._build_index()
        if len(self.index) == 0:
            raise StoreError(f"{self.store.root}: episodes too short for window {self.spec}")

    def _build_index(self) -> np.ndarray:
        rows = []
        need = self.spec.min_valid_future_actions if self.spec.future_actions else 0
        for e_idx, ep in enumerate(self.episodes):
            n = len(ep.actions)
            last_anchor = n - max(need, 1)
            for t in range(self.first_anchor(ep.meta), last_anchor + 1, self.spec.stride):
                rows.append((e_idx, t))
        return np.asarray(rows, dtype=np.int64).reshape(-1, 2)

    @property
    def episode_ids(self) -> list[str]:
        return [e.meta.id for e in self.episodes]

    @property
    def instructions(self) -> list[str]:
        return sorted({e.meta.instruction for e in self.episodes})

    def all_actions(self) -> np.ndarray:
        """Every action from each episode's first anchor on (for normalization stats)."""
        return np.concatenate(
            [np.asarray(e.actions[self.first_anchor(e.meta) :], np.float32) for e in self.episodes]
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        e_idx, t = self.index[int(i)]
        ep = self.episodes[e_idx]
        n = len(ep.actions)
        f_idx = t + self.spec.frame_offsets
        a_idx = t + self.spec.action_offsets
        frame_valid = (f_idx >= 0) & (f_idx < n)
        f_idx = np.clip(f_idx, 0, n - 1)
        if self.spec.first_frame:
            f_idx, frame_valid = np.append(f_idx, 0), np.append(frame_valid, True)
        frames = np.asarray(ep.frames[f_idx])
        if self._resize:
            frames = np.stack([resize_rgb(f, self.image_size) for f in frames])
        return {
            "frames": frames,
            "actions": np.asarray(ep.actions[np.clip(a_idx, 0, n - 1)], dtype=np.float32),
            "frame_valid": frame_valid,
            "action_valid": (a_idx >= 0) & (a_idx < n),
            "instruction": ep.meta.instruction,
            "success": bool(ep.meta.success),
            "episode": int(e_idx),
            "t": int(t),
        }

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> dict:
        """Stack samples: frames uint8 [B, F, H, W, 3], actions float32 [B, A, D], ..."""
        items = [self[int(i)] for i in indices]
        out = {k: np.stack([it[k] for it in items]) for k in items[0] if k != "instruction"}
        out["instruction"] = [it["instruction"] for it in items]
        return out


def split_episode_ids(ids: Sequence[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """(train ids, val ids): n_val whole episodes held out, chosen by seed."""
    ids = list(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in val], sorted(val)
