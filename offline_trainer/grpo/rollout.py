"""Imagined rollouts: the policy acts inside the world model, the reward model ends them.

Written against three small Protocols so the loop is tested with toy stand-ins and
wired to the real models (wmpo_core.policy / world_model / reward_model) by thin
adapters. Conventions (all torch tensors, batch first):

- frames are uint8 [.., H, W, 3] RGB, the format the policy sees on the robot;
- a chunk is K actions x D dims; tokens are long [B, K, D] in [0, V) (V = 256 bins);
- log-probs are per token, float [B, K, D], at the sampling temperature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from wmpo_core.errors import WmpoError


@runtime_checkable
class SamplingPolicy(Protocol):
    """What the rollout needs from the policy (the VLA implements it)."""

    def sample_chunk(
        self, images: torch.Tensor, instructions: Sequence[str], temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images uint8 [B, H, W, 3] -> (actions float [B, K, D] in [-1, 1] (decoded bins),
        tokens long [B, K, D], logprobs float [B, K, D] = log softmax(logits / temperature)
        at the sampled tokens). Draws from the global torch RNG; called under no_grad."""
        ...


@runtime_checkable
class TrainablePolicy(SamplingPolicy, Protocol):
    """What the GRPO update needs on top: differentiable logits for given observations."""

    def token_logits(self, images: torch.Tensor, instructions: Sequence[str]) -> torch.Tensor:
        """images uint8 [M, H, W, 3] -> logits float [M, K, D, V], differentiable w.r.t. the
        policy's parameters. Must be the logits `sample_chunk` samples from (divided by the
        temperature there), so an un-updated policy reproduces the rollout log-probs."""
        ...

    def parameters(self) -> Any: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> Any: ...

    def eval(self) -> Any: ...


@runtime_checkable
class ImaginationSession(Protocol):
    def step(self, actions: torch.Tensor) -> torch.Tensor:
        """actions float [B, K, D] -> the K imagined frames that follow, uint8 [B, K, H, W, 3]."""
        ...


@runtime_checkable
class Imagination(Protocol):
    """The world model's rollout API (frozen during GRPO)."""

    def start(self, first_frames: torch.Tensor) -> ImaginationSession | None:
        """Begin B imagined episodes from real frames uint8 [B, H, W, 3]. Returns the session
        to `step` (a stateful implementation may return itself or None)."""
        ...


