"""Rectified-flow sampling, separate from the networks that predict velocities.

Convention (Liu et al. 2022; SD3): x_t = (1 - t) x_0 + t eps, t in [0, 1], the
network predicts v = eps - x_0, and sampling integrates dx/dt = v from t = 1
(pure noise) down to t = 0 with a few Euler steps. Training draws t from a
logit-normal distribution (SD3, used by WMPO's Open-Sora backbone).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def sample_logit_normal(
    n: int, device: torch.device | str, mean: float, std: float, generator=None
) -> torch.Tensor:
    z = torch.randn(n, generator=generator, device=device) * std + mean
    return torch.sigmoid(z)


class RectifiedFlowSampler:
    """Few-step Euler integration of a velocity field; deterministic for a given generator."""

    def __init__(self, steps: int = 4):
        if steps < 1:
            raise ValueError(f"sampler steps={steps} must be >= 1")
        self.steps = steps

    def timesteps(self) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, self.steps + 1)

    @torch.no_grad()
    def sample(
        self,
        velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        like: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Integrate from noise of `shape` (dtype/device of `like`) to a sample at t = 0."""
        x = torch.randn(shape, generator=generator, device="cpu", dtype=torch.float32)
        x = x.to(device=like.device, dtype=like.dtype)
        ts = self.timesteps()
        for i in range(self.steps):
            t, t_next = float(ts[i]), float(ts[i + 1])
            tb = torch.full((shape[0],), t, device=like.device, dtype=like.dtype)
            x = x + (t_next - t) * velocity(x, tb)
        return x
