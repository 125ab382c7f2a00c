"""Policy benchmark (CPU): chunk latency, parameter counts, BC and log-prob throughput.

    .venv/bin/python benchmarks/policy.py [--threads 1] [--checkpoint assets/policies/Lift]

Prints one table. Baselines measured in the same run:
- chunk latency against the time the chunk takes to execute (K / 20 Hz = 400 ms):
  the ratio is how many times faster than real time the policy plans;
- batched log-prob (GRPO's inner loop, B = 64 chunks) against B single-chunk passes.
Success rates are read from the eval reports committed beside the base policies
(assets/policies/<task>.eval.json, written by `wmpo eval policy --json`; the
checkpoint directory itself holds only hashed files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wmpo_core.interfaces import DEFAULT_CONTROL_RATE_HZ  # noqa: E402
from wmpo_core.policy import (  # noqa: E402
    NormalizationStats,
    PolicyConfig,
    PolicyProcessor,
    VLAChunkPolicy,
    VLAPolicyModel,
)
from wmpo_core.policy_api import Observation  # noqa: E402


def _percentiles(samples: list[float]) -> tuple[float, float]:
    a = np.asarray(samples) * 1000
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def bench_latency(policy: VLAChunkPolicy, camera_size: int, n: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    obs = Observation(
        images={"camera": rng.integers(0, 256, (camera_size, camera_size, 3), dtype=np.uint8)},
        instruction="lift the red cube",
    )
    for _ in range(5):
        policy.predict_chunk(obs)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        policy.predict_chunk(obs)
        times.append(time.perf_counter() - t0)
    return _percentiles(times)


def bench_bc(model: VLAPolicyModel, proc: PolicyProcessor, batch: int, steps: int) -> float:
    from offline_trainer.train_policy import bc_loss

    rng = np.random.default_rng(0)
    size = model.config.image_size
    sample = {
        "frames": rng.integers(0, 256, (batch, 1, size, size, 3), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, (batch, model.config.chunk_size, 7)).astype(np.float32),
        "action_valid": np.ones((batch, model.config.chunk_size), bool),
        "instruction": ["lift the red cube"] * batch,
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()  # first step warms up allocators
        loss, _ = bc_loss(model, proc, sample, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return steps * batch / (time.perf_counter() - t0)


def bench_log_prob(model: VLAPolicyModel, proc: PolicyProcessor, batch: int) -> tuple[float, float]:
    """(chunks/s batched with backward, chunks/s one at a time with backward)."""
    rng = np.random.default_rng(0)
    size = model.config.image_size
    frames = rng.integers(0, 256, (batch, 1, size, size, 3), dtype=np.uint8)
    b = proc.batch(frames, ["lift the red cube"] * batch)
    tokens = torch.randint(0, model.config.n_bins, (batch, model.config.chunk_size, 7))
    t0 = time.perf_counter()
    model.log_prob(b, tokens, 1.6).sum().backward()
    batched = batch / (time.perf_counter() - t0)
    n_single = min(batch, 16)
    t0 = time.perf_counter()
    for i in range(n_single):
        one = proc.batch(frames[i : i + 1], ["lift the red cube"])
        model.log_prob(one, tokens[i : i + 1], 1.6).sum().backward()
    single = n_single / (time.perf_counter() - t0)
    model.zero_grad()
    return batched, single


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=200, help="latency samples")
    parser.add_argument("--bc-steps", type=int, default=10)
    parser.add_argument("--assets", default=str(REPO / "assets" / "policies"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = PolicyConfig(image_size=64)
    model = VLAPolicyModel(cfg).eval()
    stats = NormalizationStats.from_actions(np.random.default_rng(0).uniform(-1, 1, (100, 7)))
    proc = PolicyProcessor(cfg, stats, model.instruction_vocab)
    manifest = {"name": "bench", "instructions": ["lift the red cube"], "files": {}}
    policy = VLAChunkPolicy(model, proc, manifest)
    chunk_s = cfg.chunk_size / DEFAULT_CONTROL_RATE_HZ

    rows = [("tiny parameters", f"{model.num_parameters():,}", "")]
    for cam in (64, 128):
        p50, p99 = bench_latency(policy, cam, args.n)
        rows.append(
            (
                f"chunk latency, {cam}px camera, p50 / p99",
                f"{p50:.1f} / {p99:.1f} ms",
                f"{chunk_s * 1000 / p99:.0f}x faster than the chunk executes ({chunk_s * 1000:.0f} ms)",
            )
        )
    sps = bench_bc(model, proc, 64, args.bc_steps)
    rows.append(("BC throughput (batch 64, augment)", f"{sps:.0f} samples/s", ""))
    batched, single = bench_log_prob(model, proc, 64)
    rows.append(
        (
            "log-prob + backward, T=1.6",
            f"{batched:.0f} chunks/s (B=64)",
            f"{batched / single:.1f}x one-at-a-time ({single:.0f} chunks/s)",
        )
    )
    for report in sorted(Path(args.assets).glob("*.eval.json")):
        s = json.loads(report.read_text())
        lo, hi = s["wilson95"]
        rows.append(
            (
                f"{s['task']} success (committed base policy)",
                f"{s['successes']}/{s['episodes']} = {100 * s['success_rate']:.0f} %",
                f"95 % CI {100 * lo:.0f}-{100 * hi:.0f} %",
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"policy benchmark, torch threads {args.threads}, CPU")
    for name, value, note in rows:
        print(f"  {name.ljust(width)}  {value:<26} {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
