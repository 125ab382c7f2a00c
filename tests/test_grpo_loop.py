"""The GRPO loop on a toy setting: it must learn, resume exactly, and keep models frozen.

The toy is small but real end to end: a torch categorical policy over K x D tokens, an
'imagination' that draws the decoded actions into frames, and a reward model that reads
the frames. Exactly one token chunk succeeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from offline_trainer.grpo.config import GRPOConfig
from offline_trainer.grpo.objective import token_logprobs
from offline_trainer.grpo.rollout import RolloutBatch, imagine_rollouts
from offline_trainer.grpo.trainer import GRPOTrainer, StoreInitialStates
from wmpo_core.checkpoint import load_checkpoint
from wmpo_core.errors import WmpoError

REPO = Path(__file__).resolve().parents[1]
K, D, V, H = 1, 2, 3, 4
TARGET = (2, 0)  # the one chunk (tokens per dim) that succeeds


def tokens_to_actions(tokens: torch.Tensor) -> torch.Tensor:
    return -1.0 + (2.0 * tokens.float() + 1.0) / V  # bin centres in [-1, 1]


def actions_to_tokens(actions: torch.Tensor) -> torch.Tensor:
    return ((actions + 1.0) * V / 2.0).floor().long().clamp(0, V - 1)


class ToyPolicy(torch.nn.Module):
    """Categorical over V tokens per (k, d); logits = bias + w * mean pixel (uses the image)."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(K, D, V))
        self.w = torch.nn.Parameter(torch.zeros(K, D, V))

    def token_logits(self, images, instructions):
        feat = images.float().mean(dim=(1, 2, 3)) / 255.0
        return self.bias + self.w * feat[:, None, None, None]

    @torch.no_grad()
    def sample_chunk(self, images, instructions, temperature):
        logits = self.token_logits(images, instructions)
        probs = torch.softmax(logits / temperature, dim=-1)
        tokens = torch.multinomial(probs.reshape(-1, V), 1).reshape(logits.shape[:-1])
        logp, _ = token_logprobs(logits, tokens, temperature)
        return tokens_to_actions(tokens), tokens, logp

    def target_prob(self) -> float:
        """P(the rewarded chunk) at temperature 1 from a blank frame."""
        p = torch.softmax(self.bias.detach(), dim=-1)
        return float(p[0, 0, TARGET[0]] * p[0, 1, TARGET[1]])


class ToyImagination:
    """Writes the chunk's code (tok0 * V + tok1 + 1) into every pixel of the next frame."""

    def __init__(self):
        self.net = torch.nn.Linear(2, 2)  # stands in for the frozen network
        self.batch = 0

    def start(self, first_frames):
        self.batch = first_frames.shape[0]
        return self

    def step(self, actions):
        assert actions.shape == (self.batch, K, D)
        tok = actions_to_tokens(actions)
        code = (tok[..., 0] * V + tok[..., 1] + 1).to(torch.uint8)  # [B, K]
        return code[:, :, None, None, None].expand(self.batch, K, H, H, 3).clone()


class ToyReward:
    window = 1

    def __init__(self):
        self.net = torch.nn.Linear(2, 2)
        self.code = TARGET[0] * V + TARGET[1] + 1

    def detect_success(self, frames):
        hit = frames[:, :, 0, 0, 0] == self.code  # [B, T]
        first = torch.where(
            hit.any(dim=1),
            hit.float().argmax(dim=1),
            torch.full_like(hit[:, 0], -1, dtype=torch.long),
        )
        return hit.any(dim=1), first.long()


class ToyStates:
    def sample(self, n, generator):
        return torch.zeros(n, H, H, 3, dtype=torch.uint8), ["reach the target"] * n


def toy_config(**overrides) -> GRPOConfig:
    base = dict(
        group_size=8,
        groups_per_step=4,
        max_chunks=3,
        rollout_batch_size=16,
        learning_rate=0.05,
        weight_decay=0.0,
        minibatch_trajectories=16,
        micro_batch_trajectories=8,
        iterations=8,
        checkpoint_every=2,
        preset="tiny",
    )
    return GRPOConfig(**{**base, **overrides})


