"""What surrounds the network: action tokens, normalization stats, images, instructions.

- `NormalizationStats`: per-dim q01/q99 (plus mean/std for reporting) of the
  training actions; saved beside the weights as `normalization.json`.
- `ActionTokenizer`: action -> q01/q99-normalized [-1, 1] -> one of `n_bins`
  uniform bins (OpenVLA convention), and back to the bin centre. Values outside
  [q01, q99] are clipped, so a round trip is exact to half a bin inside the
  range.
- `hash_instruction`: words -> stable hash buckets (crc32, not Python's salted
  `hash`). With one instruction per task a learned embedding of hashed words
  is enough and costs nothing to load.
- `images_to_tensor` / `augment_images`: uint8 HWC -> float CHW in [-1, 1]
  (SigLIP's normalization as well), random shift + small colour jitter.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wmpo_core.images import resize_rgb

# A dim whose q01 == q99 (e.g. a rotation the expert never uses) gets this half-range,
# so normalization never divides by zero and a constant stays one exact bin.
_MIN_HALF_RANGE = 1e-3


@dataclass
class NormalizationStats:
    q01: list[float]
    q99: list[float]
    mean: list[float]
    std: list[float]
    count: int

    @classmethod
    def from_actions(cls, actions: np.ndarray) -> NormalizationStats:
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or len(a) == 0:
            raise ValueError(f"need actions [N, D] with N > 0, got shape {a.shape}")
        return cls(
            q01=np.quantile(a, 0.01, axis=0).tolist(),
            q99=np.quantile(a, 0.99, axis=0).tolist(),
            mean=a.mean(axis=0).tolist(),
            std=a.std(axis=0).tolist(),
            count=int(len(a)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationStats:
        stats = cls(**data)
        if not (len(stats.q01) == len(stats.q99) == len(stats.mean) == len(stats.std)):
            raise ValueError("normalization stats: q01/q99/mean/std lengths differ")
        return stats


class ActionTokenizer:
    """Continuous actions <-> integer tokens in [0, n_bins)."""

    def __init__(self, stats: NormalizationStats, n_bins: int = 256):
        lo = np.asarray(stats.q01, dtype=np.float64)
        hi = np.asarray(stats.q99, dtype=np.float64)
        centre = (lo + hi) / 2
        half = np.maximum((hi - lo) / 2, _MIN_HALF_RANGE)
        self.lo, self.hi = centre - half, centre + half
        self.n_bins = int(n_bins)
        self.dim = len(lo)

    @property
    def bin_width(self) -> np.ndarray:
        """Width of one bin in action units, per dim."""
        return (self.hi - self.lo) / self.n_bins

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        return np.clip(2 * (a - self.lo) / (self.hi - self.lo) - 1, -1.0, 1.0)

    def denormalize(self, normalized: np.ndarray) -> np.ndarray:
        n = np.asarray(normalized, dtype=np.float64)
        return (n + 1) / 2 * (self.hi - self.lo) + self.lo

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """[..., D] actions -> int64 [..., D] tokens."""
        a = np.asarray(actions)
        if a.shape[-1] != self.dim:
            raise ValueError(f"actions have {a.shape[-1]} dims, tokenizer expects {self.dim}")
        n = self.normalize(a)
        return np.clip(np.floor((n + 1) / 2 * self.n_bins), 0, self.n_bins - 1).astype(np.int64)

    def decode(self, tokens: np.ndarray | torch.Tensor) -> np.ndarray:
        """int tokens [..., D] -> float32 actions at the bin centres."""
        t = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else tokens
        t = np.asarray(t)
        if t.shape[-1] != self.dim:
            raise ValueError(f"tokens have {t.shape[-1]} dims, tokenizer expects {self.dim}")
        centres = (t.astype(np.float64) + 0.5) / self.n_bins * 2 - 1
        return self.denormalize(centres).astype(np.float32)


_WORD_RE = re.compile(r"[a-z0-9]+")


def hash_instruction(text: str, vocab: int, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Instruction -> (ids int64 [max_tokens], mask bool [max_tokens]); id 0 is padding."""
    words = _WORD_RE.findall(text.lower())[:max_tokens]
    ids = np.zeros(max_tokens, dtype=np.int64)
    mask = np.zeros(max_tokens, dtype=bool)
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode()) % (vocab - 1)
        mask[i] = True
    if not words:  # an empty instruction still gets one (padding-id) token to attend to
        mask[0] = True
    return ids, mask


