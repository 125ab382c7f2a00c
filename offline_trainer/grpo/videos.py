"""Videos of imagined rollouts: what the policy did inside the world model, and how it ended.

A person judging a GRPO run wants to see a few imagined successes and failures,
not only a success rate: reward hacking (a "success" the frames do not show) is
visible at a glance. Frames are captured by wrapping the imagination session, so
the rollout code path is exactly the one GRPO trains with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from offline_trainer.eval_policy import write_grid_video
from offline_trainer.grpo.rollout import imagine_rollouts


class _Recording:
    """An imagination whose sessions keep every frame they return."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.frames: list[torch.Tensor] = []

    def start(self, first_frames: torch.Tensor):
        session = self.inner.start(first_frames)
        session = self.inner if session is None else session
        self.frames = [torch.as_tensor(first_frames).unsqueeze(1)]
        recording = self

        class _Session:
            def step(self, actions):
                out = torch.as_tensor(session.step(actions))
                recording.frames.append(out)
                return out

        return _Session()


def write_imagined_rollout_video(
    policy: Any,
    imagination: Any,
    reward: Any,
    first_frames: torch.Tensor,
    instructions: list[str],
    path: str | Path,
    *,
    max_chunks: int,
    temperature: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Imagine one rollout per first frame, write a grid mp4 (green border = success)."""
    recorder = _Recording(imagination)
    torch.manual_seed(seed)
    batch = imagine_rollouts(
        policy,
        recorder,
        reward,
        first_frames,
        instructions,
        max_chunks=max_chunks,
        temperature=temperature,
    )
    frames = torch.cat(recorder.frames, dim=1).numpy()  # [B, T, H, W, 3]
    videos = []
    for i in range(frames.shape[0]):
        end = int(batch.end_frame[i]) + 1  # the episode ends where the reward model said so
        videos.append(list(frames[i, : max(end, 1)]))
    successes = [bool(s) for s in batch.success.tolist()]
    write_grid_video(videos, successes, path, fps=10.0)
    return {"path": str(path), "successes": sum(successes), "rollouts": len(successes)}
