"""The small interface every policy implements, so policy_node can run any of them.

A policy maps one observation to a chunk of K actions x D dims. The scripted
expert, a random policy and the VLA (wmpo_core.policy) all implement it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class Observation:
    images: dict[str, np.ndarray]
    """Camera name ('camera', 'wrist_camera') -> uint8 [H, W, 3] RGB, upright."""
    instruction: str = ""
    proprio: np.ndarray | None = None
    """Joint positions (or other proprioception), when the policy uses it."""
    stamp: float = 0.0
    """Seconds (ROS time) of the observation the chunk is computed from."""
    privileged: dict[str, Any] = field(default_factory=dict)
    """Simulator state for scripted experts only; a learned policy must ignore it."""


@runtime_checkable
class ChunkPolicy(Protocol):
    action_names: tuple[str, ...]
    chunk_size: int
    version: str

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        """Return float32 [chunk_size, len(action_names)]."""
        ...

    def reset(self) -> None:
        """Forget per-episode state (called at episode start)."""
        ...
