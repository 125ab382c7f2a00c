"""The cycle report: what a person reads the morning after a nightly cycle.

`report.md` in the work directory, with PNG plots under `report/`:
real success per policy version (from the labelled real episodes each version
produced), imagined vs real success (the gap is reward hacking of the world
model), the imagined success curve of each cycle's GRPO run, and links to the
imagined-rollout videos and gate records of every cycle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wmpo_core.store import EpisodeStore  # noqa: E402


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def real_success_by_version(store_dir: Path, task: str | None) -> dict[str, dict[str, Any]]:
    """Labelled real rollouts grouped by the policy version that produced them, in order seen."""
    out: dict[str, dict[str, Any]] = {}
    if not (store_dir / "episodes").is_dir():
        return out
    for meta in EpisodeStore(store_dir).metas():
        if meta.kind != "rollout" or meta.success is None or (task and meta.task != task):
            continue
        if meta.taken_over:
            continue  # the expert finished it: not the policy's own success or failure
        row = out.setdefault(meta.policy_version or "?", {"n": 0, "successes": 0})
        row["n"] += 1
        row["successes"] += int(bool(meta.success))
    for row in out.values():
        row["rate"] = row["successes"] / row["n"]
        row["ci95"] = wilson(row["successes"], row["n"])
    return out


def cycle_records(workdir: Path) -> list[dict[str, Any]]:
    records = []
    for run_dir in sorted((workdir / "cycles").glob("c*")):
        state_path = run_dir / "state.json"
        if not state_path.is_file():
            continue
        state = json.loads(state_path.read_text())
        stages = state.get("stages", {})

        def out(stage: str, st=stages) -> dict[str, Any]:
            return st.get(stage, {}).get("outputs", {})

        videos = sorted(str(p.relative_to(workdir)) for p in run_dir.rglob("*.mp4"))
        records.append(
            {
                "cycle": run_dir.name,
                "done": state.get("done", False),
                "parent": out("grpo").get("parent"),
                "version": out("publish").get("version"),
                "promoted": out("publish").get("promoted"),
                "gate": out("gate"),
                "curve": out("grpo").get("imagined_success_curve", []),
                "new_episodes": len(out("ingest").get("new_episodes", [])),
                "seconds": {
                    k: v.get("seconds")
                    for k, v in sorted(stages.items(), key=lambda kv: kv[1].get("started", 0))
                },
                "videos": videos,
            }
        )
    return records


def _plot_real_success(real: dict[str, dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(real)
    rates = [real[n]["rate"] for n in names]
    lo = [real[n]["rate"] - real[n]["ci95"][0] for n in names]
    hi = [real[n]["ci95"][1] - real[n]["rate"] for n in names]
    ax.errorbar(range(len(names)), rates, yerr=[lo, hi], marker="o", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("real success (95% CI)")
    ax.set_title("Real success per policy version")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curves(records: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for rec in records:
        curve = [c for c in rec["curve"] if c is not None]
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker=".", label=rec["cycle"])
    ax.set_xlabel("GRPO iteration")
    ax.set_ylabel("imagined success (T=1.6)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Imagined success during GRPO")
    if records:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(workdir: Path, registry: Path, task: str | None = None) -> Path:
    workdir = Path(workdir)
    out_dir = workdir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    real = real_success_by_version(workdir / "store", task)
    records = cycle_records(workdir)
    if real:
        _plot_real_success(real, out_dir / "real_success.png")
    _plot_curves(records, out_dir / "grpo_curves.png")

    lines = [f"# wmpo cycle report{f' — {task}' if task else ''}", ""]
    lines += ["## Real success per policy version", ""]
    lines += ["| version | episodes | success | 95% CI |", "|---|---|---|---|"]
    for name, row in real.items():
        lo, hi = row["ci95"]
        lines.append(f"| {name} | {row['n']} | {row['rate']:.2f} | [{lo:.2f}, {hi:.2f}] |")
    if real:
        lines += ["", "![real success](report/real_success.png)", ""]
    lines += ["## Cycles: imagined vs real", ""]
    lines += [
        "| cycle | parent | new episodes | imagined parent → candidate | imagination agrees "
        "with reality | gate | published | promoted | real success of the new version |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        gate = rec["gate"] or {}
        imagined = (
            f"{gate.get('parent_imagined_success', float('nan')):.2f} → "
            f"{gate.get('candidate_imagined_success', float('nan')):.2f}"
            if gate
            else "-"
        )
        agreement = (gate.get("imagination_agreement") or {}).get("agreement")
        agreement_text = "-" if agreement is None else f"{agreement:.2f}"
        version = rec["version"] or "-"
        real_new = real.get(version, {})
        real_text = f"{real_new['rate']:.2f} (n={real_new['n']})" if real_new else "not yet run"
        lines.append(
            f"| {rec['cycle']} | {rec['parent'] or '-'} | {rec['new_episodes']} | {imagined} | "
            f"{agreement_text} | {gate.get('reason', '-')} | {version} | {rec['promoted']} | {real_text} |"
        )
    lines += ["", "![GRPO curves](report/grpo_curves.png)", ""]
    lines += ["## Stage times (s) and imagined-rollout videos", ""]
    for rec in records:
        secs = ", ".join(f"{k} {v}" for k, v in rec["seconds"].items() if v is not None)
        lines.append(f"- **{rec['cycle']}**: {secs}")
        for video in rec["videos"]:
            lines.append(f"  - [{Path(video).name}]({video})")
    lines.append("")
    lines.append(f"Registry: `{registry}`")
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
