"""`wmpo launch {sim,robot,teleop}`: start a node graph without ROS launch, and supervise it.

Starts the same console scripts with the same `--ros-args --params-file` files as
launch/*.launch.py (both read wmpo_nodes/graphs.py's list), with discovery kept on
loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST). A node that exits on its own is
reported with its exit code and the tail of its log; Ctrl-C / SIGTERM stops every
node (SIGINT, then SIGKILL after a grace period). Overrides: `-p node:param:=value`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from wmpo_core.errors import WmpoError
from wmpo_core.rosenv import ros_env
from wmpo_nodes.graphs import CONFIG_DIR, GRAPHS, LAUNCH_ARGS, NodeSpec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("graph", choices=sorted(GRAPHS), help="which node graph to start")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NODE:PARAM:=VALUE",
        help="override one node parameter, e.g. -p policy_node:policy:=scripted (repeatable)",
    )
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="a launch argument as in the .launch.py file, e.g. --arg record:=false",
    )
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for the graph")
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="parameter files")
    parser.add_argument("--log-dir", type=Path, default=None, help="one log file per node")
    parser.add_argument(
        "--exit-on-crash",
        action="store_true",
        help="stop the whole graph when any node exits (default: report it, keep the rest)",
    )
    parser.add_argument("--duration", type=float, default=0.0, help="stop after N s (0 = never)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")


@dataclass
class Proc:
    spec: NodeSpec
    cmd: list[str]
    popen: subprocess.Popen | None = None
    log: Path | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=20))
    reported: bool = False


def parse_overrides(items: list[str]) -> dict[str, list[tuple[str, str]]]:
    """['policy_node:policy:=scripted'] -> {'policy_node': [('policy', 'scripted')]}."""
    out: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        head, sep, value = item.partition(":=")
        node, colon, param = head.partition(":")
        if not sep or not colon or not node or not param:
            raise WmpoError(
                f"-p {item}: expected NODE:PARAM:=VALUE, e.g. policy_node:policy:=random"
            )
        out.setdefault(node, []).append((param, value))
    return out


def resolve_args(graph: str, items: list[str]) -> dict[str, str]:
    """Launch arguments with their defaults, refusing names the graph does not declare."""
    values = {a.name: a.default for a in LAUNCH_ARGS[graph]}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or name not in values:
            raise WmpoError(f"--arg {item}: expected NAME:=VALUE with NAME in {sorted(values)}")
        values[name] = value
    return values


def executable(name: str) -> str:
    """The console script next to this Python (the venv) first, then PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise WmpoError(f"console script '{name}' not found; run `make setup` (pip install -e .)")
    return found


def build_commands(
    graph: str, overrides: dict[str, list[tuple[str, str]]], args: dict[str, str], config_dir: Path
) -> list[Proc]:
    specs = GRAPHS[graph]
    names = {s.name for s in specs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise WmpoError(f"-p: no node {unknown} in graph '{graph}' (nodes: {sorted(names)})")
    params: dict[str, list[tuple[str, str]]] = {}
    for a in LAUNCH_ARGS[graph]:
        for node, param in a.targets:
            if args[a.name] != "":
                params.setdefault(node, []).append((param, args[a.name]))
    procs = []
    for spec in specs:
        if spec.condition and args.get(spec.condition, "true").lower() not in ("true", "1"):
            continue
        cmd = [executable(spec.executable), "--ros-args", "-r", f"__node:={spec.name}"]
        for name in spec.params:
            path = config_dir / name
            if not path.exists():
                raise WmpoError(f"{path}: parameter file for {spec.name} is missing")
            cmd += ["--params-file", str(path)]
        # -p overrides win over launch arguments (a dict keeps one value per parameter).
        merged = dict(params.get(spec.name, []) + overrides.get(spec.name, []))
        for param, value in merged.items():
            cmd += ["-p", f"{param}:={value}"]
        procs.append(Proc(spec, cmd))
    return procs


def run(args: argparse.Namespace) -> int:
    procs = build_commands(
        args.graph, parse_overrides(args.param), resolve_args(args.graph, args.arg), args.config_dir
    )
    if args.dry_run:
        for p in procs:
            print(" ".join(p.cmd))
        return 0
    env = ros_env(args.domain_id)
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    stop = {"requested": False}

    def request_stop(*_):
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for p in procs:
        p.log = (args.log_dir / f"{p.spec.name}.log") if args.log_dir else None
        out = open(p.log, "w") if p.log else subprocess.DEVNULL  # noqa: SIM115
        # Own process group: a terminal Ctrl-C reaches only the launcher, which stops the
        # nodes in order, instead of every node at once.
        p.popen = subprocess.Popen(
            p.cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        print(f"wmpo launch: started {p.spec.name} (pid {p.popen.pid})", flush=True)
    crashed = supervise(procs, stop, args.exit_on_crash, args.duration)
    stop_all(procs)
    return 1 if crashed else 0


def supervise(procs: list[Proc], stop: dict, exit_on_crash: bool, duration: float) -> bool:
    deadline = time.monotonic() + duration if duration > 0 else float("inf")
    crashed = False
    while not stop["requested"] and time.monotonic() < deadline:
        for p in procs:
            code = p.popen.poll()
            if code is not None and not p.reported:
                p.reported = True
                crashed = True
                tail = _log_tail(p)
                print(
                    f"wmpo launch: {p.spec.name} exited with code {code}"
                    + (f"; last log lines:\n{tail}" if tail else ""),
                    file=sys.stderr,
                    flush=True,
                )
                if exit_on_crash:
                    return True
        if all(p.reported for p in procs):
            break
        time.sleep(0.2)
    return crashed


def stop_all(procs: list[Proc], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"wmpo launch: {p.spec.name} ignored SIGINT; killing it", file=sys.stderr)
            p.popen.kill()
            p.popen.wait(5)
    print("wmpo launch: all nodes stopped", flush=True)


def _log_tail(p: Proc, lines: int = 8) -> str:
    if p.log is None or not p.log.exists():
        return ""
    text = p.log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join("    " + line for line in text)
