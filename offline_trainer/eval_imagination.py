"""`wmpo eval imagination`: how faithful are the world model and the reward model?

    wmpo eval imagination --world-model WM --reward RM --data STORE [--counterfactual]

On held-out real episodes (the same id-hash split the trainers leave out):

1. fidelity: replay the real actions from the real first frame; PSNR / SSIM of
   imagined vs real frames per horizon, beside copying the first frame;
2. outcome agreement: the reward model's verdict on the imagined episode vs the
   real label, on a set balanced between successes and failures, beside the
   always-success baseline (and the reward model on the real frames);
3. side-by-side real | imagined mp4 videos;
4. `--counterfactual`: edit the recorded actions (gripper never closes, opens
   mid-lift, lateral offset on the approach, stall), replay each edit open-loop
   in the sim from the episode's seed for its true label, imagine the same edit
   from the same first frame, and report agreement per edit type.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from wmpo_core.errors import WmpoError
from wmpo_core.world_model.metrics import balanced_agreement, psnr, ranking_auc, ssim
from wmpo_core.world_model.training import select_episodes

EDITS = ("gripper_never_closes", "gripper_opens_mid_lift", "lateral_offset", "stall")
HORIZONS = (1, 8, 16, 32, 48, 64, 80, 96, 128, 160)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world-model", required=True, help="world-model checkpoint")
    p.add_argument("--reward", required=True, help="reward-model checkpoint")
    p.add_argument("--data", action="append", required=True, help="episode store (repeatable)")
    p.add_argument("--task", default=None)
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes (half successes)")
    p.add_argument("--heldout-frac", type=float, default=0.15, help="as used in training")
    p.add_argument("--out", default="runs/eval_imagination", help="report.json and videos")
    p.add_argument("--videos", type=int, default=4, help="side-by-side videos to write")
    p.add_argument("--counterfactual", action="store_true", help="also run action edits")
    p.add_argument("--cf-episodes", type=int, default=10, help="episodes per edit type")
    p.add_argument("--edits", default=",".join(EDITS), help="comma-separated edit types")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from wmpo_core.reward_model import load_reward_model
    from wmpo_core.world_model import load_world_model

    if args.threads:
        torch.set_num_threads(args.threads)
    wm = load_world_model(args.world_model)
    rm = load_reward_model(args.reward)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    held = select_episodes(
        args.data,
        task=args.task,
        split="heldout",
        heldout_frac=args.heldout_frac,
        labelled_only=True,
    )
    episodes = balanced_pick(held, args.episodes)
    report: dict = {"world_model": args.world_model, "reward": args.reward, "data": args.data}
    t0 = time.monotonic()
    imagined = {m.id: imagine_episode(wm, s.load(m.id)) for s, m in episodes}
    report["imagination_seconds"] = round(time.monotonic() - t0, 2)
    report["fidelity"] = fidelity(episodes, imagined)
    report["outcome"] = outcome(episodes, imagined, rm)
    write_videos(episodes, imagined, out, args.videos)
    if args.counterfactual:
        edits = [e for e in args.edits.split(",") if e]
        bad = sorted(set(edits) - set(EDITS))
        if bad:
            raise WmpoError(f"--edits: unknown edit types {bad}; choose from {', '.join(EDITS)}")
        report["counterfactual"] = counterfactual(
            held, wm, rm, edits, args.cf_episodes, np.random.default_rng(args.seed), out
        )
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"report: {out / 'report.json'}")
    return 0


def balanced_pick(held, n: int):
    succ = [x for x in held if x[1].success]
    fail = [x for x in held if not x[1].success]
    k = min(len(succ), len(fail), max(n // 2, 1))
    if k == 0:
        raise WmpoError(
            f"held-out split has {len(succ)} successes and {len(fail)} failures; a balanced "
            "evaluation needs both (collect with --perturb-frac, or raise --heldout-frac)"
        )
    return succ[:k] + fail[:k]


def imagine_episode(wm, episode) -> np.ndarray:
    """Imagined frames [T, H, W, 3] from the real first frame and the real actions."""
    frames = np.asarray(episode.frames)
    actions = np.asarray(episode.actions, dtype=np.float32)
    if len(frames) < 2:
        return frames.copy()
    imagined = wm.rollout_actions(frames[None, 0], actions[None, :-1])[0]
    return np.concatenate([frames[:1], imagined])


def fidelity(episodes, imagined) -> dict:
    rows = {}
    for h in HORIZONS:
        model_p, copy_p, model_s, copy_s = [], [], [], []
        for store, meta in episodes:
            real = np.asarray(store.load(meta.id).frames)
            if len(real) <= h:
                continue
            im = imagined[meta.id][h]
            model_p.append(psnr(im, real[h]))
            copy_p.append(psnr(real[0], real[h]))
            model_s.append(ssim(im[None], real[h][None])[0])
            copy_s.append(ssim(real[0][None], real[h][None])[0])
        if model_p:
            rows[str(h)] = {
                "n": len(model_p),
                "psnr": float(np.mean(model_p)),
                "psnr_copy": float(np.mean(copy_p)),
                "ssim": float(np.mean(model_s)),
                "ssim_copy": float(np.mean(copy_s)),
            }
    return rows


def outcome(episodes, imagined, rm) -> dict:
    truth = np.array([bool(m.success) for _, m in episodes])
    # The best window's score per episode, scored once: thresholded it is detect_success's
    # verdict (some window above the threshold); unthresholded it ranks the outcomes.
    best_imagined = np.array([_best_window(rm, imagined[m.id]) for _, m in episodes])
    best_real = np.array([_best_window(rm, s.load(m.id).frames) for s, m in episodes])
    on_imagined = best_imagined > rm.config.threshold
    on_real = best_real > rm.config.threshold
    return {
        "auc_imagined": ranking_auc(best_imagined, truth),
        "auc_real_frames": ranking_auc(best_real, truth),
        "n": int(len(truth)),
        "n_success": int(truth.sum()),
        "agreement_imagined": balanced_agreement(on_imagined, truth),
        "agreement_real_frames": balanced_agreement(on_real, truth),
        "agreement_always_success": balanced_agreement(np.ones_like(truth), truth),
        # Which way the imagined verdicts err: success imagined for a real failure is what
        # GRPO exploits (reward hacking); a real success imagined as failure starves it.
        "imagined_success_on_real_failure": int((on_imagined & ~truth).sum()),
        "imagined_failure_on_real_success": int((~on_imagined & truth).sum()),
    }


def _best_window(rm, frames) -> float:
    return float(rm.window_probs(np.asarray(frames))[0].max())


def write_videos(episodes, imagined, out: Path, n: int) -> list[str]:
    import imageio.v2 as imageio

    paths = []
    for store, meta in episodes[: n // 2] + episodes[len(episodes) // 2 :][: n - n // 2]:
        real = np.asarray(store.load(meta.id).frames)
        side = np.concatenate([real, imagined[meta.id]], axis=2)
        path = out / f"{meta.id}_{'success' if meta.success else 'failure'}.mp4"
        imageio.mimwrite(path, _even(side), fps=int(meta.fps or 20), macro_block_size=1)
        paths.append(str(path))
    return paths


def _even(frames: np.ndarray) -> np.ndarray:
    """Upscale tiny frames x2 so players show them; libx264 wants even sides."""
    f = frames.repeat(2, axis=1).repeat(2, axis=2)
    return f[:, : f.shape[1] // 2 * 2, : f.shape[2] // 2 * 2]


# --- counterfactual edits ------------------------------------------------------------
def edit_actions(actions: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray | None:
    """An edited copy of recorded actions [T, 7], or None when the edit does not apply
    (e.g. the gripper never closed in the recording). Gripper: -1 open, +1 closed."""
    a = np.array(actions, dtype=np.float32, copy=True)
    closes = np.flatnonzero(a[:, 6] > 0)
    if closes.size == 0 or closes[0] < 4:
        return None
    t_close = int(closes[0])
    if kind == "gripper_never_closes":
        a[:, 6] = -1.0
    elif kind == "gripper_opens_mid_lift":
        # Open a few steps into the lift, before the object clears the success height.
        t_open = t_close + max(6, (len(a) - t_close) // 4)
        if t_open >= len(a) - 2:
            return None
        a[t_open:, 6] = -1.0
    elif kind == "lateral_offset":
        # Push sideways (y: left/right in the front camera) on the last part of the approach;
        # the rest of the recording is replayed unchanged, so the grasp closes beside the object.
        lo = max(0, t_close - 10)
        a[lo:t_close, 1] = np.clip(a[lo:t_close, 1] + rng.choice([-0.6, 0.6]), -1, 1)
    elif kind == "stall":
        # The arm holds still (zero deltas, gripper unchanged) for 16 steps before the grasp,
        # then resumes the recording: a delay, whose outcome the sim decides.
        t = max(0, t_close - 4)
        a = np.concatenate([a[:t], np.zeros((16, a.shape[1]), np.float32), a[t:]])
    else:
        raise WmpoError(f"unknown edit type '{kind}'; choose from {', '.join(EDITS)}")
    return a


def replay_in_sim(task: str, seed: int, actions: np.ndarray, image_size: int) -> bool:
    """True label of an action sequence: open-loop replay in the sim from the episode's
    seed; success as soon as the privileged flag is set."""
    from wmpo_core.sim import SimArm, SimConfig

    arm = SimArm(SimConfig(task=task, image_size=image_size, render=False))
    try:
        arm.reset(seed=seed)
        for a in actions:
            arm.step(a)
            if arm.success():
                return True
        return False
    finally:
        if hasattr(arm, "close"):
            arm.close()


def counterfactual(held, wm, rm, edits, n: int, rng, out: Path) -> dict:
    usable = [(s, m) for s, m in held if m.seed is not None]
    if not usable:
        raise WmpoError("counterfactual: no held-out episode records its sim seed (meta.seed)")
    succ = [x for x in usable if x[1].success]
    results: dict = {}
    for kind in edits:
        preds, truths = [], []
        for store, meta in succ:  # edits of successful recordings can flip the outcome
            if len(truths) >= n:
                break
            ep = store.load(meta.id)
            edited = edit_actions(np.asarray(ep.actions), kind, rng)
            if edited is None:
                continue
            truth = replay_in_sim(meta.task, meta.seed, edited, ep.frames.shape[1])
            frames = np.asarray(ep.frames)
            im = wm.rollout_actions(frames[None, 0], edited[None])[0]
            pred, _ = rm.detect_success(np.concatenate([frames[:1], im]))
            preds.append(pred)
            truths.append(truth)
        p, t = np.array(preds, bool), np.array(truths, bool)
        results[kind] = {
            "n": int(len(t)),
            "true_successes": int(t.sum()),
            "imagined_successes": int(p.sum()),
            "accuracy": float((p == t).mean()) if len(t) else float("nan"),
            "balanced_agreement": balanced_agreement(p, t),
        }
    return results


def print_report(r: dict) -> None:
    print("\nfidelity (held-out, real actions from the real first frame)")
    print(f"{'h':>5} {'n':>4} {'PSNR':>7} {'copy':>7} {'gain':>6} {'SSIM':>6} {'copy':>6}")
    for h, row in r["fidelity"].items():
        print(
            f"{h:>5} {row['n']:>4} {row['psnr']:7.2f} {row['psnr_copy']:7.2f} "
            f"{row['psnr'] - row['psnr_copy']:6.2f} {row['ssim']:6.3f} {row['ssim_copy']:6.3f}"
        )
    o = r["outcome"]
    print(
        f"\noutcome agreement (balanced, n={o['n']}, {o['n_success']} successes): imagined "
        f"{o['agreement_imagined']:.3f} | reward on real frames {o['agreement_real_frames']:.3f}"
        f" | always-success {o['agreement_always_success']:.3f}"
    )
    if "auc_imagined" in o:
        print(
            f"  ranking AUC of the best window (threshold-free, 0.5 = chance): imagined "
            f"{o['auc_imagined']:.3f} | real frames {o['auc_real_frames']:.3f}"
        )
    if "imagined_success_on_real_failure" in o:
        print(
            f"  imagined success on a real failure (exploitable): "
            f"{o['imagined_success_on_real_failure']}/{o['n'] - o['n_success']}; imagined "
            f"failure on a real success: {o['imagined_failure_on_real_success']}/{o['n_success']}"
        )
    for kind, row in r.get("counterfactual", {}).items():
        print(
            f"counterfactual {kind:<24} n={row['n']:>3} true succ={row['true_successes']:>3} "
            f"imagined succ={row['imagined_successes']:>3} acc={row['accuracy']:.3f} "
            f"balanced={row['balanced_agreement']:.3f}"
        )
