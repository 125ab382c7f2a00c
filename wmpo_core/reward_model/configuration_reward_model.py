"""Reward-model configuration: a video clip classifier (transformers VideoMAE).

WMPO (arXiv 2511.09515) uses VideoMAE-base on 8-frame 224 px clips, trained with
the final window of a success as positive and earlier windows as negatives, a
threshold chosen by an F1 sweep, applied on stride-1 sliding windows. `tiny` is
the same class at a size that trains on a CPU; `base` loads a local checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from wmpo_core.errors import WmpoError

PRESETS = ("tiny", "base")
BACKBONES = ("videomae", "conv")


class RewardModelError(WmpoError):
    """Bad reward-model input or configuration."""


@dataclass
class RewardModelConfig:
    preset: str = "tiny"
    """'tiny' (random init, CPU) or 'base' (VideoMAE weights from `base_path`)."""
    backbone: str = "videomae"
    """tiny only: 'videomae' (transformers VideoMAEForVideoClassification) or 'conv' (a
    small CNN over the clip's frames stacked as channels, max- and mean-pooled). The
    success cue on a 64 px frame is a 3-4 px cube: the CNN's max-pool finds it where the
    tiny ViT, trained from scratch on ~200 episodes, did not (docs/world_model.md)."""
    conv_channels: int = 64
    """conv: width of the last conv stage."""
    image_size: int = 64
    """Frame side the classifier sees (frames must already have this size)."""
    num_frames: int = 8
    """Clip length in frames (WMPO: 8)."""
    patch_size: int = 8
    """Spatial patch side."""
    tubelet_size: int = 2
    """Frames per temporal patch."""
    hidden_size: int = 96
    """Transformer width (tiny)."""
    num_layers: int = 3
    """Transformer depth (tiny)."""
    num_heads: int = 4
    """Attention heads (tiny)."""
    intermediate_size: int = 192
    """MLP width (tiny)."""
    base_path: str = ""
    """base: local directory of a VideoMAE checkpoint (e.g. MCG-NJU/videomae-base)."""
    threshold: float = 0.5
    """Success probability above which a window counts as success (set by calibration)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise RewardModelError(f"reward preset '{self.preset}' unknown; use one of {PRESETS}")
        if self.backbone not in BACKBONES:
            raise RewardModelError(
                f"reward backbone '{self.backbone}' unknown; use one of {BACKBONES}"
            )
        if self.preset == "base" and self.backbone != "videomae":
            raise RewardModelError(
                "reward preset 'base' is a pretrained VideoMAE: backbone 'videomae'"
            )
        if self.preset == "base" and not self.base_path:
            raise RewardModelError(
                "reward preset 'base' needs base_path: a local VideoMAE checkpoint directory"
            )
        if self.image_size % self.patch_size or self.num_frames % self.tubelet_size:
            raise RewardModelError(
                f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size} "
                f"and num_frames={self.num_frames} of tubelet_size={self.tubelet_size}"
            )
        if self.hidden_size % self.num_heads:
            raise RewardModelError(
                f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise RewardModelError(f"threshold={self.threshold} must be in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise RewardModelError(f"reward-model config has unknown fields {unknown}")
        return cls(**d)
