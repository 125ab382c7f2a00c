"""Policy checkpoints (wmpo_core.checkpoint layout) and the runtime `ChunkPolicy` wrapper.

A policy checkpoint is a verified directory:

    config.json          PolicyConfig fields (backbone configs included for `base`)
    model.safetensors    weights
    normalization.json   q01/q99/mean/std of the training actions (the action tokenizer)
    manifest.json        sha256 of every file + preset, action space, chunk size, image
                         size, instructions seen, training episode ids, metrics, parent

`load_policy_checkpoint(path)` is what policy_node (via
wmpo_core.runtime.policies.load_policy) calls: it verifies hashes, refuses
pickles, checks every weight shape, and returns a `VLAChunkPolicy`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmpo_core.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from wmpo_core.errors import CheckpointError
from wmpo_core.policy.configuration_policy import EPISODE_START, PolicyConfig
from wmpo_core.policy.modeling_policy import VLAPolicyModel, sample_tokens
from wmpo_core.policy.processing_policy import NormalizationStats, PolicyProcessor
from wmpo_core.policy_api import Observation
from wmpo_core.runtime.episode import EpisodeStartFrame

KIND = "policy"
FORMAT = "wmpo-policy/1"


def save_policy_checkpoint(
    out: str | Path,
    model: VLAPolicyModel,
    stats: NormalizationStats,
    *,
    instructions: list[str],
    episode_ids: list[str],
    seeds: list[int] | None = None,
    metrics: dict[str, Any] | None = None,
    name: str = "",
    parent: str = "",
    extra_manifest: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    cfg = model.config
    fields = {
        "policy_format": FORMAT,
        "name": name,
        "parent": parent,
        "preset": cfg.preset,
        "action_space": {"names": list(cfg.action_names), "dims": cfg.action_dim},
        "chunk_size": cfg.chunk_size,
        "n_bins": cfg.n_bins,
        "image_size": cfg.image_size,
        "cameras": list(cfg.cameras),
        "proprio_dim": cfg.proprio_dim,
        "instructions": sorted(set(instructions)),
        "data": {
            "episode_ids": list(episode_ids),
            "n_episodes": len(episode_ids),
            "seeds": sorted(seeds) if seeds else [],
        },
        "metrics": metrics or {},
        "num_parameters": model.num_parameters(),
        **(extra_manifest or {}),
    }
    return save_checkpoint(
        out,
        kind=KIND,
        config=cfg.to_dict(),
        state_dict=model.state_dict(),
        extras={"normalization": stats.to_dict()},
        manifest_fields=fields,
        overwrite=overwrite,
    )


def load_policy(path: str | Path) -> tuple[VLAPolicyModel, PolicyProcessor, dict[str, Any]]:
    """Verify and load a policy checkpoint: (model in eval mode, processor, manifest)."""
    ckpt = load_checkpoint(path, kind=KIND)
    try:
        config = PolicyConfig.from_dict(ckpt.config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/config.json: not a valid policy config ({exc})") from None
    manifest = ckpt.manifest
    names = manifest.get("action_space", {}).get("names")
    if names != list(config.action_names) or manifest.get("chunk_size") != config.chunk_size:
        raise CheckpointError(
            f"{path}: manifest action space / chunk size ({names}, {manifest.get('chunk_size')}) "
            f"disagrees with config.json ({list(config.action_names)}, {config.chunk_size})"
        )
    if "normalization" not in ckpt.extras:
        raise CheckpointError(f"{path}: missing normalization.json (the action tokenizer's stats)")
    try:
        stats = NormalizationStats.from_dict(ckpt.extras["normalization"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/normalization.json: unreadable ({exc})") from None
    if len(stats.q01) != config.action_dim:
        raise CheckpointError(
            f"{path}: normalization.json has {len(stats.q01)} dims, the policy has {config.action_dim}"
        )
    model = VLAPolicyModel(config)
    load_state_strict(model, ckpt.state_dict, str(path))
    model.eval()
    processor = PolicyProcessor(config, stats, model.instruction_vocab)
    return model, processor, manifest


def policy_version(manifest: dict[str, Any]) -> str:
    """The manifest's name, else a short hash of the weights: stable across copies."""
    if manifest.get("name"):
        return str(manifest["name"])
    return "policy-" + manifest["files"]["model.safetensors"][:12]


class VLAChunkPolicy:
    """A trained VLA as a `wmpo_core.policy_api.ChunkPolicy` (greedy unless temperature > 0)."""

    def __init__(
        self,
        model: VLAPolicyModel,
        processor: PolicyProcessor,
        manifest: dict[str, Any],
        temperature: float = 0.0,
        seed: int | None = None,
        device: str = "cpu",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.processor = processor
        self.manifest = manifest
        self.temperature = float(temperature)
        self.action_names = tuple(model.config.action_names)
        self.chunk_size = model.config.chunk_size
        self.image_size = model.config.image_size
        self.version = policy_version(manifest)
        instructions = manifest.get("instructions", [])
        # An empty instruction (none latched yet) means "the task I was trained on" only
        # when that is unambiguous; otherwise predict_chunk refuses it.
        self.default_instruction = instructions[0] if len(instructions) == 1 else ""
        self._seed = seed
        self._generator = torch.Generator()
        self._first_frame = EpisodeStartFrame(model.config.cameras[0])
        self.reset()

    def reset(self) -> None:
        if self._seed is not None:
            self._generator.manual_seed(self._seed)
        self._first_frame.reset()

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        return self.predict_chunks([obs])[0]

    def _with_episode_start(self, observations: list[Observation]) -> list[Observation]:
        """Fill the EPISODE_START camera with the first frame seen since reset()."""
        if all(EPISODE_START in o.images for o in observations):
            return observations
        if len(observations) != 1:
            raise ValueError(
                f"batched observations must carry their own '{EPISODE_START}' image; "
                "only a single stream (predict_chunk after reset()) is filled in"
            )
        obs = observations[0]
        return [dataclasses.replace(obs, images=self._first_frame.add_to(obs.images))]

    def predict_chunks(self, observations: list[Observation]) -> np.ndarray:
        """Batched: float32 [B, K, D] actions for B observations."""
        if self.model.config.reads_episode_start:
            observations = self._with_episode_start(observations)
        frames = np.stack([self.processor.observation_frames(o.images) for o in observations])
        instructions = [o.instruction or self.default_instruction for o in observations]
        if not all(instructions):
            raise ValueError(
                "observation has no instruction and this policy was trained on several "
                f"({self.manifest.get('instructions')}); publish one on /wmpo/instruction"
            )
        proprio = None
        if self.model.config.proprio_dim:
            if any(o.proprio is None for o in observations):
                raise ValueError("this policy needs proprio, the observation has none")
            proprio = np.stack([np.asarray(o.proprio, dtype=np.float32) for o in observations])
        batch = self.processor.batch(frames, instructions, proprio).to(self.device)
        with torch.no_grad():
            logits = self.model(batch)
            tokens = sample_tokens(logits.cpu(), self.temperature, self._generator)
        return self.processor.tokenizer.decode(tokens)


def load_policy_checkpoint(
    path: str | Path, temperature: float = 0.0, seed: int | None = None, device: str = "cpu"
) -> VLAChunkPolicy:
    """A verified checkpoint directory -> a ChunkPolicy (greedy by default) for policy_node."""
    model, processor, manifest = load_policy(path)
    return VLAChunkPolicy(
        model, processor, manifest, temperature=temperature, seed=seed, device=device
    )