def make_trainer(out: Path, config: GRPOConfig, seed_init: int = 0) -> GRPOTrainer:
    torch.manual_seed(seed_init)
    return GRPOTrainer(
        config, ToyPolicy(), ToyImagination(), ToyReward(), ToyStates(), out, log=None
    )


def test_rollout_truncates_at_detected_success_and_records_old_logprobs():
    torch.manual_seed(0)
    policy = ToyPolicy()
    batch = imagine_rollouts(
        policy,
        ToyImagination(),
        ToyReward(),
        torch.zeros(64, H, H, 3, dtype=torch.uint8),
        ["x"] * 64,
        max_chunks=3,
        temperature=1.6,
    )
    assert batch.tokens.shape == (64, batch.chunk_mask.shape[1], K, D)
    target = torch.tensor(TARGET)
    hit_at = (batch.tokens[:, :, 0, :] == target).all(dim=-1) & batch.chunk_mask  # [N, T]
    # success exactly when some executed chunk was the target, ending at that chunk
    assert torch.equal(batch.success, hit_at.any(dim=1))
    for i in range(64):
        n = int(batch.lengths[i])
        assert batch.chunk_mask[i, :n].all() and not batch.chunk_mask[i, n:].any()
        if batch.success[i]:
            assert hit_at[i, n - 1] and not hit_at[i, : n - 1].any()
            assert int(batch.end_frame[i]) == n * K  # frame index; 0 is the real frame
        else:
            assert n == 3 and int(batch.end_frame[i]) == 3 * K
    # stored log-probs are those of the sampled tokens at the sampling temperature
    logits = policy.token_logits(batch.observations[:, 0], batch.instructions)
    expected, _ = token_logprobs(logits, batch.tokens[:, 0], 1.6)
    torch.testing.assert_close(batch.logprobs[:, 0], expected)
    assert 0 < int(batch.success.sum()) < 64


def test_grpo_raises_probability_of_the_rewarded_chunk(tmp_path):
    trainer = make_trainer(tmp_path, toy_config(iterations=12, checkpoint_every=100))
    before = trainer.policy.target_prob()
    rows = trainer.train()
    after = trainer.policy.target_prob()
    assert before == pytest.approx(1 / 9)
    assert after > 0.5, f"P(rewarded chunk) {before:.3f} -> {after:.3f}"
    early = sum(r["rollout/success_rate"] for r in rows[:3]) / 3
    late = sum(r["rollout/success_rate"] for r in rows[-3:]) / 3
    assert late > early + 0.25, (early, late)
    # an un-updated policy reproduces the rollout log-probs exactly (ratio starts at 1)
    assert all(
        r["debug/first_logprob_max_abs_diff"] < 1e-6 for r in rows if "train/skipped" not in r
    )
    for key in ("groups/frac_dropped", "losses/clip_frac", "losses/entropy", "rollout/mean_length"):
        assert key in rows[0]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == list(range(1, 13))
    exported = load_checkpoint(tmp_path / "policy", kind="policy")
    torch.testing.assert_close(exported.state_dict["bias"], trainer.policy.bias.detach())


