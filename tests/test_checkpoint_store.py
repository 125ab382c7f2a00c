"""Verified checkpoints and the episode store: the shared persistence layer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wmpo_core.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from wmpo_core.commands import ee_action_to_twist, twist_to_ee_action
from wmpo_core.errors import CheckpointError, StoreError
from wmpo_core.store import EpisodeMeta, EpisodeStore

REPO = Path(__file__).resolve().parents[1]


def _save(tmp_path: Path, name: str = "ckpt") -> Path:
    net = torch.nn.Linear(3, 2)
    return save_checkpoint(
        tmp_path / name,
        kind="toy",
        config={"in": 3, "out": 2},
        state_dict=net.state_dict(),
        extras={"norm_stats": {"q01": [0.0], "q99": [1.0]}},
        manifest_fields={"parent": None},
    )


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "c", kind="toy", config={}, state_dict=net.state_dict())
    ckpt = load_checkpoint(path, kind="toy")
    for k, v in net.state_dict().items():
        assert torch.equal(ckpt.state_dict[k], v)
    assert set(ckpt.manifest["files"]) == {"config.json", "model.safetensors"}


def test_tampered_weights_are_refused(tmp_path):
    path = _save(tmp_path)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 of model.safetensors"):
        load_checkpoint(path)


def test_pickle_and_unlisted_files_are_refused(tmp_path):
    path = _save(tmp_path)
    (path / "extra.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    (path / "extra.pt").unlink()
    (path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not in the manifest"):
        load_checkpoint(path)


def test_missing_manifest_and_wrong_kind_are_refused(tmp_path):
    path = _save(tmp_path)
    with pytest.raises(CheckpointError, match="expected 'policy'"):
        load_checkpoint(path, kind="policy")
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="missing manifest.json"):
        load_checkpoint(path)


def test_strict_state_loading_names_mismatches(tmp_path):
    path = _save(tmp_path)
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_state_strict(torch.nn.Linear(4, 2), ckpt.state_dict, str(path))


def test_checkpoint_publish_survives_a_kill_before_rename(tmp_path):
    # A writer killed after staging but before the rename leaves no checkpoint under the name.
    code = (
        "import os, torch, wmpo_core.fileio as f\n"
        "from wmpo_core.checkpoint import save_checkpoint\n"
        "f.atomic_publish_dir = lambda s, d: os.kill(os.getpid(), 9)\n"
        "import wmpo_core.checkpoint as c; c.atomic_publish_dir = f.atomic_publish_dir\n"
        f"save_checkpoint({str(tmp_path / 'c')!r}, kind='toy', config={{}}, "
        "state_dict=torch.nn.Linear(2, 2).state_dict())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert proc.returncode == -9
    assert not (tmp_path / "c").exists()
    # The next save of the same name succeeds (the stale staging dir is replaced).
    _save(tmp_path, "c")
    assert load_checkpoint(tmp_path / "c").manifest["kind"] == "toy"


def _episode(n: int = 5, h: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, h, h, 3), dtype=np.uint8), rng.uniform(-1, 1, (n, 7))


def test_store_round_trip_memory_mapped(tmp_path):
    store = EpisodeStore(tmp_path / "s", create=True)
    frames, actions = _episode()
    store.add(EpisodeMeta(id="ep1", task="Lift", instruction="lift", success=True), frames, actions)
    ep = store.load("ep1")
    assert isinstance(ep.frames, np.memmap)
    np.testing.assert_array_equal(ep.frames, frames)
    np.testing.assert_allclose(ep.actions, actions.astype(np.float32))
    assert ep.meta.n_frames == 5 and ep.meta.success is True
    with pytest.raises(StoreError, match="already in"):
        store.add(EpisodeMeta(id="ep1", task="Lift", instruction="lift"), frames, actions)


def test_store_refuses_bad_episodes(tmp_path):
    store = EpisodeStore(tmp_path / "s", create=True)
    frames, actions = _episode()
    meta = EpisodeMeta(id="bad", task="Lift", instruction="lift")
    with pytest.raises(StoreError, match="empty episode"):
        store.add(meta, frames[:0], actions[:0])
    with pytest.raises(StoreError, match="actions must be"):
        store.add(meta, frames, actions[:3])
    bad = actions.copy()
    bad[2, 1] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.add(meta, frames, bad)
    assert store.ids() == []
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore(tmp_path / "nope")


def test_store_ignores_an_interrupted_write(tmp_path):
    store = EpisodeStore(tmp_path / "s", create=True)
    half = store.episodes_dir / "ep2"
    half.mkdir()
    np.save(half / "frames.npy", np.zeros((2, 4, 4, 3), np.uint8))  # no meta.json: crashed
    assert store.ids() == []
    frames, actions = _episode()
    store.add(EpisodeMeta(id="ep2", task="Lift", instruction="x"), frames, actions)
    assert store.ids() == ["ep2"]
    assert json.loads((half / "meta.json").read_text())["n_frames"] == 5
    assert not any(p.name.startswith(".") for p in store.episodes_dir.iterdir()), os.listdir(
        store.episodes_dir
    )


def test_twist_conversion_round_trip():
    a = np.array([0.5, -1.0, 0.2, 0.1, 0.0, -0.3, 1.0])
    lin, ang, grip = ee_action_to_twist(a, 20.0)
    np.testing.assert_allclose(lin, [0.5, -1.0, 0.2])  # 0.05 m per step at 20 Hz = 1 m/s
    np.testing.assert_allclose(twist_to_ee_action(lin, ang, grip, 20.0), a)
    with pytest.raises(ValueError):
        ee_action_to_twist(np.zeros(6), 20.0)
