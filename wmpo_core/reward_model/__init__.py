"""Success reward model: VideoMAE clip classifier on stride-1 sliding windows.

rm = load_reward_model(path)
success, end_index = rm.detect_success(frames)   # frames uint8 [T, H, W, 3]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wmpo_core.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from wmpo_core.reward_model.configuration_reward_model import RewardModelConfig, RewardModelError
from wmpo_core.reward_model.modeling_reward_model import RewardModel
from wmpo_core.reward_model.processing_reward_model import calibrate_threshold

KIND = "reward_model"

__all__ = [
    "KIND",
    "RewardModel",
    "RewardModelConfig",
    "RewardModelError",
    "calibrate_threshold",
    "load_reward_model",
    "save_reward_model",
]


def save_reward_model(
    path: str | Path, model: RewardModel, manifest_fields: dict[str, Any] | None = None
) -> Path:
    return save_checkpoint(
        path,
        kind=KIND,
        config=model.config.to_dict(),
        state_dict=model.state_dict(),
        extras={"videomae_config": model.net.config.to_dict()}
        if model.config.backbone == "videomae"
        else {},
        manifest_fields=manifest_fields,
        overwrite=True,
    )


def load_reward_model(path: str | Path, device: str = "cpu") -> RewardModel:
    """Load a verified reward-model checkpoint (eval mode) with its calibrated threshold."""
    ckpt = load_checkpoint(path, kind=KIND)
    config = RewardModelConfig.from_dict(ckpt.config)
    if config.backbone == "videomae" and "videomae_config" not in ckpt.extras:
        raise RewardModelError(f"{path}: missing videomae_config.json; re-export the reward model")
    model = RewardModel(config, hf_config=ckpt.extras.get("videomae_config"))
    load_state_strict(model, ckpt.state_dict, str(path))
    return model.to(device).eval()
