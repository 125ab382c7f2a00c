"""The `tiny` world model: a residual U-Net that predicts a chunk of K frames.

Input: c context frames (pixel-unshuffled, stacked as channels) and a
conditioning vector built from the actions (c past + K future, a validity flag
for padded past steps, and optionally the dead-reckoned translation since the
episode start). Output: K frames as a zero-initialised residual on the last
context frame, so an untrained model copies the last frame and training only
has to learn what moves. Actions enter every residual block through FiLM.

`variant='deterministic'` regresses the frames (L1, weighted on changing
pixels, plus a gradient term that keeps edges sharp). `variant='flow'` is the
same network with the noisy future chunk as extra input and a time embedding:
a rectified-flow velocity predictor sampled with a few Euler steps
(`sampler.py`). What worked on 2 CPU cores is recorded in docs/world_model.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wmpo_core.world_model.configuration_world_model import WorldModelConfig
from wmpo_core.world_model.sampler import RectifiedFlowSampler, sample_logit_normal

CUM_SCALE = 0.1  # running sums of [-1, 1] actions over ~100 steps: keep them O(1)


class Batch(dict):
    """A training/inference batch (all tensors, frames in [-1, 1], channels first).

    context [B,c,3,H,W]; past_actions [B,c,D]; past_valid [B,c]; actions [B,K,D];
    cum [B,3] (translation sum before the last context frame); target [B,K,3,H,W]
    (training only).
    """


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(8, c_out)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    """Three-level U-Net with FiLM in every residual block (8 blocks in all)."""

    def __init__(self, c_in: int, c_out: int, channels: tuple[int, ...], cond_dim: int):
        super().__init__()
        c0, c1, c2 = channels
        self.inp = nn.Conv2d(c_in, c0, 3, padding=1)
        self.enc0 = ResBlock(c0, c0, cond_dim)
        self.down0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = ResBlock(c1, c1, cond_dim)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.mid0 = ResBlock(c2, c2, cond_dim)
        self.mid1 = ResBlock(c2, c2, cond_dim)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)
        self.dec1 = ResBlock(2 * c1, c1, cond_dim)
        self.up0 = nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1)
        self.dec0 = ResBlock(2 * c0, c0, cond_dim)
        self.dec0b = ResBlock(c0, c0, cond_dim)
        self.out_norm = nn.GroupNorm(8, c0)
        self.out = nn.Conv2d(c0, c_out, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # an untrained model copies the last frame
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h0 = self.enc0(self.inp(x), cond)
        h1 = self.enc1(self.down0(h0), cond)
        h = self.mid1(self.mid0(self.down1(h1), cond), cond)
        h = self.dec1(torch.cat([self.up1(h), h1], dim=1), cond)
        h = self.dec0(torch.cat([self.up0(h), h0], dim=1), cond)
        h = self.dec0b(h, cond)
        return self.out(F.silu(self.out_norm(h)))


class TinyWorldModel(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = cfg = config
        c, k, d, r = cfg.context_frames, cfg.chunk_size, cfg.action_dim, cfg.unshuffle
        per_frame = 3 * r * r
        n_act = (c + k) * d + c + (3 if cfg.cumulative_actions else 0)
        self.action_mlp = nn.Sequential(
            nn.Linear(n_act, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim)
        )
        flow = cfg.variant == "flow"
        if flow:
            self.time_mlp = nn.Sequential(
                nn.Linear(cfg.cond_dim, cfg.cond_dim),
                nn.SiLU(),
                nn.Linear(cfg.cond_dim, cfg.cond_dim),
            )
        c_in = c * per_frame + (k * per_frame if flow else 0)
        self.unet = TinyUNet(c_in, k * per_frame, cfg.channels, cfg.cond_dim)
        self.sampler = RectifiedFlowSampler(cfg.sampling_steps)

    # -- conditioning ----------------------------------------------------------
    def _cond(self, b: Batch) -> torch.Tensor:
        parts = [b["past_actions"].flatten(1), b["actions"].flatten(1), b["past_valid"]]
        if self.config.cumulative_actions:
            parts.append(b["cum"] * CUM_SCALE)
        return self.action_mlp(torch.cat(parts, dim=1))

    def _unshuffle(self, frames: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(frames.flatten(1, 2), self.config.unshuffle)

    def _shuffle(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.chunk_size
        y = F.pixel_shuffle(x, self.config.unshuffle)
        return y.unflatten(1, (k, 3))

    def _net(self, b: Batch, cond: torch.Tensor, x_t: torch.Tensor | None = None) -> torch.Tensor:
        x = self._unshuffle(b["context"])
        if x_t is not None:
            x = torch.cat([x, self._unshuffle(x_t)], dim=1)
        return self._shuffle(self.unet(x, cond))

    # -- inference ----------------------------------------------------------------
    def predict(self, b: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next K frames [B,K,3,H,W] in [-1, 1]."""
        last = b["context"][:, -1:]
        cond = self._cond(b)
        if self.config.variant == "deterministic":
            return (last + self._net(b, cond)).clamp(-1, 1)
        # Flow: the network predicts the velocity of the residual (future - last frame).
        shape = (b["context"].shape[0], self.config.chunk_size, *b["context"].shape[2:])

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._net(b, cond + self.time_mlp(timestep_embedding(t, cond.shape[1])), x_t)

        residual = self.sampler.sample(velocity, shape, b["context"], generator)
        return (last + residual).clamp(-1, 1)

    # -- training -------------------------------------------------------------------
    def loss(self, b: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        last = b["context"][:, -1:]
        target = b["target"]
        moving = ((target - last).abs().amax(dim=2, keepdim=True) > 0.04).float()
        weight = 1.0 + 4.0 * moving  # 5x on changing pixels: the arm and the cube are small
        cond = self._cond(b)
        if self.config.variant == "deterministic":
            pred = last + self._net(b, cond)
            l1 = (weight * (pred - target).abs()).mean()
            grad = _grad_l1(pred, target)
            return l1 + grad, {"l1": l1.item(), "grad": grad.item()}
        x0 = target - last
        cfg = self.config
        t = sample_logit_normal(x0.shape[0], x0.device, cfg.logit_normal_mean, cfg.logit_normal_std)
        noise = torch.randn_like(x0)
        tt = t[:, None, None, None, None]
        x_t = (1 - tt) * x0 + tt * noise
        v = self._net(b, cond + self.time_mlp(timestep_embedding(t, cond.shape[1])), x_t)
        mse = (weight * (v - (noise - x0)) ** 2).mean()
        return mse, {"mse": mse.item()}


def _grad_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    def dx(x: torch.Tensor) -> torch.Tensor:
        return x[..., :, 1:] - x[..., :, :-1]

    def dy(x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:, :] - x[..., :-1, :]

    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


TinyWorldModel.forward = TinyWorldModel.loss  # DDP/accelerate call forward(): it is the loss
