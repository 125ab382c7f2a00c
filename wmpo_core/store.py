"""The episode store: the trainer's view of recorded episodes.

Format (documented in docs/data.md):

    STORE/
      episodes/<episode_id>/
        frames.npy     uint8 [T, H, W, 3], RGB, upright; opened memory-mapped
        actions.npy    float32 [T, D]: the action applied after observing frame t
        meta.json      EpisodeMeta fields; written last, so a directory without it is
                       an interrupted write and is ignored (and cleaned by `add`)

Plain `.npy` files are memory-mappable (`np.load(mmap_mode="r")`), readable
from any language, and need no extra dependency; a trainer streams episodes
and never loads the whole store into RAM.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmpo_core.errors import StoreError
from wmpo_core.fileio import atomic_publish_dir, staging_dir_for

_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class EpisodeMeta:
    id: str
    """Unique episode id (also the directory name)."""
    task: str
    """Task name, e.g. 'Lift'."""
    instruction: str
    """Language instruction given to the policy."""
    n_frames: int = 0
    """Number of frames (= number of actions)."""
    success: bool | None = None
    """Outcome label; None when unlabelled."""
    kind: str = "demonstration"
    """'demonstration' (teleop / scripted expert) or 'rollout' (a policy acting)."""
    policy_version: str = ""
    """Version of the policy that produced a rollout ('' for demonstrations)."""
    labelled_by: str = ""
    """Who set the label: 'operator', 'sim' (privileged flag, eval only), 'reward_model', ..."""
    seed: int | None = None
    """Initial-state seed, when known (sim)."""
    fps: float = 20.0
    """Frame rate of the stored frames."""
    action_names: list[str] = field(default_factory=list)
    """Names of the action dimensions."""
    source: str = ""
    """Where it came from: a bag path / URL, or 'sim'."""
    source_hash: str = ""
    """Content hash of the source (bag), used to skip re-ingesting it."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else (alignment gaps, action edits, robot name, ...)."""

    @property
    def taken_over(self) -> bool:
        """An expert took over this rollout (`extra.takeover_step`, offline_trainer/takeover.py):
        its outcome is not the policy's own, and its later actions are not the policy's."""
        return self.extra.get("takeover_step") is not None


@dataclass
class Episode:
    meta: EpisodeMeta
    frames: np.ndarray  # memory-mapped uint8 [T, H, W, 3]
    actions: np.ndarray  # float32 [T, D]


class EpisodeStore:
    def __init__(self, root: str | Path, create: bool = False):
        self.root = Path(root)
        self.episodes_dir = self.root / "episodes"
        if create:
            self.episodes_dir.mkdir(parents=True, exist_ok=True)
        elif not self.episodes_dir.is_dir():
            raise StoreError(
                f"{self.root}: not an episode store (no episodes/ folder); "
                "create one with `wmpo ingest BAGS --out STORE` or `wmpo collect --out STORE`"
            )

    # -- writing --------------------------------------------------------------
    def add(self, meta: EpisodeMeta, frames: np.ndarray, actions: np.ndarray) -> Path:
        """Add one episode atomically. Raises StoreError on bad shapes or a duplicate id."""
        if not _ID_RE.match(meta.id):
            raise StoreError(f"episode id '{meta.id}' has characters outside [A-Za-z0-9_.-]")
        frames = np.asarray(frames)
        actions = np.asarray(actions, dtype=np.float32)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise StoreError(
                f"episode {meta.id}: frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}"
            )
        if len(frames) == 0:
            raise StoreError(f"episode {meta.id}: empty episode (0 frames)")
        if actions.ndim != 2 or len(actions) != len(frames):
            raise StoreError(
                f"episode {meta.id}: actions must be [T={len(frames)}, D], got {actions.shape}"
            )
        if not np.isfinite(actions).all():
            raise StoreError(f"episode {meta.id}: actions contain NaN/Inf")
        final = self.episodes_dir / meta.id
        if (final / "meta.json").exists():
            raise StoreError(f"episode {meta.id} is already in {self.root}")
        if final.exists():  # a crashed earlier write: no meta.json
            shutil.rmtree(final)
        meta.n_frames = int(len(frames))
        staging = staging_dir_for(final)
        np.save(staging / "frames.npy", frames)
        np.save(staging / "actions.npy", actions)
        (staging / "meta.json").write_text(json.dumps(asdict(meta), indent=2, sort_keys=True))
        atomic_publish_dir(staging, final)
        return final

    # -- reading --------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(p.parent.name for p in self.episodes_dir.glob("*/meta.json"))

    def meta(self, episode_id: str) -> EpisodeMeta:
        path = self.episodes_dir / episode_id / "meta.json"
        if not path.is_file():
            raise StoreError(f"episode '{episode_id}' not found in {self.root}")
        data = json.loads(path.read_text())
        return EpisodeMeta(**data)

    def metas(self) -> list[EpisodeMeta]:
        return [self.meta(i) for i in self.ids()]

    def load(self, episode_id: str, mmap: bool = True) -> Episode:
        d = self.episodes_dir / episode_id
        meta = self.meta(episode_id)
        mode = "r" if mmap else None
        return Episode(
            meta=meta,
            frames=np.load(d / "frames.npy", mmap_mode=mode),
            actions=np.load(d / "actions.npy", mmap_mode=mode),
        )

    def __iter__(self) -> Iterator[Episode]:
        for i in self.ids():
            yield self.load(i)

    def __len__(self) -> int:
        return len(self.ids())

    def source_hashes(self) -> set[str]:
        return {m.source_hash for m in self.metas() if m.source_hash}
