"""Configuration of the VLA chunk policy (one dataclass: every default lives here).

The policy maps image(s) + an instruction (+ optional proprio) to a chunk of
K actions x D dims, each a discrete token out of `n_bins` (256, as in
OpenVLA / OpenVLA-OFT), all K*D tokens decoded in one parallel forward pass.

Two presets share that interface:

- `tiny`: a small conv encoder, hashed-word instruction embedding and a small
  transformer; trains on a CPU in minutes.
- `base`: a transformers vision tower (SiglipVisionModel) + a transformers
  decoder LM (Llama / Qwen2) loaded from a local directory (`backbone_path`
  with `vision/` and `language/` subfolders written by `save_pretrained`). The
  backbone configs are copied into this config, so a saved checkpoint is
  self-contained and loads without the original directory.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# EPISODE_START: ChunkPolicy fills it from the first observation after reset() (policy_node
# passes it itself); training windows append frame 0.
from wmpo_core.interfaces import DEFAULT_CHUNK_SIZE, EE_ACTION_NAMES, EPISODE_START

PRESETS = ("tiny", "base")
__all__ = ["EPISODE_START", "PRESETS", "PolicyConfig", "preset_config"]


@dataclass
class PolicyConfig:
    preset: str = "tiny"
    """'tiny' (CPU, from scratch) or 'base' (pretrained transformers backbone from a local path)."""
    action_names: tuple[str, ...] = EE_ACTION_NAMES
    """Names of the D action dimensions, in order (the robot must agree on them)."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """K: actions per chunk, executed open-loop (WMPO / OpenVLA-OFT use 8)."""
    n_bins: int = 256
    """Discrete bins per action dim over the q01/q99-normalized range [-1, 1]."""
    image_size: int = 64
    """Square side the camera image is resized to before the model sees it."""
    cameras: tuple[str, ...] = ("camera",)
    """Observation image keys the policy reads, in order; EPISODE_START may come last."""
    proprio_dim: int = 0
    """Length of the proprio vector (0 = the policy does not use proprio)."""

    # -- instruction ---------------------------------------------------------------
    instruction_vocab: int = 1024
    """Hash buckets for instruction words (tiny; base uses the LM's vocab size if smaller)."""
    max_instruction_tokens: int = 10
    """Instruction words kept (longer instructions are truncated; the task instructions have 4-8)."""

    # -- tiny preset -------------------------------------------------------------------
    vision_channels: tuple[int, ...] = (32, 64, 96)
    """Channels of the stride-2 conv stages of the tiny vision encoder."""
    vision_grid: int = 4
    """The conv feature map is pooled to grid x grid vision tokens."""
    keypoints: int = 32
    """Spatial-softmax keypoints over the last conv map (robomimic-style): each is an
    expected (x, y) image position, precise to sub-pixels where pooled tokens are coarse;
    they enter as `keypoint_tokens` extra tokens. 0 turns them off."""
    keypoint_tokens: int = 2
    """Tokens the keypoint coordinates are projected to."""
    d_model: int = 128
    """Transformer width (tiny)."""
    n_layers: int = 3
    """Transformer layers (tiny)."""
    n_heads: int = 4
    """Attention heads (tiny)."""
    ff_mult: int = 2
    """Feed-forward width = ff_mult * d_model (tiny)."""
    dropout: float = 0.0
    """Dropout in the transformer (tiny)."""

    # -- base preset -------------------------------------------------------------------
    backbone_path: str = ""
    """Local directory with `vision/` and `language/` save_pretrained folders (base only;
    only read when the backbone configs below are empty, i.e. when first built)."""
    vision_config: dict[str, Any] = field(default_factory=dict)
    """SiglipVisionConfig fields (filled from backbone_path on first build)."""
    text_config: dict[str, Any] = field(default_factory=dict)
    """Decoder LM config fields incl. 'model_type' (filled from backbone_path on first build)."""

    def __post_init__(self) -> None:
        self.action_names = tuple(self.action_names)
        self.cameras = tuple(self.cameras)
        self.vision_channels = tuple(int(c) for c in self.vision_channels)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got '{self.preset}'")
        if not self.action_names:
            raise ValueError("action_names must name at least one action dimension")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if not 2 <= self.n_bins <= 65536:
            raise ValueError(f"n_bins must be in [2, 65536], got {self.n_bins}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        if not self.cameras:
            raise ValueError("cameras must name at least one observation image key")
        if EPISODE_START in self.cameras[:-1] or self.cameras == (EPISODE_START,):
            raise ValueError(
                f"'{EPISODE_START}' must come last, after a real camera: got {list(self.cameras)}"
            )
        if self.keypoints < 0 or (self.keypoints and self.keypoint_tokens < 1):
            raise ValueError(
                f"keypoints must be >= 0 with keypoint_tokens >= 1, got {self.keypoints}, "
                f"{self.keypoint_tokens}"
            )
        if self.proprio_dim < 0:
            raise ValueError(f"proprio_dim must be >= 0, got {self.proprio_dim}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.preset == "base" and not (self.backbone_path or self.vision_config):
            raise ValueError(
                "preset 'base' needs backbone_path (a local save_pretrained directory)"
            )

    @property
    def reads_episode_start(self) -> bool:
        return self.cameras[-1] == EPISODE_START

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def n_queries(self) -> int:
        """K*D learned query tokens, one per action token."""
        return self.chunk_size * self.action_dim

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("action_names", "cameras", "vision_channels"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown policy config fields {unknown} (newer checkpoint format?)")
        return cls(**data)


def preset_config(preset: str, **overrides: Any) -> PolicyConfig:
    """The defaults of a preset with overrides (e.g. image_size, backbone_path)."""
    return PolicyConfig(preset=preset, **overrides)
