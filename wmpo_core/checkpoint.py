"""Verified checkpoints: a directory of safetensors + JSON with a hashed manifest.

Layout (every model kind — policy, world model, reward model — uses it):

    CKPT/
      config.json         model configuration (dataclass fields)
      model.safetensors   weights, never pickle
      <extra>.json        e.g. normalization stats
      manifest.json       {"kind", "files": {name: sha256}, "parent", "data", "metrics", ...}

`save_checkpoint` writes into a hidden staging directory and publishes it with
one atomic rename. `load_checkpoint` refuses anything it cannot verify: a
missing manifest, a file whose hash differs, an unlisted file, a pickle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from wmpo_core.errors import CheckpointError
from wmpo_core.fileio import atomic_publish_dir, sha256_file, staging_dir_for

MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    manifest: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    out_dir: str | Path,
    *,
    kind: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extras: dict[str, Any] | None = None,
    manifest_fields: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint atomically; returns its final path."""
    final = Path(out_dir).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir_for(final)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(staging / WEIGHTS))
    (staging / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name, obj in (extras or {}).items():
        (staging / f"{name}.json").write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {
        "format": "wmpo-checkpoint/1",
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
        **(manifest_fields or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if final.exists() and overwrite:
        import shutil

        trash = final.with_name(f".{final.name}.old")
        if trash.exists():
            shutil.rmtree(trash)
        final.rename(trash)
        atomic_publish_dir(staging, final)
        shutil.rmtree(trash)
    else:
        atomic_publish_dir(staging, final)
    return final


def verify_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Check the manifest against the files; returns the manifest or raises CheckpointError."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no checkpoint directory here (expected {CONFIG}, {WEIGHTS}, {MANIFEST})"
        )
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{path}: refusing pickle file(s) {pickles}; checkpoints must be safetensors + JSON"
        )
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: missing {MANIFEST}; re-export the checkpoint with wmpo")
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if kind is not None and manifest.get("kind") != kind:
        raise CheckpointError(
            f"{path}: is a '{manifest.get('kind')}' checkpoint, expected '{kind}'"
        )
    present = {p.name for p in path.iterdir() if p.is_file() and p.name != MANIFEST}
    unlisted = sorted(present - set(listed))
    if unlisted:
        raise CheckpointError(
            f"{path}: files not in the manifest {unlisted}; refusing a tampered checkpoint"
        )
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is listed in the manifest but missing")
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"{path}: sha256 of {name} does not match the manifest (tampered or corrupt)"
            )
    if WEIGHTS not in listed or CONFIG not in listed:
        raise CheckpointError(f"{path}: manifest lacks {WEIGHTS} or {CONFIG}")
    return manifest


def load_checkpoint(path: str | Path, kind: str | None = None) -> Checkpoint:
    """Verify, then load config, weights and JSON extras. Raises CheckpointError."""
    path = Path(path)
    manifest = verify_checkpoint(path, kind)
    config = json.loads((path / CONFIG).read_text())
    try:
        state = load_file(str(path / WEIGHTS))
    except Exception as exc:  # safetensors raises several types on corrupt headers
        raise CheckpointError(f"{path / WEIGHTS}: unreadable safetensors ({exc})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: weight '{name}' has NaN/Inf values")
    extras = {
        p.stem: json.loads(p.read_text())
        for p in sorted(path.glob("*.json"))
        if p.name not in (MANIFEST, CONFIG)
    }
    return Checkpoint(path=path, config=config, state_dict=state, manifest=manifest, extras=extras)


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict that names every missing, unexpected or mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or shapes:
        raise CheckpointError(
            f"{where}: weights do not match the model (missing {missing[:5]}, unexpected {extra[:5]}, "
            f"shape mismatches {shapes[:3]})"
        )
    module.load_state_dict(state, strict=True)
