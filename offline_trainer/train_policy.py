"""`wmpo train policy`: behaviour cloning of the VLA chunk policy.

Cross-entropy on the K*D action tokens of demonstration chunks (and, with
--with-rollouts, of successful policy rollouts), with random-shift + colour
jitter augmentation. Deterministic for a seed on one thread. Resumable: a
training-state directory `<out>.train_state/` beside the checkpoint holds the
weights, the AdamW state (safetensors) and the step, RNG states and loss
history (JSON); re-running the same command continues from it. The final
checkpoint goes to --out, the training curve to `<out>.curve.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from offline_trainer.datasets import (
    WindowDataset,
    WindowSpec,
    expert_labelled_from,
    select_episodes,
    split_episode_ids,
)
from offline_trainer.overrides import parse_field_overrides
from wmpo_core.errors import WmpoError
from wmpo_core.fileio import atomic_write_json
from wmpo_core.policy import (
    NormalizationStats,
    PolicyConfig,
    PolicyProcessor,
    VLAPolicyModel,
    augment_images,
    preset_config,
    save_policy_checkpoint,
)
from wmpo_core.policy.configuration_policy import EPISODE_START
from wmpo_core.store import EpisodeStore


@dataclass
class TrainPolicyConfig:
    data: str
    """Episode store to train on."""
    out: str
    """Checkpoint directory to write."""
    task: str | None = None
    """Only episodes of this task (None: every task in the store)."""
    preset: str = "tiny"
    """Policy preset ('tiny' or 'base')."""
    backbone_path: str = ""
    """Local save_pretrained directory of the base backbone (preset base only)."""
    steps: int = 1500
    """Optimizer steps."""
    batch_size: int = 64
    """Chunks per step."""
    lr: float = 1e-3
    """Peak AdamW learning rate (tiny trains from scratch; lower it for base)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 50
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    grad_clip: float = 1.0
    """Max global grad norm."""
    image_size: int | None = None
    """Model image size (None: the store's frame size)."""
    chunk_size: int = 8
    """K actions per chunk."""
    augment: bool = True
    """Random shift + colour jitter on training images."""
    shift_pad: int = 3
    """Random shift of up to +-shift_pad pixels (DrQ uses 4 at 84 px)."""
    color_jitter: float = 0.1
    """Brightness / contrast jitter amplitude (images in [-1, 1])."""
    label_sigma_bins: float = 0.0
    """> 0: cross-entropy against a Gaussian over neighbouring bins (sigma in bins) instead of
    a one-hot target. Neighbouring bins are neighbouring actions, and noisy demonstrations
    spread each target over many bins; smoothing shares evidence between them."""
    with_rollouts: bool = False
    """Also clone successful policy rollouts from the store."""
    with_takeovers: bool = False
    """Also clone successful expert takeovers (`wmpo collect --takeover-from`): only the
    expert's part of each, from its `extra.takeover_step` on."""
    with_failed_demos: bool = False
    """Also clone demonstrations labelled as failures (dropped by default)."""
    val_episodes: int = -1
    """Episodes held out for validation loss (-1: 5 % of them, 0 when fewer than 10)."""
    seed: int = 0
    """Seeds weights, batch order, augmentation and the val split."""
    log_every: int = 25
    """Steps between loss records (curve points)."""
    save_every: int = 250
    """Steps between training-state saves (resume points)."""
    threads: int = 1
    """torch threads (the dev machine's cores are shared)."""
    name: str = ""
    """Version name recorded in the manifest (default: a hash of the weights)."""
    overwrite: bool = False
    """Replace an existing checkpoint at --out."""
    fresh: bool = False
    """Ignore (and replace) an existing training state instead of resuming."""
    progress: bool = True
    """Show a tqdm progress bar."""
    max_minutes: float | None = None
    """Wall-clock budget: stop early (schedule truncated) and write the checkpoint anyway.
    Makes the step count, hence the result, depend on machine load: the manifest records it."""
    stop_at: int | None = None
    """Pause at this step: save the training state and return without a checkpoint
    (re-run without it to resume); used to split a long run into budgeted pieces."""
    policy_overrides: dict = field(default_factory=dict)
    """Extra PolicyConfig fields (e.g. d_model) for experiments and tests."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(
                f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="episode store (wmpo collect / wmpo ingest)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--task", default=None, help="only episodes of this task")
    parser.add_argument("--preset", default="tiny", choices=("tiny", "base"))
    parser.add_argument("--backbone-path", default="", help="base preset: local backbone dir")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--no-augment", action="store_true", help="turn image augmentation off")
    parser.add_argument("--shift-pad", type=int, default=3, help="random shift, pixels")
    parser.add_argument(
        "--label-sigma", type=float, default=0.0, help="Gaussian label smoothing, in bins"
    )
    parser.add_argument(
        "--with-rollouts", action="store_true", help="also clone successful rollouts"
    )
    parser.add_argument(
        "--with-takeovers",
        action="store_true",
        help="also clone the expert's part of successful takeovers (wmpo collect --takeover-from)",
    )
    parser.add_argument("--val-episodes", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--name", default="", help="version name for the manifest")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--fresh", action="store_true", help="do not resume a training state")
    parser.add_argument(
        "--policy-set",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="override PolicyConfig fields, value as JSON (e.g. vision_grid=8 "
        "'vision_channels=[32,64,96,128]'; wmpo_core/policy/configuration_policy.py documents them)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="wall-clock budget (checkpoint written)"
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="pause at this step (state saved; re-run to resume)",
    )


def run(args: argparse.Namespace) -> int:
    cfg = TrainPolicyConfig(
        data=args.data,
        out=args.out,
        task=args.task,
        preset=args.preset,
        backbone_path=args.backbone_path,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        image_size=args.image_size,
        chunk_size=args.chunk_size,
        augment=not args.no_augment,
        shift_pad=args.shift_pad,
        label_sigma_bins=args.label_sigma,
        with_rollouts=args.with_rollouts,
        with_takeovers=args.with_takeovers,
        val_episodes=args.val_episodes,
        seed=args.seed,
        threads=args.threads,
        save_every=args.save_every,
        name=args.name,
        overwrite=args.overwrite,
        fresh=args.fresh,
        progress=not args.no_progress,
        stop_at=args.stop_at,
        max_minutes=args.max_minutes,
        policy_overrides=parse_field_overrides(args.policy_set, PolicyConfig, "--policy-set"),
    )
    result = train_policy(cfg)
    if result["checkpoint"] is None:
        print(
            f"paused at step {result['step']}; state in {state_dir_for(cfg.out)} (re-run to resume)"
        )
        return 0
    m = result["metrics"]
    print(
        f"wrote {result['checkpoint']}  ({m['n_train_episodes']} train episodes, {m['steps']} steps, "
        f"loss {m['train_loss']:.3f}, token acc {m['train_token_acc']:.3f}, "
        f"val loss {m.get('val_loss', float('nan')):.3f}, {m['train_seconds']:.0f} s)"
    )
    print(f"curve: {result['curve']}")
    return 0


# -- training state (resume) ---------------------------------------------------------------


def state_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".train_state")


def _save_state(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    rng: np.random.Generator,
    aug_gen: torch.Generator,
    history: list[dict],
    identity: dict,
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.tmp"))
    (path / "model.tmp").replace(path / "model.safetensors")
    osd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in osd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    tensors["__aug_generator__"] = aug_gen.get_state()
    tensors["__torch_rng__"] = torch.get_rng_state()
    save_file(tensors, str(path / "optimizer.tmp"))
    (path / "optimizer.tmp").replace(path / "optimizer.safetensors")
    atomic_write_json(
        path / "state.json",
        {
            "step": step,
            "identity": identity,
            "param_groups": osd["param_groups"],
            "optimizer_scalars": scalars,
            "numpy_rng": rng.bit_generator.state,
            "history": history,
        },
    )


def _load_state(
    path: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    aug_gen: torch.Generator,
    identity: dict,
) -> tuple[int, list[dict]]:
    meta = json.loads((path / "state.json").read_text())
    if meta["identity"] != identity:
        diff = {
            k: (meta["identity"].get(k), v)
            for k, v in identity.items()
            if meta["identity"].get(k) != v
        }
        raise WmpoError(
            f"{path}: training state was made with different settings {diff} (saved, now); "
            "re-run with the same settings to resume, or pass --fresh to start over"
        )
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    tensors = load_file(str(path / "optimizer.safetensors"))
    aug_gen.set_state(tensors.pop("__aug_generator__"))
    torch.set_rng_state(tensors.pop("__torch_rng__"))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["optimizer_scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng.bit_generator.state = meta["numpy_rng"]
    return int(meta["step"]), list(meta["history"])


# -- the loop -------------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainPolicyConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def bc_loss(
    model: VLAPolicyModel,
    processor: PolicyProcessor,
    sample: dict,
    aug_gen: torch.Generator | None,
    shift_pad: int = 3,
    color_jitter: float = 0.1,
    label_sigma_bins: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """Masked token cross-entropy of a window batch; returns (loss, token accuracy)."""
    batch = processor.batch(sample["frames"], sample["instruction"])
    if aug_gen is not None:
        batch.images = augment_images(batch.images, aug_gen, pad=shift_pad, jitter=color_jitter)
    tokens = torch.from_numpy(processor.tokenizer.encode(sample["actions"]))  # [B, K, D]
    valid = torch.from_numpy(sample["action_valid"])[:, :, None].expand_as(tokens).float()
    logits = model(batch)
    flat = logits.flatten(0, 2)
    if label_sigma_bins > 0:
        bins = torch.arange(flat.shape[-1], dtype=torch.float32)
        dist = bins[None, :] - tokens.flatten()[:, None].float()
        target = torch.softmax(-(dist**2) / (2 * label_sigma_bins**2), dim=-1)
        ce = -(target * F.log_softmax(flat, dim=-1)).sum(dim=-1)
    else:
        ce = F.cross_entropy(flat, tokens.flatten(), reduction="none")
    loss = (ce * valid.flatten()).sum() / valid.sum().clamp_min(1)
    acc = ((logits.argmax(-1) == tokens).float() * valid).sum() / valid.sum().clamp_min(1)
    return loss, float(acc)


@torch.no_grad()
def evaluate_loss(
    model: VLAPolicyModel, processor: PolicyProcessor, data: WindowDataset, max_samples: int = 512
) -> tuple[float, float]:
    model.eval()
    idx = np.linspace(0, len(data) - 1, min(max_samples, len(data))).astype(int)
    losses, accs = [], []
    for chunk in np.array_split(idx, max(1, len(idx) // 64)):
        loss, acc = bc_loss(model, processor, data.get_batch(chunk), None)
        losses.append(float(loss) * len(chunk))
        accs.append(acc * len(chunk))
    model.train()
    return sum(losses) / len(idx), sum(accs) / len(idx)


def _identity(cfg: TrainPolicyConfig, train_ids: list[str]) -> dict:
    d = asdict(cfg)
    for key in (
        "out",
        "overwrite",
        "fresh",
        "progress",
        "save_every",
        "name",
        "threads",
        "stop_at",
        "max_minutes",
    ):
        d.pop(key)
    if not d["with_takeovers"]:  # states saved before the option existed still resume
        d.pop("with_takeovers")
    d["n_train_episodes"] = len(train_ids)
    d["train_ids_head"] = train_ids[:3]
    return json.loads(json.dumps(d))  # tuples -> lists, as they come back from state.json


def _store_cameras(overrides: dict) -> tuple[str, ...]:
    """The store holds one camera: a policy may read it, and its first frame after it."""
    cameras = tuple(overrides.get("cameras", ("camera",)))
    if cameras not in (("camera",), ("camera", EPISODE_START)):
        raise WmpoError(
            f"cameras={list(cameras)}: an episode store holds one camera, so a policy trained "
            f'on it reads ["camera"] or ["camera", "{EPISODE_START}"]'
        )
    return cameras


def train_policy(cfg: TrainPolicyConfig) -> dict:
    """Run BC; returns {'checkpoint', 'curve', 'metrics'}."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise WmpoError(
            f"{out} already exists; pass --overwrite to replace it or choose another --out"
        )
    store = EpisodeStore(cfg.data)
    ids = select_episodes(
        store,
        task=cfg.task,
        successful_rollouts=cfg.with_rollouts,
        drop_failed_demonstrations=not cfg.with_failed_demos,
        successful_takeovers=cfg.with_takeovers,
    )
    if not ids:
        raise WmpoError(
            f"{cfg.data}: no demonstration episodes"
            + (f" of task '{cfg.task}'" if cfg.task else "")
            + "; collect some with `wmpo collect --task T --out STORE`"
        )
    n_val = cfg.val_episodes if cfg.val_episodes >= 0 else (len(ids) // 20 if len(ids) >= 10 else 0)
    train_ids, val_ids = split_episode_ids(ids, n_val, cfg.seed)
    spec = WindowSpec(
        context_frames=1,
        future_actions=cfg.chunk_size,
        first_frame=_store_cameras(cfg.policy_overrides) == ("camera", EPISODE_START),
    )
    windows = partial(WindowDataset, store, spec=spec, first_anchor=expert_labelled_from)
    train_data = windows(train_ids, image_size=cfg.image_size)
    val_data = windows(val_ids, image_size=train_data.image_size) if val_ids else None

    torch.manual_seed(cfg.seed)
    overrides = dict(cfg.policy_overrides)
    if cfg.preset == "base":
        overrides.setdefault("backbone_path", cfg.backbone_path)
    else:
        overrides.setdefault("image_size", train_data.image_size)
    pcfg: PolicyConfig = preset_config(cfg.preset, chunk_size=cfg.chunk_size, **overrides)
    if train_data.action_dim != pcfg.action_dim:
        raise WmpoError(
            f"{cfg.data}: actions have {train_data.action_dim} dims, the policy expects "
            f"{pcfg.action_dim} ({list(pcfg.action_names)})"
        )
    model = VLAPolicyModel(pcfg)
    if pcfg.image_size != train_data.image_size:  # base: the vision tower fixes the size
        train_data = windows(train_ids, image_size=pcfg.image_size)
        if val_data is not None:
            val_data = windows(val_ids, image_size=pcfg.image_size)
    stats = NormalizationStats.from_actions(train_data.all_actions())
    processor = PolicyProcessor(pcfg, stats, model.instruction_vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

    state_dir = state_dir_for(out)
    identity = _identity(cfg, train_ids)
    step, history = 0, []
    if state_dir.exists() and cfg.fresh:
        shutil.rmtree(state_dir)
    if (state_dir / "state.json").is_file():
        step, history = _load_state(state_dir, model, opt, rng, aug_gen, identity)
        print(f"resuming from {state_dir} at step {step}/{cfg.steps}")

    model.train()
    t0 = time.monotonic()
    start_step = step
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    bar = _progress(cfg, start_step)
    end = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)
    while step < end:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        sample = train_data.get_batch(rng.integers(0, len(train_data), size=cfg.batch_size))
        loss, acc = bc_loss(
            model,
            processor,
            sample,
            aug_gen if cfg.augment else None,
            cfg.shift_pad,
            cfg.color_jitter,
            cfg.label_sigma_bins,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        run_loss, run_acc, run_n = run_loss + loss.item(), run_acc + acc, run_n + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            record = {"step": step, "loss": run_loss / run_n, "token_acc": run_acc / run_n}
            if val_data is not None and (step % (cfg.log_every * 4) == 0 or step == cfg.steps):
                record["val_loss"], record["val_token_acc"] = evaluate_loss(
                    model, processor, val_data
                )
            history.append(record)
            run_loss, run_acc, run_n = 0.0, 0.0, 0
        out_of_time = cfg.max_minutes is not None and time.monotonic() - t0 > 60 * cfg.max_minutes
        if out_of_time:
            end = step
        if step % cfg.save_every == 0 or step == end:
            _save_state(state_dir, model, opt, step, rng, aug_gen, history, identity)
        if out_of_time:
            print(f"time budget of {cfg.max_minutes} min reached at step {step}/{cfg.steps}")
            break
    if bar is not None:
        bar.close()
    elapsed = time.monotonic() - t0
    if step < cfg.steps and cfg.max_minutes is None:
        return {"checkpoint": None, "curve": None, "metrics": {}, "history": history, "step": step}

    last = history[-1] if history else {}
    val_records = [h for h in history if "val_loss" in h]
    metrics = {
        "steps": step,
        "batch_size": cfg.batch_size,
        "train_loss": last.get("loss", float("nan")),
        "train_token_acc": last.get("token_acc", float("nan")),
        "n_train_episodes": len(train_ids),
        "n_val_episodes": len(val_ids),
        "n_train_windows": len(train_data),
        "train_seconds": elapsed,
        "samples_per_s": (step - start_step) * cfg.batch_size / max(elapsed, 1e-9),
        "stopped_by_time_budget": step < cfg.steps,
        "seed": cfg.seed,
    }
    if val_records:
        metrics["val_loss"] = val_records[-1]["val_loss"]
        metrics["val_token_acc"] = val_records[-1]["val_token_acc"]
    ckpt = save_policy_checkpoint(
        out,
        model,
        stats,
        instructions=train_data.instructions,
        episode_ids=train_ids,
        seeds=[e.meta.seed for e in train_data.episodes if e.meta.seed is not None],
        metrics=metrics,
        name=cfg.name,
        extra_manifest={
            "training": {
                "data": str(Path(cfg.data).resolve()),
                "task": cfg.task,
                "val_episode_ids": val_ids,
                "recipe": {k: v for k, v in asdict(cfg).items() if k not in ("out", "data")},
            }
        },
        overwrite=cfg.overwrite,
    )
    curve = out.with_name(out.name + ".curve.png")
    plot_curve(history, curve, title=f"BC {cfg.preset} {cfg.task or ''}".strip())
    return {
        "checkpoint": ckpt,
        "curve": curve,
        "metrics": metrics,
        "history": history,
        "step": step,
    }


def _progress(cfg: TrainPolicyConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.steps, initial=start, desc="train policy", unit="step", dynamic_ncols=True
    )


def plot_curve(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], label="train")
    ax_acc.plot(steps, [h["token_acc"] for h in history], label="train")
    val = [h for h in history if "val_loss" in h]
    if val:
        ax_loss.plot([h["step"] for h in val], [h["val_loss"] for h in val], "o-", label="val")
        ax_acc.plot([h["step"] for h in val], [h["val_token_acc"] for h in val], "o-", label="val")
    ax_loss.set(xlabel="step", ylabel="token cross-entropy", title=title)
    ax_acc.set(xlabel="step", ylabel="token accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
