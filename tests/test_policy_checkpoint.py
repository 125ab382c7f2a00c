"""Policy checkpoints: bit-exact round trip, strict verification, and the runtime ChunkPolicy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.checkpoint import save_checkpoint
from wmpo_core.errors import CheckpointError
from wmpo_core.policy import (
    NormalizationStats,
    PolicyConfig,
    VLAPolicyModel,
    load_policy,
    load_policy_checkpoint,
    save_policy_checkpoint,
)
from wmpo_core.policy.configuration_policy import EPISODE_START
from wmpo_core.policy_api import ChunkPolicy, Observation

SMALL = dict(d_model=32, n_layers=1, n_heads=2, vision_channels=(8, 8, 8), vision_grid=4)
INSTRUCTION = "lift the red cube"


def _save(tmp_path, name="", **overrides):
    torch.manual_seed(0)
    model = VLAPolicyModel(PolicyConfig(image_size=32, **{**SMALL, **overrides}))
    stats = NormalizationStats.from_actions(np.random.default_rng(0).normal(0, 0.4, (300, 7)))
    path = save_policy_checkpoint(
        tmp_path / "ckpt",
        model,
        stats,
        instructions=[INSTRUCTION],
        episode_ids=["ep000", "ep001"],
        metrics={"train_loss": 1.25},
        name=name,
    )
    return path, model, stats


def _obs(seed=0, size=128, instruction=INSTRUCTION):
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Observation(images={"camera": img}, instruction=instruction)


def test_round_trip_is_bit_exact_and_manifest_describes_the_policy(tmp_path):
    path, model, stats = _save(tmp_path, name="lift-bc-1")
    loaded, proc, manifest = load_policy(path)
    ref = model.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert proc.stats == stats
    assert manifest["kind"] == "policy" and manifest["preset"] == "tiny"
    assert manifest["action_space"] == {
        "names": ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
        "dims": 7,
    }
    assert manifest["chunk_size"] == 8 and manifest["image_size"] == 32
    assert manifest["instructions"] == [INSTRUCTION]
    assert manifest["data"]["episode_ids"] == ["ep000", "ep001"]
    assert manifest["metrics"] == {"train_loss": 1.25}
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "normalization.json"}


def test_loaded_chunk_policy_matches_the_trained_model(tmp_path):
    path, model, stats = _save(tmp_path, name="lift-bc-1")
    policy = load_policy_checkpoint(path)
    assert isinstance(policy, ChunkPolicy)
    assert policy.version == "lift-bc-1" and policy.chunk_size == 8 and policy.image_size == 32
    assert policy.action_names == ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
    obs = _obs(size=128)  # the camera is larger than the model: resized by the policy
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (8, 7) and chunk.dtype == np.float32
    # the same greedy chunk straight from the in-memory model
    from wmpo_core.policy import PolicyProcessor

    proc = PolicyProcessor(model.config, stats, model.instruction_vocab)
    frames = proc.observation_frames(obs.images)[None]
    expected = proc.tokenizer.decode(model.eval().greedy(proc.batch(frames, [INSTRUCTION])))[0]
    assert np.array_equal(chunk, expected)
    # greedy is deterministic; reset() changes nothing for a greedy policy
    policy.reset()
    assert np.array_equal(policy.predict_chunk(obs), chunk)
    # no instruction latched yet: the single trained instruction is unambiguous
    assert np.array_equal(policy.predict_chunk(_obs(size=128, instruction="")), chunk)
    # the instruction is really used
    other = policy.predict_chunk(_obs(size=128, instruction="stack the red cube on the green cube"))
    assert other.shape == (8, 7)


def test_unnamed_checkpoint_version_is_a_weight_hash(tmp_path):
    path, _, _ = _save(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert (
        load_policy_checkpoint(path).version
        == "policy-" + manifest["files"]["model.safetensors"][:12]
    )


def test_sampling_policy_is_reproducible_after_reset(tmp_path):
    path, _, _ = _save(tmp_path)
    policy = load_policy_checkpoint(path, temperature=1.6, seed=3)
    a = policy.predict_chunk(_obs())
    policy.reset()
    assert np.array_equal(policy.predict_chunk(_obs()), a)
    assert not np.array_equal(policy.predict_chunk(_obs()), a)


@pytest.mark.parametrize("victim", ["model.safetensors", "normalization.json", "config.json"])
def test_a_tampered_file_is_refused(tmp_path, victim):
    path, _, _ = _save(tmp_path)
    data = bytearray((path / victim).read_bytes())
    data[-3] ^= 0x01
    (path / victim).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_policy_checkpoint(path)


def test_pickles_and_unlisted_files_are_refused(tmp_path):
    path, model, _ = _save(tmp_path)
    torch.save(model.state_dict(), path / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_policy_checkpoint(path)
    (path / "model.pt").unlink()
    (path / "notes.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not in the manifest"):
        load_policy_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    """A correctly hashed checkpoint whose weights have other shapes than its config says."""
    _, model, stats = _save(tmp_path)
    wrong = PolicyConfig(image_size=32, **{**SMALL, "d_model": 64})
    out = save_checkpoint(
        tmp_path / "mismatch",
        kind="policy",
        config=wrong.to_dict(),
        state_dict=model.state_dict(),
        extras={"normalization": stats.to_dict()},
        manifest_fields={
            "action_space": {"names": list(wrong.action_names), "dims": 7},
            "chunk_size": 8,
        },
    )
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_policy_checkpoint(out)


def test_a_world_model_checkpoint_is_not_a_policy(tmp_path):
    _, model, stats = _save(tmp_path)
    out = save_checkpoint(
        tmp_path / "wm", kind="world_model", config={}, state_dict=model.state_dict()
    )
    with pytest.raises(CheckpointError, match="expected 'policy'"):
        load_policy_checkpoint(out)


def test_base_preset_checkpoint_round_trip(tmp_path):
    from test_policy_model import _tiny_backbone_dir

    _tiny_backbone_dir(tmp_path / "bb")
    torch.manual_seed(0)
    model = VLAPolicyModel(PolicyConfig(preset="base", backbone_path=str(tmp_path / "bb")))
    stats = NormalizationStats.from_actions(np.random.default_rng(0).normal(0, 0.4, (300, 7)))
    path = save_policy_checkpoint(
        tmp_path / "base", model, stats, instructions=[INSTRUCTION], episode_ids=["e"]
    )
    import shutil

    shutil.rmtree(tmp_path / "bb")  # the checkpoint must not need the backbone dir any more
    policy = load_policy_checkpoint(path)
    ref, got = model.state_dict(), policy.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert policy.image_size == 32
    assert policy.predict_chunk(_obs(size=64)).shape == (8, 7)


def test_runtime_loader_samples_a_checkpoint_at_a_temperature(tmp_path):
    """policy_node's `temperature` parameter: greedy by default, seeded sampling when > 0,
    refused where it means nothing (scripted / random) or is not a temperature."""
    from wmpo_core.errors import WmpoError
    from wmpo_core.runtime.policies import load_policy as runtime_load

    path, _, _ = _save(tmp_path)
    greedy = runtime_load(str(path))
    assert np.array_equal(greedy.predict_chunk(_obs()), greedy.predict_chunk(_obs()))
    sampled = runtime_load(str(path), temperature=1.0, seed=3)
    first = sampled.predict_chunk(_obs())
    assert not np.array_equal(first, greedy.predict_chunk(_obs()))
    sampled.reset()
    assert np.array_equal(sampled.predict_chunk(_obs()), first)  # seeded, restarts per episode
    with pytest.raises(WmpoError, match="checkpoint policies only"):
        runtime_load("random", temperature=1.0)
    for bad in (-0.5, float("nan")):
        with pytest.raises(WmpoError, match="finite value >= 0"):
            runtime_load(str(path), temperature=bad)


def test_episode_start_camera_is_the_first_frame_since_reset(tmp_path):
    """A policy reading EPISODE_START sees, beside the current frame, the first frame of
    the episode: filled in from the first observation after reset(), forgotten by reset()."""
    path, _, _ = _save(tmp_path, cameras=("camera", EPISODE_START))
    policy = load_policy_checkpoint(path)
    a, b = _obs(1), _obs(2)
    both = Observation(images={"camera": b.images["camera"], EPISODE_START: a.images["camera"]})
    both.instruction = INSTRUCTION
    policy.reset()
    policy.predict_chunk(a)
    after_a = policy.predict_chunk(b)  # the episode started on a
    np.testing.assert_array_equal(after_a, policy.predict_chunks([both])[0])
    policy.reset()
    from_b = policy.predict_chunk(b)  # a new episode that starts on b
    assert not np.array_equal(after_a, from_b), "the first frame must reach the model"
    with pytest.raises(ValueError, match="batched observations must carry"):
        policy.predict_chunks([a, b])


@pytest.mark.parametrize("cameras", [(EPISODE_START,), (EPISODE_START, "camera")])
def test_episode_start_must_follow_a_real_camera(cameras):
    with pytest.raises(ValueError, match="must come last, after a real camera"):
        PolicyConfig(cameras=cameras)
