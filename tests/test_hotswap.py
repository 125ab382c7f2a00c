"""Hot-swap core: registry watch, candidate vetting, refusal keeps the old policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.policy import (
    NormalizationStats,
    PolicyConfig,
    VLAPolicyModel,
    load_policy_checkpoint,
    save_policy_checkpoint,
)
from wmpo_core.policy_api import Observation
from wmpo_core.registry import Registry
from wmpo_core.runtime.hotswap import (
    RegistryWatcher,
    SwapRefused,
    contract_of,
    prepare_candidate,
    registry_root_of,
)

SMALL = dict(d_model=32, n_layers=1, n_heads=2, vision_channels=(8, 8, 8), vision_grid=4)


def _ckpt(tmp_path, name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = VLAPolicyModel(PolicyConfig(image_size=32, **{**SMALL, **overrides}))
    stats = NormalizationStats.from_actions(np.random.default_rng(0).normal(0, 0.4, (300, 7)))
    return save_policy_checkpoint(
        tmp_path / name, model, stats, instructions=["lift the red cube"], episode_ids=["e0"]
    )


def _obs(n: int = 3) -> list[Observation]:
    rng = np.random.default_rng(1)
    return [
        Observation(
            images={"camera": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
            instruction="lift the red cube",
        )
        for _ in range(n)
    ]


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "reg", create=True)
    v1 = reg.publish(_ckpt(tmp_path, "a", seed=0))
    reg.promote(v1)
    return reg


def test_watcher_reports_each_promotion_once(registry, tmp_path):
    watcher = RegistryWatcher(registry.root)
    assert watcher.poll() == "v0001"
    watcher.current = "v0001"
    assert watcher.poll() is None
    v2 = registry.publish(_ckpt(tmp_path, "b", seed=1))
    registry.promote(v2)
    assert watcher.poll() == "v0002"
    assert registry_root_of(f"registry:{registry.root}") == registry.root
    assert registry_root_of("/some/ckpt") is None


def test_a_good_candidate_is_loaded_verified_and_warmed_up(registry, tmp_path):
    running = load_policy_checkpoint(registry.resolve_promoted())
    v2 = registry.publish(_ckpt(tmp_path, "b", seed=1))
    cand = prepare_candidate(
        v2, registry.root, load_policy_checkpoint, contract_of(running), _obs()
    )
    assert cand.version == "v0002"
    chunk = cand.predict_chunk(_obs(1)[0])
    assert chunk.shape == (running.chunk_size, 7) and np.isfinite(chunk).all()


def test_a_tampered_version_is_refused(registry, tmp_path):
    running = load_policy_checkpoint(registry.resolve_promoted())
    v2 = registry.publish(_ckpt(tmp_path, "b", seed=1))
    weights = registry.root / "versions" / v2 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x55
    weights.write_bytes(bytes(data))
    with pytest.raises(SwapRefused, match="sha256"):
        prepare_candidate(v2, registry.root, load_policy_checkpoint, contract_of(running), _obs())


def test_a_pickle_in_a_version_is_refused(registry, tmp_path):
    running = load_policy_checkpoint(registry.resolve_promoted())
    v2 = registry.publish(_ckpt(tmp_path, "b", seed=1))
    (registry.root / "versions" / v2 / "optimizer.pt").write_bytes(b"\x80\x04.")
    with pytest.raises(SwapRefused, match="pickle"):
        prepare_candidate(v2, registry.root, load_policy_checkpoint, contract_of(running), _obs())


def test_a_mismatched_action_space_or_chunk_is_refused(registry, tmp_path):
    running = load_policy_checkpoint(registry.resolve_promoted())
    v2 = registry.publish(_ckpt(tmp_path, "b", seed=1, chunk_size=4))
    with pytest.raises(SwapRefused, match="chunk size 4"):
        prepare_candidate(v2, registry.root, load_policy_checkpoint, contract_of(running), _obs())


def test_nan_weights_are_refused_and_never_run(registry, tmp_path):
    running = load_policy_checkpoint(registry.resolve_promoted())
    torch.manual_seed(2)
    model = VLAPolicyModel(PolicyConfig(image_size=32, **SMALL))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    stats = NormalizationStats.from_actions(np.random.default_rng(0).normal(0, 0.4, (300, 7)))
    path = save_policy_checkpoint(
        tmp_path / "nan", model, stats, instructions=["x"], episode_ids=[]
    )
    v2 = registry.publish(path)
    with pytest.raises(SwapRefused, match="NaN"):
        prepare_candidate(v2, registry.root, load_policy_checkpoint, contract_of(running), _obs())


def test_warm_up_refuses_out_of_bound_actions(registry, tmp_path):
    running = load_policy_checkpoint(registry.resolve_promoted())
    v2 = registry.publish(_ckpt(tmp_path, "b", seed=1))

    def load_broken(path):
        policy = load_policy_checkpoint(path)
        policy.predict_chunk = lambda obs: np.full((policy.chunk_size, 7), 3.0, np.float32)
        return policy

    with pytest.raises(SwapRefused, match="leave"):
        prepare_candidate(v2, registry.root, load_broken, contract_of(running), _obs())


def test_unreadable_pointer_is_a_clear_error(tmp_path):
    (tmp_path / "promoted.json").write_text("{not json")
    with pytest.raises(Exception, match="unreadable"):
        RegistryWatcher(tmp_path).poll()
    (tmp_path / "promoted.json").write_text(json.dumps({"version": "v0007"}))
    assert RegistryWatcher(tmp_path).poll() == "v0007"
