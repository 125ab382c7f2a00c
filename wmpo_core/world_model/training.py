"""Shared pieces of world-model training: episode selection, splits, resumable state.

Resume state lives beside the checkpoint (`WM.trainstate/`), never inside it, so a
published checkpoint stays a verified safetensors + JSON directory. The optimizer
state is flattened into safetensors too: no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from wmpo_core.errors import StoreError
from wmpo_core.fileio import atomic_write_json
from wmpo_core.store import EpisodeMeta, EpisodeStore


def is_heldout(episode_id: str, frac: float) -> bool:
    """Deterministic held-out split by id hash: the same episodes in every tool."""
    h = int(hashlib.sha256(episode_id.encode()).hexdigest()[:8], 16)
    return (h % 10_000) < frac * 10_000


def select_episodes(
    stores: list[str | Path],
    *,
    task: str | None = None,
    policy_version: str | None = None,
    split: str = "train",
    heldout_frac: float = 0.15,
    labelled_only: bool = False,
) -> list[tuple[EpisodeStore, EpisodeMeta]]:
    """Episodes of the given stores that match the filters; split in 'train'|'heldout'|'all'."""
    out = []
    for root in stores:
        store = EpisodeStore(root)
        for meta in store.metas():
            if task and meta.task != task:
                continue
            if policy_version is not None and not (
                meta.kind == "rollout"
                and meta.policy_version == policy_version
                and not meta.taken_over  # an expert finished it: not the policy's behaviour
            ):
                continue
            if labelled_only and meta.success is None:
                continue
            held = is_heldout(meta.id, heldout_frac)
            if (split == "train" and held) or (split == "heldout" and not held):
                continue
            out.append((store, meta))
    if not out:
        raise StoreError(
            f"{', '.join(map(str, stores))}: no episodes match (task={task}, "
            f"policy_version={policy_version}, split={split}); check the filters or collect data"
        )
    return out


def load_arrays(
    selected: list[tuple[EpisodeStore, EpisodeMeta]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (np.asarray(ep.frames), np.asarray(ep.actions, dtype=np.float32))
        for ep in (store.load(meta.id) for store, meta in selected)
    ]


def state_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".trainstate")


def save_train_state(
    out: str | Path, optimizer: torch.optim.Optimizer, info: dict[str, Any]
) -> None:
    d = state_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            key = f"{pid}.{name}"
            if torch.is_tensor(val):
                tensors[key] = val.detach().cpu().contiguous()
            else:
                scalars[key] = val
    save_file(tensors, str(d / "optimizer.safetensors.tmp"))
    Path(d / "optimizer.safetensors.tmp").replace(d / "optimizer.safetensors")
    atomic_write_json(
        d / "state.json", {"info": info, "param_groups": sd["param_groups"], "scalars": scalars}
    )


def load_train_state(out: str | Path, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    d = state_dir(out)
    if not (d / "state.json").is_file():
        return None
    meta = json.loads((d / "state.json").read_text())
    tensors = load_file(str(d / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    for key, val in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["info"]
