"""Imagination speed and fidelity, beside the real sim.

    .venv/bin/python benchmarks/imagination.py                       # speed only
    .venv/bin/python benchmarks/imagination.py --world-model WM --reward RM --data STORE \
        [--flow-model WMF] [--counterfactual]

Prints a table of imagined frames/s and peak memory for the tiny world model on
the CPU at 64 and 128 px (each measured in a fresh subprocess so peak RSS is its
own), the camera sim's steps/s measured in the same run, and their ratio; with
trained models also PSNR per horizon vs the copy-frame baseline, outcome and
counterfactual agreement (offline_trainer/eval_imagination.py), and for a flow
variant the PSNR against the number of Euler sampling steps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEED_CODE = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
from wmpo_core.world_model import WorldModel, WorldModelConfig, build_network
size, batch, variant = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = WorldModelConfig(image_size=size, variant=variant, sampling_steps=4)
wm = WorldModel(cfg, build_network(cfg))
first = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
acts = np.zeros((batch, 6, cfg.chunk_size, 7), np.float32)
wm.rollout(first, acts[:, :1])  # warm-up
t = time.perf_counter()
wm.rollout(first, acts)
dt = time.perf_counter() - t
frames = batch * acts.shape[1] * cfg.chunk_size
# VmHWM, not ru_maxrss: Linux carries ru_maxrss of the forking parent across exec.
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"fps": frames / dt, "peak_rss_mb": int(hwm) / 1024}))
"""


def speed(size: int, batch: int, variant: str, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SPEED_CODE, str(size), str(batch), variant, str(threads)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def sim_speed(size: int, steps: int = 60) -> float:
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    import numpy as np

    from wmpo_core.sim.arm import SimArm, SimConfig

    arm = SimArm(SimConfig(task="Lift", image_size=size, render=True))
    arm.reset(seed=0)
    t = time.perf_counter()
    for _ in range(steps):
        arm.step(np.zeros(7))
    dt = time.perf_counter() - t
    arm.close()
    return steps / dt


def flow_steps_table(flow_model: str, data: list[str], task: str | None) -> list[dict]:
    import numpy as np

    from offline_trainer.eval_imagination import balanced_pick, imagine_episode
    from wmpo_core.world_model import load_world_model
    from wmpo_core.world_model.metrics import psnr
    from wmpo_core.world_model.training import select_episodes

    wm = load_world_model(flow_model)
    eps = balanced_pick(select_episodes(data, task=task, split="heldout", labelled_only=True), 10)
    rows = []
    for steps in (1, 2, 4, 8):
        wm.net.sampler.steps = steps
        t = time.perf_counter()
        vals = []
        for s, m in eps:
            real = np.asarray(s.load(m.id).frames)
            im = imagine_episode(wm, s.load(m.id))
            vals.append(psnr(im[1:], real[1:]).mean())
        rows.append({"steps": steps, "psnr": float(np.mean(vals)), "s": time.perf_counter() - t})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--world-model")
    ap.add_argument("--reward")
    ap.add_argument("--data", action="append")
    ap.add_argument("--task", default=None)
    ap.add_argument("--flow-model", default=None)
    ap.add_argument("--counterfactual", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    print(f"# imagination benchmark (CPU, torch threads={args.threads}, batch {args.batch})")
    print(f"{'what':<34} {'frames/s':>10} {'peak MB':>9} {'x sim':>7}")
    sims = {size: sim_speed(size) for size in (64, 128)}
    for size in (64, 128):
        print(
            f"{'real sim (camera) ' + str(size) + ' px':<34} {sims[size]:10.1f} {'':>9} {1.0:7.1f}"
        )
        for variant in ("deterministic", "flow"):
            r = speed(size, args.batch, variant, args.threads)
            label = f"tiny {variant[:5]} {size} px" + (" (4 steps)" if variant == "flow" else "")
            print(
                f"{label:<34} {r['fps']:10.1f} {r['peak_rss_mb']:9.0f} {r['fps'] / sims[size]:7.1f}"
            )
    if args.flow_model and args.data:
        print("\n# flow variant: Euler steps vs PSNR (held-out, mean over all horizons)")
        for row in flow_steps_table(args.flow_model, args.data, args.task):
            print(f"steps {row['steps']:>2}: PSNR {row['psnr']:.2f} dB  ({row['s']:.1f} s)")
    if args.world_model and args.reward and args.data:
        from offline_trainer import eval_imagination

        cmd = [
            "--world-model",
            args.world_model,
            "--reward",
            args.reward,
            "--out",
            "runs/bench_imagination",
        ]
        for d in args.data:
            cmd += ["--data", d]
        if args.task:
            cmd += ["--task", args.task]
        if args.counterfactual:
            cmd.append("--counterfactual")
        p = argparse.ArgumentParser()
        eval_imagination.add_arguments(p)
        eval_imagination.run(p.parse_args(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
