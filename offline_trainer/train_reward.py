"""`wmpo train reward`: the success classifier that judges imagined episodes.

    wmpo train reward --data STORE --out RM [--minutes M] [--imagined-from WM]

Clips from labelled episodes (WMPO recipe): the final window of a success is
positive; earlier windows of successes and any window of a failure are negative.
Part of the training episodes is kept aside to calibrate the threshold: each
calibration episode gets the maximum stride-1 window score (what
`detect_success` thresholds), and the threshold maximising episode F1 is stored
in the checkpoint. Episodes held out for `wmpo eval imagination` are never used.

`--imagined-from WM` adds each training episode re-imagined by a world model from
its first frame and real actions, with the real label: the classifier then sees
the world model's rendering style, which is what it judges during GRPO.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wmpo_core.errors import WmpoError
from wmpo_core.reward_model import RewardModel, RewardModelConfig, save_reward_model
from wmpo_core.reward_model.processing_reward_model import (
    calibrate_threshold,
    clips_to_pixel_values,
    training_clips,
)
from wmpo_core.world_model.training import is_heldout, load_arrays, select_episodes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, help="episode store (repeatable)")
    p.add_argument("--out", required=True, help="reward-model checkpoint directory to write")
    p.add_argument("--task", default=None)
    p.add_argument("--preset", default="tiny", choices=["tiny", "base"])
    p.add_argument("--base-path", default="", help="base: local VideoMAE checkpoint directory")
    p.add_argument("--minutes", type=float, default=5.0, help="wall-clock training budget")
    p.add_argument(
        "--max-epochs", type=int, default=0, help="stop after this many epochs (0: none)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--heldout-frac", type=float, default=0.15, help="episodes kept for eval")
    p.add_argument("--cal-frac", type=float, default=0.2, help="training episodes for calibration")
    p.add_argument("--init", default=None, help="start from this reward-model checkpoint")
    p.add_argument("--imagined-from", default=None, help="world model: add re-imagined episodes")
    p.add_argument(
        "--negative-stride",
        type=int,
        default=8,
        help="one negative window per this many frames of a failure (smaller: more negatives)",
    )
    p.add_argument(
        "--backbone",
        default="videomae",
        choices=["videomae", "conv"],
        help="tiny: transformers VideoMAE or a small CNN (docs/world_model.md)",
    )
    p.add_argument("--patch-size", type=int, default=None, help="tiny: spatial patch side")
    p.add_argument("--tubelet-size", type=int, default=None, help="tiny: frames per temporal patch")
    p.add_argument("--hidden-size", type=int, default=None, help="tiny: transformer width")
    p.add_argument("--num-layers", type=int, default=None, help="tiny: transformer depth")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    selected = select_episodes(
        args.data, task=args.task, heldout_frac=args.heldout_frac, labelled_only=True
    )
    cal_ids = {m.id for _, m in selected if is_heldout(m.id + "/reward-cal", args.cal_frac)}
    arrays = load_arrays(selected)
    # (frames, label, first success step or None) per episode
    labels = [(bool(m.success), _success_step(m)) for _, m in selected]
    ids = [m.id for _, m in selected]
    train = [(f, *y) for (f, _), y, i in zip(arrays, labels, ids, strict=True) if i not in cal_ids]
    cal = [(f, *y) for (f, _), y, i in zip(arrays, labels, ids, strict=True) if i in cal_ids]
    wm = _load_world_model(args.imagined_from)
    if wm is not None:
        imagined = _imagine(wm, arrays)
        train += [
            (f, *y) for f, y, i in zip(imagined, labels, ids, strict=True) if i not in cal_ids
        ]
        # The threshold is set on imagined episodes only: GRPO thresholds imagined frames,
        # which score lower than camera frames (a threshold fit on real frames sat at 0.999
        # and judged every imagined rollout a failure, docs/world_model.md).
        cal = [(f, *y) for f, y, i in zip(imagined, labels, ids, strict=True) if i in cal_ids]
    n_pos = sum(y for _, y, _ in train)
    if n_pos == 0 or n_pos == len(train):
        raise WmpoError(
            f"{args.data}: reward training needs successes and failures; found {n_pos} successes "
            f"in {len(train)} labelled episodes (collect with --perturb-frac for failures)"
        )
    size = int(arrays[0][0].shape[1])
    if args.init:  # continue from a trained reward model: its architecture, its weights
        from dataclasses import replace

        from wmpo_core.checkpoint import load_state_strict
        from wmpo_core.reward_model import load_reward_model

        init = load_reward_model(args.init)
        if init.config.image_size != size:
            raise WmpoError(
                f"--init {args.init}: {init.config.image_size} px model, {size} px frames"
            )
        config = replace(init.config, threshold=0.5)
        model = RewardModel(config, hf_config=_hf_config(init)).train()
        load_state_strict(model, init.state_dict(), args.init)
    else:
        config = RewardModelConfig(
            preset=args.preset,
            image_size=size,
            base_path=args.base_path,
            backbone=args.backbone,
            **_architecture(args),
        )
        model = RewardModel(config).train()
    hard = _hard_negatives(model, train, config) if args.init else []
    if hard:
        print(f"{len(hard)} hard negative windows (failure windows the init model scores > 0.3)")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    # Linear warm-up: a ViT trained from scratch diverges at 1e-3 without one.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 100))
    print(
        f"reward model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, "
        f"{len(train)} train episodes ({n_pos} successes), {len(cal)} calibration episodes"
    )
    start, epoch = time.monotonic(), 0
    bar = tqdm(total=int(args.minutes * 60), unit="s")
    while time.monotonic() - start < args.minutes * 60:
        loss = _epoch(
            model, opt, sched, train, config, rng, args.batch_size, hard, args.negative_stride
        )
        epoch += 1
        bar.update(int(time.monotonic() - start) - bar.n)
        bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}")
        if args.max_epochs and epoch >= args.max_epochs:
            break
    bar.close()
    model.eval()
    if args.init and not _enough_to_calibrate(cal):
        # A night's handful of episodes cannot set a threshold: F1 on 2 episodes is 1.0 at
        # almost any value. Keep the one calibrated on the init model's larger split.
        model.config.threshold = init.config.threshold
        metrics = {"cal/threshold": init.config.threshold, "cal/episodes": len(cal)}
        print(
            f"threshold {init.config.threshold:.3f} kept from {args.init}: {len(cal)} "
            f"calibration episodes (need {MIN_CALIBRATION_EPISODES} with both outcomes)"
        )
    else:
        metrics = _calibrate(model, cal if cal else train)
        print(
            f"threshold {model.config.threshold:.3f}: calibration F1 {metrics['cal/f1']:.3f}, "
            f"episode accuracy {metrics['cal/accuracy']:.3f} on {metrics['cal/episodes']} "
            "episodes"
        )
    metrics.update(_heldout_agreement(model, args, wm))
    if "heldout/balanced_agreement" in metrics:
        imagined_note = (
            f", on their imagined replays {metrics['heldout/imagined_balanced_agreement']:.3f}"
            if "heldout/imagined_balanced_agreement" in metrics
            else ""
        )
        print(
            f"held-out real episodes: balanced agreement "
            f"{metrics['heldout/balanced_agreement']:.3f} on {metrics['heldout/episodes']} "
            f"({metrics['heldout/successes']} successes){imagined_note}; "
            "always-success baseline 0.500"
        )
    save_reward_model(
        args.out,
        model,
        manifest_fields={
            "data": [str(Path(d)) for d in args.data],
            "n_episodes": len(train),
            "imagined_from": args.imagined_from,
            "metrics": {"train/epochs": epoch, **metrics},
        },
    )
    print(f"saved {args.out}")
    return 0


MIN_CALIBRATION_EPISODES = 10


def _enough_to_calibrate(cal) -> bool:
    labels = [y for _, y, _ in cal]
    return len(cal) >= MIN_CALIBRATION_EPISODES and 0 < sum(labels) < len(labels)


def _hf_config(model: RewardModel) -> dict | None:
    """The VideoMAE architecture of a loaded model (None for the conv backbone)."""
    return model.net.config.to_dict() if model.config.backbone == "videomae" else None


def _architecture(args: argparse.Namespace) -> dict[str, int]:
    """The tiny-preset sizes given on the command line (the rest keep their defaults)."""
    names = ("patch_size", "tubelet_size", "hidden_size", "num_layers")
    sizes = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "hidden_size" in sizes:
        sizes["intermediate_size"] = 2 * sizes["hidden_size"]
    return sizes


def _augment(x: torch.Tensor) -> torch.Tensor:
    """Blur half the clips and add noise: imagined frames are softer than camera frames."""
    n, f, c, h, w = x.shape
    blur = torch.rand(n) < 0.5
    if blur.any():
        y = x[blur].reshape(-1, c, h, w)
        y = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
        x = x.clone()
        x[blur] = y.reshape(-1, f, c, h, w)
    return x + 0.05 * torch.randn_like(x)


def _hard_negatives(model: RewardModel, episodes, config) -> list[np.ndarray]:
    """Failure windows the starting model mistakes for success: trained on every epoch."""
    from wmpo_core.reward_model.processing_reward_model import window_starts

    model.eval()
    out = []
    for frames, y, _ in episodes:
        if y:
            continue
        probs, _ = model.window_probs(frames)
        idx = window_starts(len(frames), config.num_frames)
        out += [frames[idx[i]] for i in np.flatnonzero(probs > 0.3)]
    model.train()
    return out


def _epoch(
    model, opt, sched, episodes, config, rng, batch_size: int, hard=(), stride: int = 8
) -> float:
    clips, ys = list(hard), [0] * len(hard)
    for frames, y, success_step in episodes:
        for idx, label in training_clips(frames, y, config.num_frames, rng, success_step, stride):
            clips.append(frames[idx])
            ys.append(label)
    order = rng.permutation(len(clips))
    y_all = torch.tensor(ys)
    pos_w = float((y_all == 0).sum()) / max(float((y_all == 1).sum()), 1.0)
    weight = torch.tensor([1.0, pos_w])
    losses = []
    for i in range(0, len(order), batch_size):
        sel = order[i : i + batch_size]
        x = _augment(clips_to_pixel_values(np.stack([clips[j] for j in sel])))
        loss = F.cross_entropy(model(x), y_all[sel], weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return float(np.mean(losses))


def _calibrate(model: RewardModel, episodes) -> dict[str, float]:
    scores = np.array([model.window_probs(f)[0].max() for f, _, _ in episodes])
    labels = np.array([y for _, y, _ in episodes])
    thr, f1 = calibrate_threshold(scores, labels)
    model.config.threshold = thr
    acc = float(((scores > thr) == labels).mean())
    return {"cal/f1": f1, "cal/accuracy": acc, "cal/episodes": len(episodes), "cal/threshold": thr}


def _heldout_agreement(model: RewardModel, args: argparse.Namespace, wm) -> dict[str, float]:
    """Verdicts on the real frames of the held-out episodes (never trained or calibrated on)."""
    from wmpo_core.world_model.metrics import balanced_agreement

    try:
        held = select_episodes(
            args.data,
            task=args.task,
            split="heldout",
            heldout_frac=args.heldout_frac,
            labelled_only=True,
        )
    except WmpoError:  # no held-out split (--heldout-frac 0): nothing to report
        return {}
    truth = np.array([bool(m.success) for _, m in held])
    arrays = load_arrays(held)
    pred = np.array([model.detect_success(frames)[0] for frames, _ in arrays])
    out = {
        "heldout/balanced_agreement": balanced_agreement(pred, truth),
        "heldout/episodes": len(held),
        "heldout/successes": int(truth.sum()),
    }
    if wm is not None:  # the verdicts GRPO relies on: the same episodes, imagined
        imagined = _imagine(wm, arrays)
        pred = np.array([model.detect_success(frames)[0] for frames in imagined])
        out["heldout/imagined_balanced_agreement"] = balanced_agreement(pred, truth)
    return out


def _success_step(meta) -> int | None:
    step = (meta.extra or {}).get("success_step")
    return int(step) if meta.success and step is not None else None


def _load_world_model(path: str | None):
    from wmpo_core.world_model import load_world_model

    return load_world_model(path) if path else None


def _imagine(wm, arrays) -> list[np.ndarray]:
    out = []
    for frames, actions in arrays:
        imagined = wm.rollout_actions(frames[None, 0], actions[None, :-1])[0]
        out.append(np.concatenate([frames[:1], imagined]))
    return out