def test_dynamic_sampling_draws_more_groups_and_bounds_the_rounds(tmp_path):
    # success rate ~1/9 per chunk over 1 chunk: most groups of 8 are all-failure
    cfg = toy_config(max_chunks=1, groups_per_step=6, max_sampling_rounds=3)
    trainer = make_trainer(tmp_path, cfg)
    torch.manual_seed(1)
    batch, row = trainer.collect(torch.Generator().manual_seed(1))
    assert row["groups/drawn"] > 6 and row["groups/sampling_rounds"] >= 2
    assert row["groups/sampling_rounds"] <= 3
    assert row["groups/frac_dropped"] == pytest.approx(1 - row["groups/kept"] / row["groups/drawn"])
    assert batch is not None and batch.n == 8 * int(row["groups/kept"])
    rates = batch.success.float().view(-1, 8).mean(dim=1)
    assert ((rates >= 0.1) & (rates <= 0.9)).all()
    # nothing can succeed -> every group dropped, rounds bounded, update skipped
    trainer.reward.code = 255
    logged: list[str] = []
    trainer.log = logged.append
    row = trainer.step()
    assert row["train/skipped"] == 1.0 and row["groups/kept"] == 0.0
    assert row["groups/sampling_rounds"] == 3.0 and row["groups/frac_dropped"] == 1.0
    # ...and the log says what to try
    assert any("100 % of groups never succeeded at temperature" in m for m in logged), logged


class Stop(Exception):
    pass


def test_trainer_checkpoints_and_resumes_to_the_identical_run(tmp_path):
    cfg = toy_config(iterations=6, checkpoint_every=2, seed=3)
    full = make_trainer(tmp_path / "full", cfg)
    full_rows = full.train()

    def kill_after_3(iteration, row):
        if iteration == 3:
            raise Stop

    first = make_trainer(tmp_path / "resumed", cfg)
    with pytest.raises(Stop):
        first.train(callbacks=[kill_after_3])
    # the last state on disk is iteration 2; iteration 3's metrics row must be redone
    latest = json.loads((tmp_path / "resumed/checkpoints/latest.json").read_text())
    assert latest["iteration"] == 2
    second = make_trainer(tmp_path / "resumed", cfg, seed_init=99)  # different fresh init
    rows = second.train()
    assert [int(r["iteration"]) for r in rows] == [3, 4, 5, 6]
    for name, value in full.policy.state_dict().items():
        assert torch.equal(value, second.policy.state_dict()[name]), name
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in full_rows[2:]]
    lines = [json.loads(x) for x in (tmp_path / "resumed/metrics.jsonl").read_text().splitlines()]
    assert [int(r["iteration"]) for r in lines] == [1, 2, 3, 4, 5, 6]
    # optimizer state came back from safetensors + JSON, not pickle
    ckpt = tmp_path / "resumed/checkpoints" / "iter-000006"
    assert sorted(p.suffix for p in ckpt.iterdir()) == [".json"] * 4 + [".safetensors"]
    # resuming with different maths is refused
    with pytest.raises(WmpoError, match="clip_eps_high"):
        make_trainer(tmp_path / "resumed", toy_config(iterations=8, clip_eps_high=0.5)).train()


def test_world_and_reward_models_stay_frozen(tmp_path):
    trainer = make_trainer(tmp_path, toy_config(iterations=3))
    assert not trainer.imagination.net.training and not trainer.reward.net.weight.requires_grad

    def unfreeze(iteration, row):
        trainer.reward.net.weight.requires_grad_(True)

    with pytest.raises(WmpoError, match="frozen"):
        trainer.train(callbacks=[unfreeze])
    trainer2 = make_trainer(tmp_path / "b", toy_config(iterations=3))
    trainer2.imagination.net.train()
    with pytest.raises(WmpoError, match="train mode"):
        trainer2.step()


def test_store_initial_states_draws_first_frames(tmp_path):
    import numpy as np

    from wmpo_core.store import EpisodeMeta, EpisodeStore

    store = EpisodeStore(tmp_path / "store", create=True)
    for i in range(3):
        frames = np.full((5, H, H, 3), 10 * i, np.uint8)
        store.add(
            EpisodeMeta(id=f"ep{i}", task="Lift", instruction=f"task {i}"), frames, np.zeros((5, 7))
        )
    states = StoreInitialStates(store)
    frames, instructions = states.sample(5, torch.Generator().manual_seed(0))
    assert frames.shape == (5, H, H, 3) and frames.dtype == torch.uint8
    assert sorted(set(instructions[:3])) == ["task 0", "task 1", "task 2"]  # no repeats first
    for f, s in zip(frames, instructions, strict=True):
        assert int(f[0, 0, 0]) == 10 * int(s.split()[1])
    assert states.distinct == 3
    # A rollout repeated from the same reset adds an episode, not an initial state.
    store.add(
        EpisodeMeta(id="ep0-again", task="Lift", instruction="task 0"),
        np.full((4, H, H, 3), 0, np.uint8),
        np.zeros((4, 7)),
    )
    assert StoreInitialStates(store).distinct == 3


