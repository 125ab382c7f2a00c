"""The `base` world model (WMPO, arXiv 2511.09515, Sec. 3.1), sized for GPUs.

- A 2D VAE (diffusers `AutoencoderKL`, loaded from a local path such as the SDXL
  VAE; frozen) maps each 256 px frame to 4x32x32 latents.
- A transformer denoiser (DiT-style) attends over the patch tokens of c context
  and K future latent frames. Every frame carries a conditioning vector: its
  noise-level embedding plus its action embedding (a learned "no action"
  embedding for context frames), which modulates each block through adaLN-Zero.
- Rectified flow: x_t = (1 - t) x_0 + t eps, velocity target eps - x_0,
  logit-normal t; context latents are lightly noised (t0 = 15/1000) in training
  and sampling so the model tolerates its own imperfect frames; a few Euler
  steps at inference (`sampler.py`).

The same class runs at tiny random sizes in the tests (a random VAE from
`config.vae_config`, stored with the checkpoint); real sizes load the VAE from
`config.vae_path` and store only the denoiser.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmpo_core.world_model.configuration_world_model import WorldModelConfig, WorldModelError
from wmpo_core.world_model.modeling_tiny import timestep_embedding
from wmpo_core.world_model.sampler import RectifiedFlowSampler, sample_logit_normal

TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
}


def build_vae(config: WorldModelConfig):
    from diffusers import AutoencoderKL

    if config.vae_path:
        try:
            return AutoencoderKL.from_pretrained(config.vae_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise WorldModelError(
                f"{config.vae_path}: not a local diffusers AutoencoderKL ({exc}); download e.g. "
                "stabilityai/sdxl-vae on a networked machine and pass its directory as vae_path"
            ) from None
    return AutoencoderKL(**{**TINY_VAE, **config.vae_config})


def vae_loss(vae, frames: torch.Tensor, kl_weight: float = 1e-6) -> torch.Tensor:
    """Reconstruction L1 + a small KL of a VAE on frames [N, 3, H, W] in [-1, 1]."""
    posterior = vae.encode(frames).latent_dist
    recon = vae.decode(posterior.sample()).sample
    return (recon - frames).abs().mean() + kl_weight * posterior.kl().mean()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Attention + MLP, each modulated per token by its frame's conditioning (adaLN-Zero)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, 4 * hidden),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * hidden, hidden),
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-Zero: each block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s1, g1, b1, s2, g2, b2 = self.ada(cond).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), s1, g1)
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + b1 * self.proj(a)
        return x + b2 * self.mlp(_modulate(self.norm2(x), s2, g2))


class Denoiser(nn.Module):
    """Velocity of all (c + K) latent frames given their noise levels and actions."""

    def __init__(self, config: WorldModelConfig, latent_side: int):
        super().__init__()
        cfg = self.config = config
        p, hid = cfg.patch_size, cfg.hidden_size
        self.n_frames = cfg.context_frames + cfg.chunk_size
        self.side = latent_side // p
        self.patch = nn.Linear(cfg.latent_channels * p * p, hid)
        self.pos = nn.Parameter(torch.zeros(1, 1, self.side * self.side, hid))
        self.frame_pos = nn.Parameter(torch.zeros(1, self.n_frames, 1, hid))
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.frame_pos, std=0.02)
        self.time = nn.Sequential(nn.Linear(hid, hid), nn.SiLU(), nn.Linear(hid, hid))
        self.action = nn.Sequential(nn.Linear(cfg.action_dim, hid), nn.SiLU(), nn.Linear(hid, hid))
        self.no_action = nn.Parameter(torch.zeros(hid))  # context frames carry no action
        self.blocks = nn.ModuleList(DiTBlock(hid, cfg.num_heads) for _ in range(cfg.depth))
        self.final_norm = nn.LayerNorm(hid, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hid, 2 * hid))
        self.out = nn.Linear(hid, cfg.latent_channels * p * p)
        for m in (self.final_ada[1], self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z [B, F, C, h, w] latents, t [B, F] noise levels, actions [B, K, D] -> velocity."""
        b, f, c, hh, ww = z.shape
        p, n = self.config.patch_size, self.side * self.side
        tokens = z.reshape(b, f, c, self.side, p, self.side, p).permute(0, 1, 3, 5, 2, 4, 6)
        x = self.patch(tokens.reshape(b, f, n, c * p * p)) + self.pos + self.frame_pos
        k = actions.shape[1]
        act = torch.cat([self.no_action.expand(b, f - k, -1), self.action(actions)], dim=1)
        cond = self.time(timestep_embedding(t.flatten(), x.shape[-1]).view(b, f, -1)) + act
        cond = cond[:, :, None].expand(-1, -1, n, -1).reshape(b, f * n, -1)
        x = x.reshape(b, f * n, -1)
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        x = self.out(_modulate(self.final_norm(x), shift, scale))
        x = x.view(b, f, self.side, self.side, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, f, c, hh, ww)


