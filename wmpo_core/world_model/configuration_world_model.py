"""World-model configuration: one dataclass for every preset.

`tiny` is what trains on 2 CPU cores (a residual U-Net predicting a chunk of K
frames from c context frames, actions through FiLM; see docs/world_model.md for
why it is deterministic by default). `base` follows WMPO (arXiv 2511.09515,
Sec. 3): a 2D VAE (diffusers AutoencoderKL) and a transformer denoiser over c
context and K future latents, per-frame action adaLN, rectified flow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import DEFAULT_CHUNK_SIZE, EE_ACTION_DIM

PRESETS = ("tiny", "base")
VARIANTS = ("deterministic", "flow")


class WorldModelError(WmpoError):
    """Bad world-model input or configuration (frame size, action dimension, ...)."""


@dataclass
class WorldModelConfig:
    preset: str = "tiny"
    """'tiny' (CPU, residual U-Net) or 'base' (VAE + transformer denoiser, GPU)."""
    variant: str = "deterministic"
    """tiny only: 'deterministic' (L1 regression) or 'flow' (rectified flow, few Euler steps).
    base is always 'flow'."""
    image_size: int = 64
    """Square frame side in pixels (frames are [H, W, 3] uint8, H = W = image_size)."""
    action_dim: int = EE_ACTION_DIM
    """Action dimension D (7: normalized EE delta + gripper)."""
    context_frames: int = 4
    """c: real/imagined frames the model sees; the first frame is repeated to fill them."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """K: frames predicted per call, one per action of a policy chunk."""
    sampling_steps: int = 4
    """Euler steps of the rectified-flow sampler (flow variant and base)."""
    # --- tiny U-Net -------------------------------------------------------------
    unshuffle: int = 2
    """Pixel-unshuffle factor: 64 px frames become 32x32 maps with 12 channels per frame."""
    channels: tuple[int, ...] = (48, 64, 96)
    """U-Net widths per resolution level."""
    cond_dim: int = 256
    """Width of the action (and time) conditioning vector that drives FiLM."""
    cumulative_actions: bool = True
    """Also condition on the running sum of translation actions since the episode start
    (a dead-reckoned end-effector offset), so an arm that drifted sideways is not
    'snapped' back onto the object by the pixels alone."""
    # --- base transformer -------------------------------------------------------
    vae_path: str = ""
    """Local directory of a diffusers AutoencoderKL (base). Empty: a tiny random VAE
    built from `vae_config` (tests only)."""
    vae_config: dict[str, Any] = field(default_factory=dict)
    """AutoencoderKL kwargs used when `vae_path` is empty."""
    latent_channels: int = 4
    """VAE latent channels (SD/SDXL VAEs: 4)."""
    latent_scale: float = 0.13025
    """Latent scaling factor (SDXL VAE: 0.13025)."""
    vae_downsample: int = 8
    """Spatial downsampling of the VAE (frames / latents)."""
    patch_size: int = 2
    """Latent patch side for the transformer's tokens."""
    hidden_size: int = 384
    """Transformer width."""
    depth: int = 12
    """Transformer blocks."""
    num_heads: int = 6
    """Attention heads."""
    context_noise_t0: float = 15 / 1000
    """Noise level of context latents in training and sampling (WMPO: t0 = 15/1000)."""
    logit_normal_mean: float = 0.0
    """Mean of the logit-normal distribution of training noise levels t."""
    logit_normal_std: float = 1.0
    """Std of the logit-normal distribution of training noise levels t."""

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.preset not in PRESETS:
            raise WorldModelError(
                f"world model preset '{self.preset}' unknown; use one of {PRESETS}"
            )
        if self.variant not in VARIANTS:
            raise WorldModelError(f"variant '{self.variant}' unknown; use one of {VARIANTS}")
        if self.preset == "base" and self.variant != "flow":
            self.variant = "flow"  # base is rectified flow by construction
        if self.context_frames < 1 or self.chunk_size < 1 or self.action_dim < 1:
            raise WorldModelError(
                f"context_frames={self.context_frames}, chunk_size={self.chunk_size}, "
                f"action_dim={self.action_dim}: all must be >= 1"
            )
        if self.sampling_steps < 1:
            raise WorldModelError(f"sampling_steps={self.sampling_steps} must be >= 1")
        side = self.unshuffle * 2 ** (len(self.channels) - 1)
        if self.preset == "tiny" and self.image_size % side:
            raise WorldModelError(
                f"image_size={self.image_size} must be a multiple of {side} "
                f"(unshuffle {self.unshuffle} x {len(self.channels) - 1} downsamplings)"
            )
        if self.preset == "base":
            side = self.vae_downsample * self.patch_size
            if self.image_size % side:
                raise WorldModelError(
                    f"image_size={self.image_size} must be a multiple of {side} "
                    f"(VAE /{self.vae_downsample} x patch {self.patch_size})"
                )
            if self.hidden_size % self.num_heads:
                raise WorldModelError(
                    f"hidden_size={self.hidden_size} not divisible by num_heads={self.num_heads}"
                )
        if not 0.0 <= self.context_noise_t0 < 1.0:
            raise WorldModelError(f"context_noise_t0={self.context_noise_t0} must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise WorldModelError(f"world-model config has unknown fields {unknown}")
        return cls(**d)


def tiny_config(**overrides: Any) -> WorldModelConfig:
    return WorldModelConfig(preset="tiny", **overrides)


def base_config(**overrides: Any) -> WorldModelConfig:
    return WorldModelConfig(preset="base", variant="flow", image_size=256, **overrides)