def test_grpo_warns_when_it_will_reuse_initial_states(capsys):
    from offline_trainer.grpo.cli import warn_few_initial_states

    cfg = GRPOConfig.for_preset("tiny", iterations=10)  # 4 groups per step: 40 draws
    assert warn_few_initial_states(32, 128, cfg)
    out = capsys.readouterr().out
    assert "128 episodes give only 32 distinct initial frames for ~40 group draws" in out
    assert not warn_few_initial_states(150, 150, cfg)
    assert capsys.readouterr().out == ""


def test_rollout_batch_concat_pads_chunks():
    def fake(n, t):
        return RolloutBatch(
            observations=torch.zeros(n, t, H, H, 3, dtype=torch.uint8),
            tokens=torch.ones(n, t, K, D, dtype=torch.long),
            logprobs=torch.zeros(n, t, K, D),
            chunk_mask=torch.ones(n, t, dtype=torch.bool),
            success=torch.zeros(n, dtype=torch.bool),
            end_frame=torch.zeros(n, dtype=torch.long),
            instructions=["a"] * n,
        )

    both = RolloutBatch.concat([fake(2, 1), fake(3, 4)])
    assert both.tokens.shape == (5, 4, K, D)
    assert both.lengths.tolist() == [1, 1, 4, 4, 4]


def test_cli_train_grpo_help():
    out = subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", "train", "grpo", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert "--world-model" in out.stdout and "--reward" in out.stdout


def _tiny_real_models(d: Path, cameras: tuple[str, ...] = ("camera",)) -> None:
    """Untrained tiny policy / world model / reward model checkpoints and a 3-episode store."""
    import numpy as np

    from wmpo_core.policy.checkpoint_policy import save_policy_checkpoint
    from wmpo_core.policy.configuration_policy import preset_config
    from wmpo_core.policy.modeling_policy import VLAPolicyModel
    from wmpo_core.policy.processing_policy import NormalizationStats
    from wmpo_core.reward_model import save_reward_model
    from wmpo_core.reward_model.configuration_reward_model import RewardModelConfig
    from wmpo_core.reward_model.modeling_reward_model import RewardModel
    from wmpo_core.store import EpisodeMeta, EpisodeStore
    from wmpo_core.world_model import build_network, save_world_model, tiny_config

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pcfg = preset_config(
        "tiny",
        image_size=32,
        d_model=32,
        n_layers=1,
        vision_channels=(8, 16, 16),
        vision_grid=4,
        cameras=cameras,
    )
    stats = NormalizationStats.from_actions(rng.uniform(-1, 1, (100, 7)))
    save_policy_checkpoint(
        d / "policy",
        VLAPolicyModel(pcfg),
        stats,
        instructions=["lift the red cube"],
        episode_ids=["e0"],
    )
    wcfg = tiny_config()
    save_world_model(d / "wm", wcfg, build_network(wcfg))
    rcfg = RewardModelConfig(image_size=32, hidden_size=32, num_layers=1, intermediate_size=64)
    save_reward_model(d / "rm", RewardModel(rcfg))
    store = EpisodeStore(d / "store", create=True)
    for i in range(3):
        frames = rng.integers(0, 255, (4, 128, 128, 3), dtype=np.uint8)
        store.add(
            EpisodeMeta(id=f"e{i}", task="Lift", instruction="lift the red cube"),
            frames,
            np.zeros((4, 7)),
        )


