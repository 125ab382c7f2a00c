"""The one rollout API, the same for every preset.

    wm = load_world_model("assets/world_models/Lift")
    frames = wm.rollout(first_frames, action_chunks)        # [B, n*K, H, W, 3] uint8
    for chunk in wm.rollout_iter(first_frames, chunks): ...  # [B, K, H, W, 3] per chunk

    sess = wm.imagine(first_frames)                          # stateful, for a policy loop
    frames = sess.step(actions)                              # actions [B, K, D] -> [B, K, H, W, 3]

The first real frame is repeated to fill the c context frames; each chunk of K
actions yields K decoded frames, which become the next context: the policy
always sees the frames the world model drew.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from wmpo_core.world_model.configuration_world_model import WorldModelConfig, WorldModelError
from wmpo_core.world_model.processing_world_model import (
    advance,
    check_actions,
    check_frames,
    frames_to_tensor,
    initial_batch,
    tensor_to_frames,
)


class Imagination:
    """A batch of imagined episodes advanced chunk by chunk."""

    def __init__(self, model: WorldModel, first_frames: np.ndarray, seed: int | None = None):
        check_frames(first_frames, model.config, "first_frames")
        if np.ndim(first_frames) != 4:
            raise WorldModelError(
                f"first_frames: expected a batch [B, H, W, 3], got shape {np.shape(first_frames)}"
            )
        self.model = model
        self.batch_size = int(np.shape(first_frames)[0])
        self._first = frames_to_tensor(first_frames).to(model.device)
        self._state: dict | None = None
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.n_steps = 0

    def step(self, actions: np.ndarray | torch.Tensor) -> np.ndarray:
        """Imagine the K frames that follow `actions` [B, K, D]; returns uint8 [B, K, H, W, 3]."""
        return tensor_to_frames(self.step_tensor(actions))

    @torch.no_grad()
    def step_tensor(self, actions: np.ndarray | torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        a = actions.detach().cpu().numpy() if torch.is_tensor(actions) else np.asarray(actions)
        check_actions(a, cfg)
        if a.shape != (self.batch_size, cfg.chunk_size, cfg.action_dim):
            raise WorldModelError(
                f"actions: expected [B={self.batch_size}, K={cfg.chunk_size}, D={cfg.action_dim}], "
                f"got {a.shape}; pass one chunk of K actions per imagined episode"
            )
        # The world model was trained on actions inside the policy's [-1, 1] range.
        at = torch.as_tensor(np.clip(a, -1, 1), dtype=torch.float32, device=self.model.device)
        if self._state is None:
            self._state = initial_batch(self._first, at, cfg)
        else:
            self._state = advance(self._state, self._last, at)
        self._last = self.model.net.predict(self._state, generator=self.generator)
        self.n_steps += 1
        return self._last


class WorldModel:
    """A network (any preset) plus its configuration, on a device, in eval mode."""

    def __init__(self, config: WorldModelConfig, net: torch.nn.Module, device: str = "cpu"):
        self.config = config
        self.net = net.to(device).eval()
        self.device = torch.device(device)

    def imagine(self, first_frames: np.ndarray, seed: int | None = None) -> Imagination:
        return Imagination(self, first_frames, seed)

    def rollout_iter(
        self,
        first_frames: np.ndarray,
        action_chunks: np.ndarray | Iterable[np.ndarray],
        seed: int | None = None,
    ) -> Iterator[np.ndarray]:
        """Yield uint8 [B, K, H, W, 3] per chunk. `action_chunks`: [B, n, K, D] or an
        iterable of [B, K, D] chunks (e.g. produced by a policy as frames arrive)."""
        session = self.imagine(first_frames, seed)
        if isinstance(action_chunks, np.ndarray | torch.Tensor):
            arr = np.asarray(action_chunks)
            if arr.ndim != 4:
                raise WorldModelError(
                    f"action_chunks: expected [B, n_chunks, K, D], got shape {arr.shape}"
                )
            action_chunks = (arr[:, i] for i in range(arr.shape[1]))
        for chunk in action_chunks:
            yield session.step(chunk)

    def rollout(
        self, first_frames: np.ndarray, action_chunks: np.ndarray, seed: int | None = None
    ) -> np.ndarray:
        """All imagined frames [B, n*K, H, W, 3] (the first real frame not included)."""
        chunks = list(self.rollout_iter(first_frames, action_chunks, seed))
        if not chunks:
            raise WorldModelError("action_chunks: no chunks given (n_chunks = 0)")
        return np.concatenate(chunks, axis=1)

    def rollout_actions(
        self, first_frames: np.ndarray, actions: np.ndarray, seed: int | None = None
    ) -> np.ndarray:
        """Imagine a flat action sequence [B, T, D]: padded with zeros to whole chunks, the
        result trimmed to T frames (frame t+1 follows action t)."""
        a = np.asarray(actions, dtype=np.float32)
        check_actions(a, self.config)
        if a.ndim != 3 or a.shape[1] == 0:
            raise WorldModelError(f"actions: expected [B, T>0, D], got shape {a.shape}")
        k = self.config.chunk_size
        n = -(-a.shape[1] // k)
        pad = np.zeros((a.shape[0], n * k - a.shape[1], a.shape[2]), np.float32)
        chunks = np.concatenate([a, pad], axis=1).reshape(a.shape[0], n, k, a.shape[2])
        return self.rollout(first_frames, chunks, seed)[:, : a.shape[1]]
