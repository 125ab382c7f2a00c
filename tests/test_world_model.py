"""World model: shapes, training signal, action conditioning, determinism, I/O, bad input.

Real classes at tiny sizes (the tiny U-Net, diffusers AutoencoderKL, the base
transformer) on the toy pixel world of wmpo_core.world_model.synthetic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wmpo_core.cli import main as wmpo
from wmpo_core.errors import CheckpointError, WmpoError
from wmpo_core.world_model import (
    WorldModel,
    WorldModelConfig,
    WorldModelError,
    build_network,
    load_world_model,
    save_world_model,
)
from wmpo_core.world_model.modeling_base import build_vae, vae_loss
from wmpo_core.world_model.processing_world_model import WindowDataset, to_model_batch
from wmpo_core.world_model.synthetic import (
    draw_square,
    make_toy_store,
    render,
    square_episode,
    toy_episode,
)

SMALL_TINY = dict(image_size=32, channels=(16, 16, 32), cond_dim=64)
SMALL_BASE = dict(
    preset="base",
    image_size=16,
    vae_downsample=2,
    patch_size=2,
    hidden_size=32,
    depth=2,
    num_heads=2,
    sampling_steps=2,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Training tests run single-threaded: on a loaded 2-core host two threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _toy(n: int, size: int, steps: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [toy_episode(rng, size, steps, random_actions=0.6)[:2] for _ in range(n)]


def _train(net, cfg, episodes, steps: int, lr: float = 2e-3, bs: int = 16) -> list[float]:
    torch.manual_seed(0)
    ds = WindowDataset(episodes, cfg, n_chunks=1)
    dl = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr)
    losses: list[float] = []
    net.train()
    while len(losses) < steps:
        for raw in dl:
            loss, _ = net(to_model_batch(raw, 0, cfg))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) >= steps:
                break
    return losses


def test_rollout_shapes_and_untrained_model_copies_the_first_frame():
    cfg = WorldModelConfig(**SMALL_TINY)
    wm = WorldModel(cfg, build_network(cfg))
    first = np.stack([render(32, np.array([3.0, 3.0]), np.array([20.0, 20.0]), False)] * 3)
    frames = wm.rollout(first, np.zeros((3, 2, 8, 7), np.float32))
    assert frames.shape == (3, 16, 32, 32, 3) and frames.dtype == np.uint8
    # Zero-initialised residual: an untrained model repeats the last context frame.
    assert np.abs(frames.astype(int) - first[:, None].astype(int)).max() <= 1
    sess = wm.imagine(first)
    step = sess.step(np.zeros((3, 8, 7), np.float32))
    assert step.shape == (3, 8, 32, 32, 3)
    chunks = list(wm.rollout_iter(first, iter([np.zeros((3, 8, 7), np.float32)] * 2)))
    assert [c.shape for c in chunks] == [(3, 8, 32, 32, 3)] * 2
    assert wm.rollout_actions(first, np.zeros((3, 11, 7), np.float32)).shape[1] == 11


def test_tiny_loss_falls_and_actions_change_the_imagined_frames():
    # K=2, c=2 and a 10 px square: the same code path, learnable in ~200 CPU steps.
    torch.manual_seed(0)
    cfg = WorldModelConfig(**SMALL_TINY, chunk_size=2, context_frames=2)
    rng = np.random.default_rng(0)
    net = build_network(cfg)
    losses = _train(net, cfg, [square_episode(rng) for _ in range(16)], steps=220, lr=3e-3)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    wm = WorldModel(cfg, net)
    first = draw_square(np.array([11.0, 11.0]))[None].repeat(2, 0)
    acts = np.zeros((2, 1, 2, 7), np.float32)
    acts[0, 0, :, 0] = 1.0  # push right
    acts[1, 0, :, 0] = -1.0  # push left
    frames = wm.rollout(first, acts)[:, -1].astype(float)
    right = draw_square(np.array([17.0, 11.0])).astype(float)
    left = draw_square(np.array([5.0, 11.0])).astype(float)
    assert np.abs(frames[0] - frames[1]).mean() > 5.0
    assert np.abs(frames[0] - right).mean() < 0.6 * np.abs(frames[0] - left).mean()
    assert np.abs(frames[1] - left).mean() < 0.6 * np.abs(frames[1] - right).mean()


def test_vae_and_base_denoiser_losses_fall_and_base_rolls_out_after_save_load(tmp_path):
    torch.manual_seed(0)
    cfg = WorldModelConfig(**SMALL_BASE)
    eps = _toy(4, 16)
    vae = build_vae(cfg).train()
    frames = torch.from_numpy(np.concatenate([f for f, _ in eps])[:32]).permute(0, 3, 1, 2)
    x = frames.float() / 127.5 - 1
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    vl = []
    for _ in range(25):
        loss = vae_loss(vae, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        vl.append(loss.item())
    assert np.mean(vl[-5:]) < 0.7 * np.mean(vl[:5])

    net = build_network(cfg)
    losses = _train(net, cfg, eps, steps=40, bs=8)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    save_world_model(tmp_path / "wm", cfg, net)
    wm = load_world_model(tmp_path / "wm")
    first = eps[0][0][:2]
    a = np.zeros((2, 2, 8, 7), np.float32)
    out = wm.rollout(first, a, seed=1)
    assert out.shape == (2, 16, 16, 16, 3)
    assert np.array_equal(out, WorldModel(cfg, net).rollout(first, a, seed=1))


@pytest.mark.parametrize("preset", ["tiny-flow", "base"])
def test_sampler_is_deterministic_for_a_seed(preset):
    torch.manual_seed(0)
    if preset == "base":
        cfg = WorldModelConfig(**SMALL_BASE)
    else:
        cfg = WorldModelConfig(**SMALL_TINY, variant="flow", sampling_steps=3)
    net = build_network(cfg)
    for p in net.parameters():  # zero-initialised outputs would make every seed agree
        torch.nn.init.normal_(p, std=0.05)
    wm = WorldModel(cfg, net)
    first = np.zeros((2, cfg.image_size, cfg.image_size, 3), np.uint8) + 100
    a = np.random.default_rng(0).uniform(-1, 1, (2, 1, 8, 7)).astype(np.float32)
    x1, x2, y = (
        wm.rollout(first, a, seed=5),
        wm.rollout(first, a, seed=5),
        wm.rollout(first, a, seed=6),
    )
    assert np.array_equal(x1, x2)
    assert not np.array_equal(x1, y)


def test_checkpoint_round_trip_and_tamper_detection(tmp_path):
    cfg = WorldModelConfig(**SMALL_TINY)
    net = build_network(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = save_world_model(tmp_path / "wm", cfg, net)
    wm = load_world_model(path)
    first = np.full((1, 32, 32, 3), 90, np.uint8)
    a = np.ones((1, 1, 8, 7), np.float32) * 0.3
    assert np.array_equal(wm.rollout(first, a), WorldModel(cfg, net).rollout(first, a))
    conf = json.loads((path / "config.json").read_text())
    conf["channels"] = [16, 16, 16]
    (path / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="sha256"):
        load_world_model(path)


def test_bad_inputs_raise_clear_errors():
    cfg = WorldModelConfig(**SMALL_TINY)
    wm = WorldModel(cfg, build_network(cfg))
    ok = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(WorldModelError, match=r"32, 32, 3.*got shape \(1, 64, 64, 3\)"):
        wm.imagine(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(WorldModelError, match="action dimension 7"):
        wm.imagine(ok).step(np.zeros((1, 8, 6), np.float32))
    with pytest.raises(WorldModelError, match="K=8"):
        wm.imagine(ok).step(np.zeros((1, 5, 7), np.float32))
    with pytest.raises(WorldModelError, match="empty"):
        wm.imagine(np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(WorldModelError, match="empty"):
        WindowDataset([(np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0, 7), np.float32))], cfg)
    with pytest.raises(WorldModelError, match="multiple of"):
        WorldModelConfig(image_size=30)
    assert issubclass(WorldModelError, WmpoError)


def test_train_cli_trains_saves_and_resumes(tmp_path, capsys):
    make_toy_store(tmp_path / "store", n=6, size=64, steps=30)
    out = tmp_path / "wm"
    args = [
        "train",
        "world-model",
        "--data",
        str(tmp_path / "store"),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--heldout-frac",
        "0",
    ]
    assert wmpo(args) == 0
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["train/steps"] == 3 and metrics["train/finished"] is True
    assert (tmp_path / "wm.trainstate" / "optimizer.safetensors").is_file()
    assert (
        wmpo(
            [*args[:-4], "--max-steps", "5", "--batch-size", "4", "--heldout-frac", "0", "--resume"]
        )
        == 0
    )
    assert json.loads((out / "manifest.json").read_text())["metrics"]["train/steps"] == 5
    assert load_world_model(out).config.image_size == 64
    assert wmpo(["train", "world-model", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert "not an episode store" in capsys.readouterr().err


def test_windows_near_the_end_pad_their_future_and_say_how_many_chunks_are_real():
    cfg = WorldModelConfig(**SMALL_TINY)  # K = 8
    frames = np.arange(21, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    actions = np.tile(np.arange(21, dtype=np.float32)[:, None] / 100, (1, 7))
    ds = WindowDataset([(frames, actions)], cfg, n_chunks=3)
    assert len(ds) == 21 - 8  # every window with one real chunk of future
    first, last = ds[0], ds[len(ds) - 1]
    assert int(first["n_valid"]) == 2 and int(last["n_valid"]) == 1  # (20 - s) // 8
    # Chunk 1 of the last window is real: frames s+1..s+8 from actions s..s+7.
    assert last["target"][:8, 0, 0, 0].tolist() == list(range(13, 21))
    assert np.allclose(last["actions"][:8, 0].numpy(), np.arange(12, 20) / 100)
    # Past the episode's end: edge-padded, never an index error.
    assert last["target"][8:, 0, 0, 0].tolist() == [20] * 16


def test_unrolled_self_conditioning_trains_on_chunks_only_windows_deep_enough_have():
    import argparse
    import random

    from offline_trainer.train_world_model import _training_batch

    cfg = WorldModelConfig(**SMALL_TINY, chunk_size=2, context_frames=2)
    net = build_network(cfg)
    rng = np.random.default_rng(0)
    ds = WindowDataset([square_episode(rng) for _ in range(4)], cfg, n_chunks=4)
    raw = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    args = argparse.Namespace(self_cond_after=-1.0, unroll_chunks=3, context_noise=0.0)
    depths = set()
    for seed in range(40):
        random.seed(seed)
        batch = _training_batch(net, raw, cfg, args, frac=0.5)
        n = batch["context"].shape[0]
        if n == len(ds) and torch.equal(batch["target"], to_model_batch(raw, 0, cfg)["target"]):
            depths.add(0)
            continue
        # A self-conditioned batch keeps only windows with more real chunks than its depth.
        depth = next(d for d in (1, 2, 3) if n == int((raw["n_valid"] > d).sum()))
        depths.add(depth)
        assert batch["target"].shape == (n, 2, 3, 32, 32)
        assert torch.isfinite(batch["context"]).all() and batch["past_valid"].min() == 1.0
    assert depths == {0, 1, 2, 3}


def test_train_cli_refuses_an_unroll_depth_below_one(tmp_path, capsys):
    args = ["train", "world-model", "--data", str(tmp_path), "--out", str(tmp_path / "wm")]
    assert wmpo([*args, "--unroll-chunks", "0"]) == 1
    assert "--unroll-chunks must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "wm").exists()
