"""`wmpo train world-model`: pretrain on every episode, or align to one policy's rollouts.

    wmpo train world-model --data STORE --out WM [--minutes M] [--resume]
    wmpo train world-model --data STORE --out WM2 --init WM --align-policy-version V

Pretraining uses all episodes (demonstrations and rollouts, successes and
failures, perturbed experts): the model must see off-expert actions to learn
that actions matter. `--align-policy-version` keeps only that policy's own
rollouts and fine-tunes from `--init` (WMPO's "policy behaviour alignment").
Written for `accelerate`: the same loop runs on a CPU, a GPU or many GPUs
(`accelerate launch -m wmpo_core.cli train world-model ...`).
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from wmpo_core.errors import WmpoError
from wmpo_core.world_model import (
    WorldModelConfig,
    build_network,
    load_world_model,
    save_world_model,
)
from wmpo_core.world_model.processing_world_model import WindowDataset, advance, to_model_batch
from wmpo_core.world_model.training import (
    load_arrays,
    load_train_state,
    save_train_state,
    select_episodes,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", required=True, help="episode store (repeatable)")
    p.add_argument("--out", required=True, help="world-model checkpoint directory to write")
    p.add_argument("--task", default=None, help="only episodes of this task")
    p.add_argument("--preset", default="tiny", choices=["tiny", "base"])
    p.add_argument("--variant", default="deterministic", choices=["deterministic", "flow"])
    p.add_argument("--vae-path", default="", help="base: local AutoencoderKL directory")
    p.add_argument("--init", default=None, help="start from this world-model checkpoint")
    p.add_argument(
        "--align-policy-version",
        "--align",
        dest="align",
        default=None,
        help="fine-tune only on rollouts of this policy version (use with --init)",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--self-cond-after",
        type=float,
        default=0.3,
        help="fraction of the budget after which half the batches start from the "
        "model's own predicted chunk (keeps long rollouts from drifting)",
    )
    p.add_argument(
        "--unroll-chunks",
        type=int,
        default=1,
        help="self-conditioned batches start from 1..N chunks the model drew itself (an "
        "imagined episode runs 10+ chunks deep; 1 = only from its first chunk)",
    )
    p.add_argument(
        "--context-noise",
        type=float,
        default=0.02,
        help="std of noise on context frames ([-1, 1] units)",
    )
    p.add_argument("--heldout-frac", type=float, default=0.15, help="episodes kept for eval")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints")
    p.add_argument(
        "--refresh-data",
        type=float,
        default=0.0,
        help="re-scan the stores for new episodes every this many minutes (0: never)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT and its train state")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")


def run(args: argparse.Namespace) -> int:
    from accelerate import Accelerator
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    if args.unroll_chunks < 1:
        raise WmpoError(f"--unroll-chunks must be >= 1, got {args.unroll_chunks}")
    if args.align and not (args.init or args.resume):
        raise WmpoError("--align-policy-version fine-tunes a model: also pass --init WM")

    config, net = _make_model(args, out)
    selected, loader = _data(args, config)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    info = {"step": 0, "seconds": 0.0}
    if args.resume:
        info = load_train_state(out, opt) or info
    acc = Accelerator()
    model, opt = acc.prepare(net, opt)
    loader = acc.prepare(loader)
    budget = args.minutes * 60.0
    acc.print(
        f"world model {config.preset}/{config.variant}: "
        f"{sum(p.numel() for p in params) / 1e6:.2f} M trainable params, "
        f"{len(selected)} episodes, {len(loader.dataset)} windows, budget {args.minutes} min"
    )
    start = time.monotonic() - info["seconds"]
    last_save = time.monotonic()
    bar = tqdm(
        total=int(budget), unit="s", initial=int(info["seconds"]), disable=not acc.is_main_process
    )
    losses: list[float] = []
    done = False
    last_refresh = time.monotonic()
    while not done:
        if args.refresh_data and time.monotonic() - last_refresh > args.refresh_data * 60:
            # Episodes keep arriving while a long run trains (collection, the robot's bags).
            selected, loader = _data(args, config)
            loader = acc.prepare(loader)
            last_refresh = time.monotonic()
            acc.print(f"data refreshed: {len(selected)} episodes")
        for raw in loader:
            elapsed = time.monotonic() - start
            frac = elapsed / budget
            for g in opt.param_groups:
                g["lr"] = _lr(args.lr, info["step"], frac)
            batch = _training_batch(acc.unwrap_model(model), raw, config, args, frac)
            loss, metrics = model(batch)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            info["step"] += 1
            losses.append(loss.item())
            bar.update(int(elapsed) - bar.n)
            if info["step"] % 20 == 0:
                bar.set_postfix(step=info["step"], loss=f"{np.mean(losses[-20:]):.4f}")
            info["seconds"] = elapsed
            done = elapsed >= budget or (args.max_steps and info["step"] >= args.max_steps)
            if done or time.monotonic() - last_save > args.save_every * 60:
                _save(acc, model, opt, config, out, info, selected, losses, args, finished=done)
                last_save = time.monotonic()
            if done:
                break
    bar.close()
    acc.print(f"saved {out} after {info['step']} steps, {info['seconds'] / 60:.1f} min")
    return 0


def _data(args: argparse.Namespace, config: WorldModelConfig):
    selected = select_episodes(
        args.data, task=args.task, policy_version=args.align, heldout_frac=args.heldout_frac
    )
    dataset = WindowDataset(load_arrays(selected), config, n_chunks=args.unroll_chunks + 1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=0
    )
    if len(loader) == 0:
        raise WmpoError(
            f"{len(dataset)} windows < batch size {args.batch_size}; lower --batch-size"
        )
    return selected, loader


def _make_model(args: argparse.Namespace, out: Path) -> tuple[WorldModelConfig, torch.nn.Module]:
    source = out if args.resume and (out / "manifest.json").exists() else args.init
    if source:
        wm = load_world_model(source)
        wm.net.train()
        return wm.config, wm.net
    if args.resume:
        raise WmpoError(f"--resume: {out} has no checkpoint yet; drop --resume to start fresh")
    kw = {"preset": args.preset, "variant": args.variant}
    if args.preset == "base":
        kw["vae_path"] = args.vae_path
    config = WorldModelConfig(**kw)
    return config, build_network(config).train()


def _lr(base: float, step: int, frac: float) -> float:
    warm = min(1.0, (step + 1) / 200)
    return base * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _training_batch(net, raw: dict, config: WorldModelConfig, args, frac: float) -> dict:
    """Chunk 1 from real context, or (after warm-up, half the time) chunk m + 1 from the
    model's own predictions of chunks 1..m (m uniform in 1..--unroll-chunks; only windows
    with that much episode left), so it learns to continue from what it draws, as deep as
    an imagined episode goes."""
    depth = 0
    if frac > args.self_cond_after and random.random() < 0.5:
        depth = random.randint(1, args.unroll_chunks)
        deep_enough = raw["n_valid"] > depth
        if int(deep_enough.sum()) >= 2:
            raw = {key: value[deep_enough] for key, value in raw.items()}
        else:
            depth = 0
    batch = to_model_batch(raw, 0, config)
    if depth:
        k = config.chunk_size
        with torch.no_grad():
            net.eval()
            for m in range(1, depth + 1):
                pred = net.predict(batch)
                batch = advance(batch, pred, raw["actions"][:, m * k : (m + 1) * k])
            net.train()
        batch["target"] = to_model_batch(raw, depth, config)["target"]
    if args.context_noise > 0:
        batch["context"] = batch["context"] + args.context_noise * torch.randn_like(
            batch["context"]
        )
    return batch


def _save(acc, model, opt, config, out, info, selected, losses, args, finished=False) -> None:
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return
    net = acc.unwrap_model(model)
    save_world_model(
        out,
        config,
        net,
        manifest_fields={
            "parent": str(args.init) if args.init else None,
            "data": sorted({str(s.root) for s, _ in selected}),
            "n_episodes": len(selected),
            "aligned_to_policy": args.align,
            "metrics": {
                "train/steps": info["step"],
                "train/minutes": round(info["seconds"] / 60, 2),
                "train/loss_last100": float(np.mean(losses[-100:])) if losses else None,
                # False for the periodic checkpoints of a run still going (or killed): a
                # checkpoint at `--out` is usable but not necessarily the finished model.
                "train/finished": bool(finished),
            },
        },
    )
    save_train_state(out, opt, info)
    net.train()