def prepare_image(img: np.ndarray, size: int) -> np.ndarray:
    """Any uint8 [H, W, 3] camera image -> uint8 [size, size, 3] (centre-cropped to square)."""
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {img.dtype} {img.shape}")
    h, w, _ = img.shape
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        img = img[top : top + s, left : left + s]
    return resize_rgb(np.ascontiguousarray(img), size)


def images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, N, H, W, 3] -> float32 [B, N, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 [B, N, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)


def augment_images(
    x: torch.Tensor, generator: torch.Generator, pad: int = 4, jitter: float = 0.1
) -> torch.Tensor:
    """Random shift (replicate-pad + crop, as DrQ) and brightness/contrast jitter.

    x: float [B, N, 3, H, W] in [-1, 1]. Deterministic for a given generator state.
    """
    b, n, c, h, w = x.shape
    flat = x.reshape(b * n, c, h, w)
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (b * n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (b * n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).clamp_max(h + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(w)[None]).clamp_max(w + 2 * pad - 1)
    idx_r = rows[:, None, :, None].expand(b * n, c, h, w + 2 * pad)
    shifted = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(b * n, c, h, w)
    shifted = shifted.gather(3, idx_c)
    bright = (torch.rand(b * n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    contrast = 1 + (torch.rand(b * n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    mean = shifted.mean(dim=(1, 2, 3), keepdim=True)
    out = ((shifted - mean) * contrast + mean + bright).clamp(-1, 1)
    return out.reshape(b, n, c, h, w)


class PolicyProcessor:
    """Observations / dataset samples -> `PolicyBatch`; tokens <-> actions."""

    def __init__(self, config, stats: NormalizationStats, instruction_vocab: int):
        self.config = config
        self.stats = stats
        self.tokenizer = ActionTokenizer(stats, config.n_bins)
        self.instruction_vocab = int(instruction_vocab)
        self._instruction_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def instruction(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        if text not in self._instruction_cache:
            self._instruction_cache[text] = hash_instruction(
                text, self.instruction_vocab, self.config.max_instruction_tokens
            )
        return self._instruction_cache[text]

    def batch(
        self,
        frames: np.ndarray | torch.Tensor,
        instructions: list[str],
        proprio: np.ndarray | None = None,
    ):
        """uint8 [B, N_cameras, S, S, 3] frames (already at image_size) -> PolicyBatch."""
        from wmpo_core.policy.modeling_policy import PolicyBatch

        if len(instructions) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(instructions)} instructions")
        encoded = [self.instruction(t) for t in instructions]
        return PolicyBatch(
            images=images_to_tensor(frames),
            instruction_ids=torch.from_numpy(np.stack([e[0] for e in encoded])),
            instruction_mask=torch.from_numpy(np.stack([e[1] for e in encoded])),
            proprio=None if proprio is None else torch.as_tensor(proprio, dtype=torch.float32),
        )

    def observation_frames(self, images: dict[str, np.ndarray]) -> np.ndarray:
        """Camera dict -> uint8 [N_cameras, S, S, 3] at the model's image size."""
        missing = [c for c in self.config.cameras if c not in images]
        if missing:
            raise ValueError(
                f"observation lacks camera(s) {missing}; the policy reads {list(self.config.cameras)}"
            )
        return np.stack(
            [prepare_image(images[c], self.config.image_size) for c in self.config.cameras]
        )
