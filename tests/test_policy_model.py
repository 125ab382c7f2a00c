"""The VLA chunk policy: action tokens, one-pass chunk decoding, sampling and exact log-probs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wmpo_core.policy import (
    ActionTokenizer,
    NormalizationStats,
    PolicyConfig,
    PolicyProcessor,
    VLAPolicyModel,
    augment_images,
    hash_instruction,
    sample_tokens,
    token_log_probs,
)

SMALL = dict(d_model=32, n_layers=1, n_heads=2, vision_channels=(8, 8, 8), vision_grid=4)


def _model(seed: int = 0, **overrides) -> tuple[VLAPolicyModel, PolicyProcessor]:
    torch.manual_seed(seed)
    cfg = PolicyConfig(image_size=32, **{**SMALL, **overrides})
    model = VLAPolicyModel(cfg).eval()
    stats = NormalizationStats.from_actions(np.random.default_rng(0).uniform(-1, 1, (500, 7)))
    return model, PolicyProcessor(cfg, stats, model.instruction_vocab)


def _batch(proc: PolicyProcessor, n: int, seed: int = 0, instruction: str = "lift the red cube"):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 1, 32, 32, 3), dtype=np.uint8)
    return proc.batch(frames, [instruction] * n)


def test_action_tokens_round_trip_within_half_a_bin():
    rng = np.random.default_rng(1)
    train = rng.normal(0, 0.3, (5000, 7))
    train[:, 5] = 0.0  # a dim the expert never moves: q01 == q99
    train[:, 6] = rng.choice([-1.0, 1.0], 5000)  # the gripper: two values
    stats = NormalizationStats.from_actions(train)
    tok = ActionTokenizer(stats, 256)
    lo, hi = np.asarray(stats.q01), np.asarray(stats.q99)
    actions = rng.uniform(lo, hi, (2000, 7))
    tokens = tok.encode(actions)
    assert tokens.dtype == np.int64 and tokens.min() >= 0 and tokens.max() <= 255
    err = np.abs(tok.decode(tokens) - actions)
    assert (err <= tok.bin_width / 2 + 1e-6).all(), err.max(axis=0)
    # bins -> actions -> bins is the identity
    all_bins = np.tile(np.arange(256)[:, None], (1, 7))
    assert (tok.encode(tok.decode(all_bins)) == all_bins).all()
    # outside [q01, q99]: clipped to the edge bins, never wrapped
    assert (tok.encode(np.full((1, 7), 1e3)) == 255).all()
    assert (tok.encode(np.full((1, 7), -1e3)) == 0).all()
    # the constant dim decodes back to its constant
    assert abs(tok.decode(tok.encode(np.zeros((1, 7))))[0, 5]) < 1e-3


def test_hashed_instruction_is_stable_and_padded():
    ids, mask = hash_instruction("Lift the red cube!", vocab=1024, max_tokens=6)
    again, _ = hash_instruction("lift  the RED cube", vocab=1024, max_tokens=6)
    assert (ids == again).all() and mask.tolist() == [True] * 4 + [False] * 2
    assert ids[:4].min() >= 1 and ids[4:].tolist() == [0, 0]
    other, _ = hash_instruction("stack the red cube", vocab=1024, max_tokens=6)
    assert other[0] != ids[0]


def test_one_forward_pass_gives_k_by_d_logits_conditioned_on_image_and_instruction():
    model, proc = _model()
    b = _batch(proc, 3)
    logits = model(b)
    assert logits.shape == (3, 8, 7, 256)
    other_image = _batch(proc, 3, seed=5)
    other_text = _batch(proc, 3, instruction="stack the red cube on the green cube")
    assert not torch.allclose(model(other_image), logits)
    assert not torch.allclose(model(other_text), logits)
    # batched rows are independent of each other
    assert torch.allclose(model(_batch(proc, 1)), logits[:1], atol=1e-5)


def test_log_prob_is_the_sum_of_token_log_softmaxes_batched_and_differentiable():
    model, proc = _model()
    b = _batch(proc, 4)
    gen = torch.Generator().manual_seed(0)
    tokens, sampled_lp = model.sample(b, temperature=1.6, generator=gen)
    model.train()
    lp = model.log_prob(b, tokens, temperature=1.6)
    logits = model(b).detach()
    manual = torch.zeros(4)
    for i in range(4):
        for k in range(8):
            for d in range(7):
                row = torch.log_softmax(logits[i, k, d] / 1.6, dim=-1)
                manual[i] += row[tokens[i, k, d]]
    assert torch.allclose(lp.detach(), manual, atol=1e-3)
    assert torch.allclose(sampled_lp, manual, atol=1e-3)
    per_token = model.token_log_probs(b, tokens, temperature=1.6)
    assert per_token.shape == (4, 8, 7)
    assert torch.allclose(per_token.sum(dim=(1, 2)), lp, atol=1e-4)
    # differentiable: raising the chunk's log-prob by gradient ascent works
    (-lp[0]).backward()  # SGD descends: minimise the negative log-prob
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    opt.step()
    assert model.log_prob(b, tokens, 1.6)[0] > lp[0]


def test_sampling_frequencies_match_exp_log_prob():
    """Joint chunk frequencies over many draws agree with exp(chunk log-prob) (K=1, D=2, 4 bins)."""
    model, proc = _model(
        seed=3, chunk_size=1, n_bins=4, action_names=("a", "b"), instruction_vocab=64
    )
    stats = NormalizationStats.from_actions(np.random.default_rng(0).uniform(-1, 1, (100, 2)))
    proc = PolicyProcessor(model.config, stats, model.instruction_vocab)
    b = _batch(proc, 1)
    with torch.no_grad():
        logits = model(b) * 4  # sharpen so the outcomes are far from uniform
    n = 20000
    gen = torch.Generator().manual_seed(7)
    draws = sample_tokens(logits.expand(n, -1, -1, -1), temperature=1.6, generator=gen)
    counts = np.zeros((4, 4))
    for a, c in draws[:, 0].tolist():
        counts[a, c] += 1
    for a in range(4):
        for c in range(4):
            chunk = torch.tensor([[[a, c]]])
            p = float(token_log_probs(logits, chunk, 1.6).sum().exp())
            sigma = np.sqrt(p * (1 - p) / n)
            assert abs(counts[a, c] / n - p) < 4.5 * sigma + 1e-3, (a, c, counts[a, c] / n, p)
    assert counts.max() / n > 0.15  # the test distribution is not near-uniform


def test_temperature_zero_is_greedy_and_log_prob_refuses_it():
    model, proc = _model()
    b = _batch(proc, 2)
    tokens, _ = model.sample(b, temperature=0.0)
    assert torch.equal(tokens, model.greedy(b))
    with pytest.raises(ValueError, match="temperature"):
        model.log_prob(b, tokens, temperature=0.0)


def test_augmentation_shifts_and_jitters_deterministically():
    model, proc = _model()
    x = _batch(proc, 2).images
    a = augment_images(x, torch.Generator().manual_seed(0))
    b = augment_images(x, torch.Generator().manual_seed(0))
    c = augment_images(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)


def _tiny_backbone_dir(root):
    from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    vision = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    vision.save_pretrained(root / "vision")
    LlamaModel(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=128,
            max_position_embeddings=256,
        )
    ).save_pretrained(root / "language")
    return vision


def test_base_preset_loads_a_local_siglip_llama_backbone(tmp_path):
    vision = _tiny_backbone_dir(tmp_path / "bb")
    cfg = PolicyConfig(preset="base", backbone_path=str(tmp_path / "bb"))
    model = VLAPolicyModel(cfg)
    # the pretrained weights on disk are the ones in the policy
    ref = vision.state_dict()
    own = model.backbone.vision.state_dict()
    assert ref.keys() == own.keys() and all(torch.equal(ref[k], own[k]) for k in ref)
    assert cfg.image_size == 32 and cfg.text_config["model_type"] == "llama"
    assert model.instruction_vocab == 128
    stats = NormalizationStats.from_actions(np.random.default_rng(0).uniform(-1, 1, (100, 7)))
    proc = PolicyProcessor(cfg, stats, model.instruction_vocab)
    b = _batch(proc, 2)
    logits = model(b)
    assert logits.shape == (2, 8, 7, 256)
    tokens, _ = model.sample(b, 1.6, torch.Generator().manual_seed(0))
    lp = model.log_prob(b, tokens, 1.6)
    assert torch.allclose(
        lp,
        torch.log_softmax(logits / 1.6, -1).gather(-1, tokens[..., None]).sum((1, 2, 3)),
        atol=1e-3,
    )
    lp.sum().backward()
    assert model.backbone.queries.grad.abs().sum() > 0
    # rebuilt from the stored configs alone (no backbone_path read): same parameter layout
    rebuilt = VLAPolicyModel(
        PolicyConfig.from_dict({**cfg.to_dict(), "backbone_path": "/nonexistent"})
    )
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
