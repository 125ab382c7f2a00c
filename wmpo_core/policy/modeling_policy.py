"""The VLA chunk policy network: K*D action tokens in one parallel forward pass.

OpenVLA-OFT style: the context (vision tokens, instruction tokens, optional
proprio token) is followed by K*D learned query tokens, one per action token
(chunk step k, action dim d). One forward pass of a transformer gives a
hidden state per query; a shared head turns each into `n_bins` logits. No
autoregression over action tokens, so a chunk costs one pass whatever K is.

Sampling and log-probs are plain functions over the logits (`sample_tokens`,
`token_log_probs`): the chunk log-prob GRPO needs is the sum of the K*D token
log-softmaxes at the sampling temperature, exactly the distribution that
`sample_tokens` draws from.

- `tiny`: conv encoder -> grid x grid tokens; hashed-word embeddings; a
  bidirectional pre-norm transformer encoder over [vision, words, proprio, queries].
- `base`: transformers SiglipVisionModel -> linear projector -> a decoder LM
  (Llama / Qwen2 / any AutoModel decoder) fed `inputs_embeds`; the queries sit
  at the end of the sequence, so under the LM's causal mask they still see all
  of the context (and the queries before them) and decoding stays one pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wmpo_core.policy.configuration_policy import PolicyConfig


@dataclass
class PolicyBatch:
    """Model inputs, already preprocessed (see processing_policy)."""

    images: torch.Tensor
    """float [B, N_cameras, 3, H, W] in [-1, 1]."""
    instruction_ids: torch.Tensor
    """int64 [B, L] hashed word ids (0 = padding)."""
    instruction_mask: torch.Tensor
    """bool [B, L], True where a word is."""
    proprio: torch.Tensor | None = None
    """float [B, P] or None."""

    def to(self, device: torch.device | str) -> PolicyBatch:
        return PolicyBatch(
            images=self.images.to(device),
            instruction_ids=self.instruction_ids.to(device),
            instruction_mask=self.instruction_mask.to(device),
            proprio=None if self.proprio is None else self.proprio.to(device),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])


# -- sampling / log-probs: functions over logits ------------------------------------------


def token_log_probs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature); logits [..., n_bins], tokens [...]."""
    if temperature <= 0:
        raise ValueError(f"log-probs need a temperature > 0, got {temperature}")
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def chunk_log_prob(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Sum of the K*D token log-probs: logits [B, K, D, n_bins], tokens [B, K, D] -> [B]."""
    return token_log_probs(logits, tokens, temperature).flatten(1).sum(dim=1)


def sample_tokens(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one token per position from softmax(logits / temperature); 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    drawn = torch.multinomial(flat, 1, generator=generator).squeeze(-1)
    return drawn.reshape(probs.shape[:-1])


# -- tiny preset ---------------------------------------------------------------------------


class TinyVisionEncoder(nn.Module):
    """Stride-2 conv stages -> grid x grid pooled tokens + spatial-softmax keypoint tokens.

    Pooled tokens say *what* is where at a coarse grid; the keypoints (robomimic's
    spatial softmax) give expected image coordinates of learned features, which is
    what lining a gripper up with a 3-pixel cube at 64 px needs.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in config.vision_channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(config.vision_grid)
        self.proj = nn.Linear(c_in, config.d_model)
        n_cams = len(config.cameras)
        self.n_kp_tokens = config.keypoint_tokens if config.keypoints else 0
        if config.keypoints:
            self.kp_logits = nn.Conv2d(c_in, config.keypoints, 1)
            self.kp_proj = nn.Linear(2 * config.keypoints, config.d_model * self.n_kp_tokens)
        n_tokens = (config.vision_grid**2 + self.n_kp_tokens) * n_cams
        self.pos = nn.Parameter(torch.randn(n_tokens, config.d_model) * 0.02)

    def _keypoints(self, feats: torch.Tensor) -> torch.Tensor:
        """Spatial softmax: [B, C, h, w] -> expected (x, y) in [-1, 1] per keypoint, [B, 2C]."""
        logits = self.kp_logits(feats)
        b, k, h, w = logits.shape
        attn = torch.softmax(logits.flatten(2), dim=-1).reshape(b, k, h, w)
        ys = torch.linspace(-1, 1, h, device=feats.device)
        xs = torch.linspace(-1, 1, w, device=feats.device)
        x = (attn.sum(dim=2) * xs).sum(dim=-1)
        y = (attn.sum(dim=3) * ys).sum(dim=-1)
        return torch.cat([x, y], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, n, c, h, w = images.shape
        feats = self.convs(images.reshape(b * n, c, h, w))
        tokens = self.proj(self.pool(feats).flatten(2).transpose(1, 2))  # [B*N, g*g, d]
        if self.n_kp_tokens:
            kp = self.kp_proj(self._keypoints(feats)).reshape(b * n, self.n_kp_tokens, -1)
            tokens = torch.cat([tokens, kp], dim=1)
        return tokens.reshape(b, -1, tokens.shape[-1]) + self.pos


class TinyBackbone(nn.Module):
    """Context + K*D queries through a small bidirectional transformer -> query states."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        d = config.d_model
        self.vision = TinyVisionEncoder(config)
        self.word_embed = nn.Embedding(config.instruction_vocab, d)
        self.word_pos = nn.Parameter(torch.randn(config.max_instruction_tokens, d) * 0.02)
        self.proprio = nn.Linear(config.proprio_dim, d) if config.proprio_dim else None
        self.queries = nn.Parameter(torch.randn(config.n_queries, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d,
            config.n_heads,
            config.ff_mult * d,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.hidden_size = d

    def forward(self, batch: PolicyBatch) -> torch.Tensor:
        b = len(batch)
        parts = [self.vision(batch.images), self.word_embed(batch.instruction_ids) + self.word_pos]
        keep = [
            torch.ones(b, parts[0].shape[1], dtype=torch.bool, device=batch.images.device),
            batch.instruction_mask,
        ]
        if self.proprio is not None:
            if batch.proprio is None:
                raise ValueError("this policy was built with proprio_dim > 0 but got no proprio")
            parts.append(self.proprio(batch.proprio.float())[:, None])
            keep.append(torch.ones(b, 1, dtype=torch.bool, device=batch.images.device))
        parts.append(self.queries.expand(b, -1, -1))
        keep.append(
            torch.ones(b, self.queries.shape[0], dtype=torch.bool, device=batch.images.device)
        )
        x = self.encoder(torch.cat(parts, dim=1), src_key_padding_mask=~torch.cat(keep, dim=1))
        return self.norm(x[:, -self.queries.shape[0] :])


# -- base preset ---------------------------------------------------------------------------


def _config_dict(hf_config) -> dict:
    """A transformers config as plain JSON types (model_type included)."""
    data = json.loads(hf_config.to_json_string(use_diff=False))
    data["model_type"] = hf_config.model_type
    return data


def fill_base_backbone_configs(config: PolicyConfig) -> None:
    """Copy the backbone configs from `backbone_path` into `config` (first build only)."""
    from transformers import AutoConfig

    root = Path(config.backbone_path)
    for sub in ("vision", "language"):
        if not (root / sub / "config.json").is_file():
            raise FileNotFoundError(
                f"{root / sub}: no config.json; base backbones are save_pretrained folders "
                f"'{root}/vision' (SiglipVisionModel) and '{root}/language' (decoder LM)"
            )
    vision = AutoConfig.from_pretrained(root / "vision")
    if hasattr(vision, "vision_config"):  # a full SigLIP checkpoint: keep the vision tower
        vision = vision.vision_config
    config.vision_config = _config_dict(vision)
    config.text_config = _config_dict(AutoConfig.from_pretrained(root / "language"))
    config.image_size = int(vision.image_size)


class BaseBackbone(nn.Module):
    """SigLIP vision tower + projector + decoder LM over inputs_embeds."""

    def __init__(self, config: PolicyConfig, load_pretrained: bool = False):
        super().__init__()
        from transformers import AutoConfig, AutoModel, SiglipVisionConfig, SiglipVisionModel

        vcfg = dict(config.vision_config)
        vcfg.pop("model_type", None)
        tcfg = dict(config.text_config)
        model_type = tcfg.pop("model_type")
        if load_pretrained:
            root = Path(config.backbone_path)
            self.vision = SiglipVisionModel.from_pretrained(root / "vision")
            self.text = AutoModel.from_pretrained(root / "language")
        else:
            self.vision = SiglipVisionModel(SiglipVisionConfig(**vcfg))
            self.text = AutoModel.from_config(AutoConfig.for_model(model_type, **tcfg))
        self.vision.float()
        self.text.float()
        h = self.text.config.hidden_size
        self.projector = nn.Sequential(
            nn.Linear(self.vision.config.hidden_size, h), nn.GELU(), nn.Linear(h, h)
        )
        self.camera_embed = nn.Parameter(torch.zeros(len(config.cameras), 1, h))
        self.proprio = nn.Linear(config.proprio_dim, h) if config.proprio_dim else None
        self.queries = nn.Parameter(torch.randn(config.n_queries, h) * 0.02)
        self.hidden_size = h

    def forward(self, batch: PolicyBatch) -> torch.Tensor:
        b, n, c, hgt, wid = batch.images.shape
        vis = self.vision(pixel_values=batch.images.reshape(b * n, c, hgt, wid)).last_hidden_state
        vis = self.projector(vis).reshape(b, n, -1, self.hidden_size) + self.camera_embed
        parts = [vis.reshape(b, -1, self.hidden_size)]
        parts.append(self.text.get_input_embeddings()(batch.instruction_ids))
        device = batch.images.device
        keep = [torch.ones(b, parts[0].shape[1], dtype=torch.long, device=device)]
        keep.append(batch.instruction_mask.long())
        if self.proprio is not None:
            if batch.proprio is None:
                raise ValueError("this policy was built with proprio_dim > 0 but got no proprio")
            parts.append(self.proprio(batch.proprio.float())[:, None])
            keep.append(torch.ones(b, 1, dtype=torch.long, device=device))
        parts.append(self.queries.expand(b, -1, -1))
        keep.append(torch.ones(b, self.queries.shape[0], dtype=torch.long, device=device))
        out = self.text(
            inputs_embeds=torch.cat(parts, dim=1), attention_mask=torch.cat(keep, dim=1)
        )
        return out.last_hidden_state[:, -self.queries.shape[0] :]


# -- the policy ----------------------------------------------------------------------------


class VLAPolicyModel(nn.Module):
    """Image(s) + instruction (+ proprio) -> logits [B, K, D, n_bins] in one pass."""

    def __init__(self, config: PolicyConfig, load_pretrained: bool = False):
        super().__init__()
        self.config = config
        if config.preset == "tiny":
            self.backbone: nn.Module = TinyBackbone(config)
        else:
            if not config.vision_config:
                fill_base_backbone_configs(config)
                load_pretrained = True
            self.backbone = BaseBackbone(config, load_pretrained=load_pretrained)
        self.head = nn.Linear(self.backbone.hidden_size, config.n_bins)

    @property
    def instruction_vocab(self) -> int:
        """Hash buckets for instruction words (base: never beyond the LM's embedding table)."""
        if self.config.preset == "base":
            return min(self.config.instruction_vocab, int(self.config.text_config["vocab_size"]))
        return self.config.instruction_vocab

    def forward(self, batch: PolicyBatch) -> torch.Tensor:
        states = self.backbone(batch)  # [B, K*D, hidden]
        logits = self.head(states)
        return logits.reshape(len(batch), self.config.chunk_size, self.config.action_dim, -1)

    @torch.no_grad()
    def greedy(self, batch: PolicyBatch) -> torch.Tensor:
        """Most likely token per position: int64 [B, K, D]."""
        return self(batch).argmax(dim=-1)

    @torch.no_grad()
    def sample(
        self,
        batch: PolicyBatch,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, K, D], chunk log-prob [B] at `temperature`; zeros when greedy)."""
        logits = self(batch)
        tokens = sample_tokens(logits, temperature, generator)
        if temperature <= 0:
            return tokens, torch.zeros(len(batch))
        return tokens, chunk_log_prob(logits, tokens, temperature)

    def token_log_probs(
        self, batch: PolicyBatch, tokens: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """Differentiable per-token log-probs [B, K, D] of given tokens under current weights."""
        return token_log_probs(self(batch), tokens, temperature)

    def log_prob(
        self, batch: PolicyBatch, tokens: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """Differentiable chunk log-prob [B]: sum of the K*D token log-softmaxes."""
        return self.token_log_probs(batch, tokens, temperature).flatten(1).sum(dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
