"""Action-conditioned pixel world model: presets `tiny` (CPU) and `base` (WMPO, GPU).

from wmpo_core.world_model import load_world_model
wm = load_world_model(path)              # verified checkpoint -> WorldModel
frames = wm.rollout(first_frames, action_chunks)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from wmpo_core.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from wmpo_core.world_model.configuration_world_model import (
    WorldModelConfig,
    WorldModelError,
    base_config,
    tiny_config,
)
from wmpo_core.world_model.rollout import Imagination, WorldModel

KIND = "world_model"

__all__ = [
    "KIND",
    "Imagination",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelError",
    "base_config",
    "build_network",
    "load_world_model",
    "save_world_model",
    "tiny_config",
]


def build_network(config: WorldModelConfig) -> torch.nn.Module:
    if config.preset == "tiny":
        from wmpo_core.world_model.modeling_tiny import TinyWorldModel

        return TinyWorldModel(config)
    from wmpo_core.world_model.modeling_base import BaseWorldModel

    return BaseWorldModel(config)


def save_world_model(
    path: str | Path,
    config: WorldModelConfig,
    net: torch.nn.Module,
    *,
    manifest_fields: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    # The base preset's VAE is frozen and loaded from its own local path, not stored here.
    target = net.stored_module() if hasattr(net, "stored_module") else net
    state = target.state_dict()
    return save_checkpoint(
        path,
        kind=KIND,
        config=config.to_dict(),
        state_dict=state,
        manifest_fields=manifest_fields,
        overwrite=overwrite,
    )


def load_network(path: str | Path) -> tuple[WorldModelConfig, torch.nn.Module, dict]:
    ckpt = load_checkpoint(path, kind=KIND)
    config = WorldModelConfig.from_dict(ckpt.config)
    net = build_network(config)
    target = net.stored_module() if hasattr(net, "stored_module") else net
    load_state_strict(target, ckpt.state_dict, str(path))
    return config, net, ckpt.manifest


def load_world_model(path: str | Path, device: str = "cpu") -> WorldModel:
    """Load a verified world-model checkpoint for imagination (eval mode)."""
    config, net, _ = load_network(path)
    return WorldModel(config, net, device)