def test_cli_runs_grpo_on_the_real_tiny_models_and_resumes(tmp_path):
    """Wiring, not learning: untrained models, so groups are kept whatever their success
    rate ([0, 1]) to drive the whole update path (log-probs, backward, optimizer, export)."""
    from wmpo_core.cli import main as wmpo_main
    from wmpo_core.policy.checkpoint_policy import load_policy, load_policy_checkpoint

    _tiny_real_models(tmp_path)
    common = [
        "train", "grpo", "--policy", str(tmp_path / "policy"), "--world-model", str(tmp_path / "wm"),
        "--reward", str(tmp_path / "rm"), "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
        "--set", "groups_per_step=2", "group_size=4", "max_chunks=2", "minibatch_trajectories=8",
        "micro_batch_trajectories=4", "rollout_batch_size=8", "success_rate_low=0.0",
        "success_rate_high=1.0", "learning_rate=0.01", "checkpoint_every=1",
    ]  # fmt: skip
    assert wmpo_main([*common, "--iterations", "1"]) == 0
    assert wmpo_main([*common, "--iterations", "2"]) == 0  # resumes after iteration 1
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    for r in rows:
        assert r["groups/kept"] == 2.0 and r["train/optimizer_steps"] == 1.0
        assert r["debug/first_logprob_max_abs_diff"] < 1e-5  # adapters reproduce the sampler
        assert r["train/tokens"] > 0
    trained = load_policy_checkpoint(tmp_path / "run/policy")
    start, _, _ = load_policy(tmp_path / "policy")
    moved = any(
        not torch.equal(a, b)
        for a, b in zip(
            start.state_dict().values(), trained.model.state_dict().values(), strict=True
        )
    )
    assert moved  # AdamW stepped (weight decay at least)
    _, _, manifest = load_policy(tmp_path / "run/policy")
    assert manifest["trainer"] == "grpo" and manifest["iterations"] == 2
    assert manifest["parent"] == str((tmp_path / "policy").resolve())
    # A person can watch what the policy did in imagination: one grid video per checkpoint.
    videos = sorted((tmp_path / "run/videos").glob("iter_*.mp4"))
    assert [v.name for v in videos] == ["iter_0001.mp4", "iter_0002.mp4"]
    assert all(v.stat().st_size > 1000 for v in videos)


def test_a_policy_reading_the_first_frame_trains_in_imagination(tmp_path):
    """Imagined rollouts hand such a policy each imagined frame beside the real first frame,
    and the update recomputes the rollout's log-probs from the same pair."""
    from offline_trainer.grpo.adapters import VLAGRPOPolicy
    from wmpo_core.cli import main as wmpo_main
    from wmpo_core.policy.checkpoint_policy import load_policy
    from wmpo_core.policy.configuration_policy import EPISODE_START

    _tiny_real_models(tmp_path, cameras=("camera", EPISODE_START))
    args = [
        "train", "grpo", "--policy", str(tmp_path / "policy"), "--world-model", str(tmp_path / "wm"),
        "--reward", str(tmp_path / "rm"), "--store", str(tmp_path / "store"), "--out", str(tmp_path / "run"),
        "--iterations", "1", "--set", "groups_per_step=2", "group_size=4", "max_chunks=2",
        "minibatch_trajectories=8", "micro_batch_trajectories=4", "rollout_batch_size=8",
        "success_rate_low=0.0", "success_rate_high=1.0",
    ]  # fmt: skip
    assert wmpo_main(args) == 0
    row = json.loads((tmp_path / "run/metrics.jsonl").read_text().splitlines()[0])
    assert row["debug/first_logprob_max_abs_diff"] < 1e-5 and row["train/tokens"] > 0
    policy = VLAGRPOPolicy(*load_policy(tmp_path / "run/policy"))
    assert policy.reads_first_frame
    with pytest.raises(WmpoError, match=r"reads \[B, 2, H, W, 3\]"):
        policy.token_logits(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["lift the red cube"])