class BaseWorldModel(nn.Module):
    def __init__(self, config: WorldModelConfig):
        super().__init__()
        self.config = config
        self.vae = build_vae(config)
        self.vae.requires_grad_(False)
        self.vae.eval()
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if (
            down != config.vae_downsample
            or self.vae.config.latent_channels != config.latent_channels
        ):
            raise WorldModelError(
                f"VAE downsamples x{down} with {self.vae.config.latent_channels} latent channels; "
                f"config says vae_downsample={config.vae_downsample}, "
                f"latent_channels={config.latent_channels}: make them agree"
            )
        self.denoiser = Denoiser(config, config.image_size // down)
        self.sampler = RectifiedFlowSampler(config.sampling_steps)

    def stored_module(self) -> nn.Module:
        """What a checkpoint holds: the denoiser, plus the VAE when it has no path of its own."""
        return self.denoiser if self.config.vae_path else self

    def train(self, mode: bool = True) -> BaseWorldModel:
        super().train(mode)
        self.vae.eval()  # frozen
        return self

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] in [-1, 1] -> scaled latent means [B, F, C, h, w]."""
        b, f = frames.shape[:2]
        z = self.vae.encode(frames.flatten(0, 1)).latent_dist.mean * self.config.latent_scale
        return z.unflatten(0, (b, f))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, f = z.shape[:2]
        x = self.vae.decode(z.flatten(0, 1) / self.config.latent_scale).sample
        return x.unflatten(0, (b, f)).clamp(-1, 1)

    def _noisy_context(self, ctx: torch.Tensor, generator=None) -> torch.Tensor:
        t0 = self.config.context_noise_t0
        eps = torch.randn(ctx.shape, generator=generator).to(ctx)
        return (1 - t0) * ctx + t0 * eps

    def loss(self, b: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        ctx = self._noisy_context(self.encode(b["context"]))
        x0 = self.encode(b["target"])
        bsz, k = x0.shape[:2]
        t = sample_logit_normal(bsz, x0.device, cfg.logit_normal_mean, cfg.logit_normal_std)
        eps = torch.randn_like(x0)
        tt = t[:, None, None, None, None]
        x_t = (1 - tt) * x0 + tt * eps
        times = torch.cat(
            [
                torch.full((bsz, ctx.shape[1]), cfg.context_noise_t0, device=t.device),
                t[:, None].expand(-1, k),
            ],
            dim=1,
        )
        v = self.denoiser(torch.cat([ctx, x_t], dim=1), times, b["actions"])[:, ctx.shape[1] :]
        mse = ((v - (eps - x0)) ** 2).mean()
        return mse, {"mse": mse.item()}

    forward = loss

    @torch.no_grad()
    def predict(self, b: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.config
        ctx = self._noisy_context(self.encode(b["context"]), generator)
        bsz, c = ctx.shape[:2]

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            times = torch.cat(
                [
                    torch.full((bsz, c), cfg.context_noise_t0, device=t.device),
                    t[:, None].expand(-1, cfg.chunk_size),
                ],
                dim=1,
            )
            return self.denoiser(torch.cat([ctx, x_t], dim=1), times, b["actions"])[:, c:]

        shape = (bsz, cfg.chunk_size, *ctx.shape[2:])
        return self.decode(self.sampler.sample(velocity, shape, ctx, generator))
