"""`wmpo`: the one command a person runs.

Subcommands live in the package that owns them and are imported only when
chosen, so `wmpo --help` is instant and `wmpo bags ls` never loads torch.
A subcommand module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Groups map to a nested table.
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "launch": ("wmpo_nodes.launcher", "start a node graph (sim | robot | teleop) and supervise it"),
    "sim": ("wmpo_core.sim.cli", "run the embedded simulated arm's scripted expert (no ROS)"),
    "collect": (
        "offline_trainer.collect",
        "scripted-expert episodes straight into an episode store",
    ),
    "bags": ("offline_trainer.bags_cli", "list, inspect, verify and repair recorded episode bags"),
    "ingest": ("offline_trainer.ingest", "turn episode bags into a training episode store"),
    "train": {
        "policy": ("offline_trainer.train_policy", "behaviour cloning of the VLA policy"),
        "world-model": ("offline_trainer.train_world_model", "train / align the world model"),
        "reward": ("offline_trainer.train_reward", "train the success reward model"),
        "grpo": ("offline_trainer.grpo", "GRPO of the policy inside the world model (WMPO)"),
        "grpo-online": ("offline_trainer.baselines.online_grpo", "baseline: GRPO in the real sim"),
        "dpo": ("offline_trainer.baselines.dpo", "baseline: offline DPO on real rollouts"),
    },
    "eval": {
        "policy": ("offline_trainer.eval_policy", "success rate of a policy in the sim"),
        "imagination": ("offline_trainer.eval_imagination", "world/reward model fidelity"),
    },
    "registry": (
        "offline_trainer.registry_cli",
        "list, show, promote and roll back policy versions",
    ),
    "cycle": (
        "offline_trainer.cycle",
        "the nightly retrain: ingest, align, reward, GRPO, gate, promote",
    ),
    "demo": ("wmpo_nodes.demo", "the lifelong-learning demo on the embedded sim (`make demo`)"),
}


def _describe(table: dict) -> str:
    width = max(len(n) for n in table)
    lines = []
    for name, entry in table.items():
        text = entry[1] if isinstance(entry, tuple) else "{" + " | ".join(entry) + "}"
        lines.append(f"  {name.ljust(width)}  {text}")
    return "\n".join(lines)


def _load(module_name: str, prog: str, help_text: str) -> tuple[argparse.ArgumentParser, object]:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise SystemExit(
                f"{prog}: not available in this build ({module_name} is missing)"
            ) from None
        raise SystemExit(
            f"{prog}: missing dependency '{exc.name}'. Run `make setup` (or pip install it)."
        ) from None
    parser = argparse.ArgumentParser(
        prog=prog, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(
        prog="wmpo",
        description="wmpo: a robot arm improves its own VLA policy (WMPO).",
        epilog="commands:\n" + _describe(COMMANDS) + "\n\nRun `wmpo COMMAND --help` for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", nargs="?", help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    entry = COMMANDS.get(name)
    if entry is None:
        top.error(f"unknown command '{name}'; choose from: {', '.join(COMMANDS)}")
    prog = f"wmpo {name}"
    if isinstance(entry, dict):
        if not rest or rest[0] in ("-h", "--help") or rest[0] not in entry:
            print(f"usage: {prog} {{{' | '.join(entry)}}} ...\n\n{_describe(entry)}")
            return 0 if rest and rest[0] in ("-h", "--help") else 2
        sub, rest = rest[0], rest[1:]
        module_name, help_text = entry[sub]
        prog = f"{prog} {sub}"
    else:
        module_name, help_text = entry
    parser, module = _load(module_name, prog, help_text)
    args = parser.parse_args(rest)
    from wmpo_core.errors import WmpoError

    try:
        return int(module.run(args) or 0)
    except WmpoError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
