"""Thin adapters from the project's models to the GRPO rollout Protocols (rollout.py).

- `VLAGRPOPolicy`: wmpo_core.policy's VLAPolicyModel + PolicyProcessor ->
  sample_chunk / token_logits. Imagined frames are resized to the policy's
  image size exactly as on the robot (processing_policy.prepare_image).
- `WorldModelImagination`: wmpo_core.world_model.WorldModel -> start/step.
- `RewardDetector`: wmpo_core.reward_model.RewardModel -> batched detect_success
  with `window` = the clip length, frames resized to the reward model's size.

Model imports happen inside functions so this module (and `wmpo train grpo --help`)
loads without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo_core.errors import WmpoError
from wmpo_core.images import resize_rgb


def _resize_batch(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [..., H, W, 3] -> [..., size, size, 3]."""
    if frames.shape[-3:-1] == (size, size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([resize_rgb(np.ascontiguousarray(f), size) for f in flat])
    return out.reshape(*frames.shape[:-3], size, size, 3)


class VLAGRPOPolicy(torch.nn.Module):
    """The VLA as a TrainablePolicy (the main camera, and optionally the episode's first
    frame of it; no proprio: the world model imagines only the main camera).

    Images are uint8 [B, H, W, 3], or [B, 2, H, W, 3] (current, first frame) for a policy
    that `reads_first_frame`."""

    def __init__(self, model: Any, processor: Any, manifest: dict[str, Any], device: str = "cpu"):
        from wmpo_core.policy.configuration_policy import EPISODE_START

        super().__init__()
        cfg = model.config
        if tuple(cfg.cameras) not in (("camera",), ("camera", EPISODE_START)) or cfg.proprio_dim:
            raise WmpoError(
                f"GRPO in imagination needs a policy that reads only the main camera (and "
                f"its first frame, '{EPISODE_START}') and no proprio: the world model imagines "
                f"nothing else. This one reads cameras {list(cfg.cameras)} with "
                f"proprio_dim={cfg.proprio_dim}. Train a single-camera policy for WMPO"
            )
        self.reads_first_frame = bool(cfg.reads_episode_start)
        self.model = model.to(device)
        self.processor = processor
        self.manifest = manifest
        self.config = cfg
        self.device = torch.device(device)

    def _batch(self, images: torch.Tensor, instructions: Sequence[str]) -> Any:
        frames = _resize_batch(np.asarray(images.cpu()), self.config.image_size)
        if self.reads_first_frame != (frames.ndim == 5):
            wanted = (
                "[B, 2, H, W, 3] (current, first frame)"
                if self.reads_first_frame
                else "[B, H, W, 3]"
            )
            raise WmpoError(f"images {tuple(frames.shape)}: this policy reads {wanted}")
        frames = frames if frames.ndim == 5 else frames[:, None]
        return self.processor.batch(frames, list(instructions)).to(self.device)

    def token_logits(self, images: torch.Tensor, instructions: Sequence[str]) -> torch.Tensor:
        return self.model(self._batch(images, instructions)).float()  # stays on the device

    @torch.no_grad()
    def sample_chunk(
        self, images: torch.Tensor, instructions: Sequence[str], temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from wmpo_core.policy.modeling_policy import sample_tokens, token_log_probs

        logits = self.token_logits(images, instructions)
        tokens = sample_tokens(logits, temperature)
        logp = token_log_probs(logits, tokens, temperature)
        actions = torch.from_numpy(self.processor.tokenizer.decode(tokens))
        return actions, tokens.cpu(), logp.cpu()  # rollouts are stored on the CPU

    def save(self, path: Path, manifest_fields: dict[str, Any], parent: str) -> Path:
        """A policy checkpoint policy_node loads (normalization stats included)."""
        from wmpo_core.policy.checkpoint_policy import save_policy_checkpoint

        data = self.manifest.get("data", {})
        return save_policy_checkpoint(
            path,
            self.model,
            self.processor.stats,
            instructions=list(self.manifest.get("instructions", [])),
            episode_ids=list(data.get("episode_ids", [])),
            metrics=manifest_fields.get("metrics", {}),
            name="",
            parent=parent,
            extra_manifest={k: v for k, v in manifest_fields.items() if k != "metrics"},
            overwrite=True,
        )


class WorldModelImagination:
    """WorldModel.imagine as the Imagination protocol."""

    def __init__(self, world_model: Any):
        self.world_model = world_model
        self.net = world_model.net  # found by the trainer and kept frozen
        self.image_size = int(world_model.config.image_size)

    def start(self, first_frames: torch.Tensor) -> Any:
        return self.world_model.imagine(np.asarray(first_frames.cpu()))


class RewardDetector:
    """RewardModel.detect_success_batch as the SuccessDetector protocol."""

    def __init__(self, reward_model: Any):
        self.net = reward_model  # an nn.Module: frozen by the trainer
        self.window = int(reward_model.config.num_frames)
        self.image_size = int(reward_model.config.image_size)

    def detect_success(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clips = _resize_batch(np.asarray(frames.cpu()), self.image_size)
        verdicts = self.net.detect_success_batch(clips)
        success = torch.tensor([bool(s) for s, _ in verdicts])
        end = torch.tensor([int(e) if s else -1 for s, e in verdicts], dtype=torch.long)
        return success, end


class ResizedInitialStates:
    """Initial states resized to the world model's frame size."""

    def __init__(self, inner: Any, size: int):
        self.inner = inner
        self.size = size

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        frames, instructions = self.inner.sample(n, generator)
        return torch.from_numpy(_resize_batch(np.asarray(frames), self.size)), instructions


def load_models(policy: str, world_model: str, reward: str, device: str = "cpu") -> tuple:
    """Load the three verified checkpoints as (VLAGRPOPolicy, imagination, reward detector)."""
    try:
        from wmpo_core.policy.checkpoint_policy import load_policy
        from wmpo_core.reward_model import load_reward_model
        from wmpo_core.world_model import load_world_model
    except ImportError as exc:
        raise WmpoError(
            f"GRPO needs the policy, world-model and reward-model packages, but '{exc.name}' is "
            "not available in this build; update the checkout / run `make setup`"
        ) from None
    model, processor, manifest = load_policy(policy)
    wm = load_world_model(world_model, device)
    pc, wc = model.config, wm.config
    if (pc.chunk_size, pc.action_dim) != (wc.chunk_size, wc.action_dim):
        raise WmpoError(
            f"{policy}: the policy emits chunks of {pc.chunk_size} x {pc.action_dim} actions but "
            f"the world model {world_model} steps on {wc.chunk_size} x {wc.action_dim}; train them "
            "with the same chunk size and action space"
        )
    return (
        VLAGRPOPolicy(model, processor, manifest, device),
        WorldModelImagination(wm),
        RewardDetector(load_reward_model(reward, device)),
    )