@runtime_checkable
class SuccessDetector(Protocol):
    """The reward model (frozen during GRPO). May set `window: int`, the clip length in
    frames; the rollout then passes only the frames that can form new windows."""

    def detect_success(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 [B, T, H, W, 3] -> (success bool [B], end_index long [B]): whether
        some window is over the threshold, and the index in `frames` of the last frame of the
        earliest such window (-1 where none)."""
        ...


@dataclass
class RolloutBatch:
    """N imagined trajectories, padded to T chunks; `chunk_mask` marks real chunks."""

    observations: torch.Tensor
    """uint8 [N, T, H, W, 3]: the frame the policy saw before each chunk ([N, T, 2, H, W, 3]
    with the episode's first frame beside it, for a policy that `reads_first_frame`)."""
    tokens: torch.Tensor
    """long [N, T, K, D]."""
    logprobs: torch.Tensor
    """float [N, T, K, D]: rollout (old) log-probs at the sampling temperature."""
    chunk_mask: torch.Tensor
    """bool [N, T]: chunk t was executed (trajectory not yet ended)."""
    success: torch.Tensor
    """bool [N]: the reward model detected success."""
    end_frame: torch.Tensor
    """long [N]: imagined-frame index (1-based, 0 = the real first frame) where success was
    detected; the last imagined frame for failures."""
    instructions: list[str]

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """Executed chunks per trajectory, long [N]."""
        return self.chunk_mask.sum(dim=1)

    @property
    def rewards(self) -> torch.Tensor:
        return self.success.float()

    def select(self, index: torch.Tensor) -> RolloutBatch:
        idx = index.long()
        return RolloutBatch(
            observations=self.observations[idx],
            tokens=self.tokens[idx],
            logprobs=self.logprobs[idx],
            chunk_mask=self.chunk_mask[idx],
            success=self.success[idx],
            end_frame=self.end_frame[idx],
            instructions=[self.instructions[i] for i in idx.tolist()],
        )

    @staticmethod
    def concat(batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """Concatenate, padding the chunk axis to the longest."""
        t = max(b.tokens.shape[1] for b in batches)

        def pad(x: torch.Tensor) -> torch.Tensor:
            extra = t - x.shape[1]
            if extra == 0:
                return x
            return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)

        return RolloutBatch(
            observations=torch.cat([pad(b.observations) for b in batches]),
            tokens=torch.cat([pad(b.tokens) for b in batches]),
            logprobs=torch.cat([pad(b.logprobs) for b in batches]),
            chunk_mask=torch.cat([pad(b.chunk_mask) for b in batches]),
            success=torch.cat([b.success for b in batches]),
            end_frame=torch.cat([b.end_frame for b in batches]),
            instructions=[s for b in batches for s in b.instructions],
        )


def _check_chunk(actions: Any, tokens: Any, logprobs: Any, b: int) -> None:
    shapes = [tuple(getattr(x, "shape", ())) for x in (actions, tokens, logprobs)]
    if len(shapes[0]) != 3 or shapes[0][0] != b or len(set(shapes)) != 1:
        raise WmpoError(
            "policy.sample_chunk must return actions, tokens, logprobs all shaped [B, K, D] "
            f"with B={b}; got {shapes}. Fix the policy adapter."
        )


@torch.no_grad()
def imagine_rollouts(
    policy: SamplingPolicy,
    imagination: Imagination,
    reward: SuccessDetector,
    first_frames: torch.Tensor,
    instructions: Sequence[str],
    *,
    max_chunks: int,
    temperature: float,
) -> RolloutBatch:
    """Roll B trajectories out for up to `max_chunks` chunks; a trajectory ends at the chunk
    in which the reward model first detects success (WMPO truncates there)."""
    first_frames = torch.as_tensor(first_frames)
    if first_frames.ndim != 4 or first_frames.shape[-1] != 3 or first_frames.dtype != torch.uint8:
        raise WmpoError(
            f"first frames must be uint8 [B, H, W, 3], got {first_frames.dtype} "
            f"{tuple(first_frames.shape)}"
        )
    b = first_frames.shape[0]
    if len(instructions) != b:
        raise WmpoError(f"{len(instructions)} instructions for {b} first frames")
    session = imagination.start(first_frames)
    session = imagination if session is None else session
    window = getattr(reward, "window", None)

    # Frames the reward model still needs: all of them, or the last `window - 1` (older ones
    # cannot be part of a window that ends in a future chunk).
    history = first_frames.unsqueeze(1)  # frame 0 is the real one
    n_frames = 1
    obs = first_frames
    alive = torch.ones(b, dtype=torch.bool)
    success = torch.zeros(b, dtype=torch.bool)
    end_frame = torch.zeros(b, dtype=torch.long)
    observations, tokens_t, logprobs_t, masks = [], [], [], []
    with_first = bool(getattr(policy, "reads_first_frame", False))
    for _ in range(max_chunks):
        seen = torch.stack([obs, first_frames], dim=1) if with_first else obs
        actions, tokens, logprobs = policy.sample_chunk(seen, list(instructions), temperature)
        _check_chunk(actions, tokens, logprobs, b)
        observations.append(seen)
        tokens_t.append(tokens.long())
        logprobs_t.append(logprobs.float())
        masks.append(alive.clone())
        frames = torch.as_tensor(session.step(actions))
        k = actions.shape[1]
        if tuple(frames.shape[:2]) != (b, k) or frames.shape[2:] != first_frames.shape[1:]:
            raise WmpoError(
                f"imagination step must return uint8 [B={b}, K={k}, H, W, 3] frames like the "
                f"first frames {tuple(first_frames.shape[1:])}, got {tuple(frames.shape)}"
            )
        clip = torch.cat([history, frames], dim=1)
        n_frames += k
        offset = n_frames - clip.shape[1]  # global index of clip[:, 0]
        hit, idx = reward.detect_success(clip)
        hit = torch.as_tensor(hit).bool() & alive
        end_frame = torch.where(hit, torch.as_tensor(idx).long() + offset, end_frame)
        end_frame = torch.where(alive & ~hit, torch.full_like(end_frame, n_frames - 1), end_frame)
        success |= hit
        alive &= ~hit
        keep = clip.shape[1] if window is None else max(int(window) - 1, 0)
        history = clip[:, clip.shape[1] - keep :]
        obs = frames[:, -1]  # the policy sees the last imagined frame, as on the robot
        if not alive.any():
            break
    return RolloutBatch(
        observations=torch.stack(observations, dim=1),
        tokens=torch.stack(tokens_t, dim=1),
        logprobs=torch.stack(logprobs_t, dim=1),
        chunk_mask=torch.stack(masks, dim=1),
        success=success,
        end_frame=end_frame,
        instructions=list(instructions),
    )
