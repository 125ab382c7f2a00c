"""Bringup: launch files, graphs.py, `wmpo launch` and the colcon package agree and work."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wmpo_nodes.graphs import CONFIG_DIR, GRAPHS, LAUNCH_ARGS
from wmpo_nodes.launcher import build_commands, parse_overrides, resolve_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _const(node):
    return node.value if isinstance(node, ast.Constant) else None


def parse_launch_file(path: Path) -> tuple[list[dict], list[dict]]:
    """(nodes, arguments) a launch file declares, read from its syntax tree."""
    tree = ast.parse(path.read_text())
    nodes, args = [], []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            continue
        kw = {k.arg: k.value for k in call.keywords}
        if call.func.id == "Node":
            files = [
                _const(c.args[0])
                for c in ast.walk(kw["parameters"])
                if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "_cfg"
            ]
            condition = ""
            if "condition" in kw:
                lc = [c for c in ast.walk(kw["condition"]) if isinstance(c, ast.Call)]
                condition = next(
                    _const(c.args[0]) for c in lc if c.func.id == "LaunchConfiguration"
                )
            nodes.append(
                {
                    "name": _const(kw["name"]),
                    "executable": _const(kw["executable"]),
                    "package": _const(kw["package"]),
                    "params": tuple(files),
                    "condition": condition,
                }
            )
        elif call.func.id == "DeclareLaunchArgument":
            args.append(
                {
                    "name": _const(call.args[0]),
                    "default": _const(kw.get("default_value")),
                    "description": _const(kw.get("description")) or "",
                }
            )
    return nodes, args


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_launch_file_starts_what_graphs_py_lists(graph):
    nodes, args = parse_launch_file(REPO / "launch" / f"{graph}.launch.py")
    expected = [
        {
            "name": s.name,
            "executable": s.executable,
            "package": "wmpo_bringup",
            "params": s.params,
            "condition": s.condition,
        }
        for s in GRAPHS[graph]
    ]
    assert nodes == expected
    declared = {(a["name"], a["default"]) for a in args}
    assert declared == {(a.name, a.default) for a in LAUNCH_ARGS[graph]}
    assert all(len(a["description"]) > 10 for a in args), "every launch argument is described"


def test_parameter_files_exist_and_name_graph_nodes():
    used = {f for specs in GRAPHS.values() for s in specs for f in s.params}
    names = {s.name for specs in GRAPHS.values() for s in specs}
    for name in used:
        data = yaml.safe_load((CONFIG_DIR / name).read_text())
        assert data, f"{name} is empty"
        for section, body in data.items():
            assert section in names, f"{name}: section '{section}' is no node of any graph"
            assert "ros__parameters" in body


def test_console_scripts_exist_for_every_node():
    pyproject = (REPO / "pyproject.toml").read_text()
    for specs in GRAPHS.values():
        for s in specs:
            assert re.search(rf"^{s.executable}\s*=", pyproject, re.M), s.executable


def test_launcher_builds_the_same_commands_with_overrides():
    procs = build_commands(
        "sim",
        parse_overrides(["policy_node:policy:=random", "executor_node:blend_steps:=3"]),
        resolve_args("sim", ["record:=false", "chunk_strategy:=latency_aware"]),
        CONFIG_DIR,
    )
    by_name = {p.spec.name: p.cmd for p in procs}
    assert "recorder" not in by_name  # record:=false drops the conditional node
    policy = by_name["policy_node"]
    files = [policy[i + 1] for i, a in enumerate(policy) if a == "--params-file"]
    assert files == [str(CONFIG_DIR / "policy.yaml"), str(CONFIG_DIR / "sim.yaml")]
    assert "policy:=random" in policy and "policy:=scripted" not in policy
    assert "chunk_strategy:=latency_aware" in by_name["executor_node"]
    assert "blend_steps:=3" in by_name["executor_node"]
    from wmpo_core.errors import WmpoError

    with pytest.raises(WmpoError, match="NODE:PARAM:=VALUE"):
        parse_overrides(["policy:=random"])
    with pytest.raises(WmpoError, match="no node"):
        build_commands("sim", parse_overrides(["nope:x:=1"]), resolve_args("sim", []), CONFIG_DIR)


def _launch(args: list[str], log_dir: Path) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen(
        [str(BIN / "wmpo"), "launch", *args, "--log-dir", str(log_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.ros
def test_wmpo_launch_reports_a_crashed_node(tmp_path):
    proc = _launch(
        ["robot", "--arg", "record:=false", "--exit-on-crash", "--duration", "30"], tmp_path
    )
    out, _ = proc.communicate(timeout=60)
    # robot.yaml leaves `policy` empty: policy_node refuses to start, with the fix in one line.
    assert proc.returncode == 1, out
    assert "policy_node exited with code 1" in out
    assert "-p policy_node:policy:=" in out


@pytest.mark.ros
def test_wmpo_launch_ctrl_c_stops_every_node(tmp_path):
    proc = _launch(
        ["robot", "--arg", "record:=false", "-p", "policy_node:policy:=random"], tmp_path
    )
    pids, lines = [], []
    deadline = time.monotonic() + 30
    while len(pids) < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.search(r"started (\w+) \(pid (\d+)\)", line)
        if m:
            pids.append(int(m.group(2)))
    assert len(pids) == 3, lines
    time.sleep(4.0)  # let the nodes come up (rclpy import, DDS discovery)
    assert all(_alive(p) for p in pids), "a node died during start-up"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + out
    assert "all nodes stopped" in out and "exited with code" not in out
    assert not any(_alive(p) for p in pids)


def test_colcon_builds_and_installs_launch_files_and_scripts(tmp_path):
    cmd = [
        str(BIN / "colcon"),
        "--log-base",
        str(tmp_path / "log"),
        "build",
        "--base-paths",
        "src",
        "--build-base",
        str(tmp_path / "build"),
        "--install-base",
        str(tmp_path / "install"),
    ]
    done = subprocess.run(cmd, cwd=REPO / "ros2_ws", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    share = tmp_path / "install" / "wmpo_bringup" / "share" / "wmpo_bringup"
    for graph in GRAPHS:
        assert (share / "launch" / f"{graph}.launch.py").is_file()
    used = {f for specs in GRAPHS.values() for s in specs for f in s.params}
    for name in used:
        assert (share / "launch" / "config" / name).is_file(), name
    assert (share / "package.xml").is_file()
    lib = tmp_path / "install" / "wmpo_bringup" / "lib" / "wmpo_bringup"
    for specs in GRAPHS.values():
        for s in specs:
            assert os.access(lib / s.executable, os.X_OK), s.executable
    index = tmp_path / "install" / "wmpo_bringup" / "share" / "ament_index"
    assert (index / "resource_index" / "packages" / "wmpo_bringup").is_file()
