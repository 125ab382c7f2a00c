"""The install is real, and the core stays free of ROS."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_rclpy_robosuite_torch_import_in_the_venv():
    import rclpy  # noqa: F401
    import robosuite
    import torch

    assert torch.__version__.startswith("2.")
    assert robosuite.__version__ == "1.5.2"


def test_core_never_imports_rclpy():
    offenders = []
    for path in (REPO / "wmpo_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(
                n == "rclpy" or n.startswith("rclpy.") or n.startswith("wmpo_nodes") for n in names
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"wmpo_core must not import rclpy/wmpo_nodes: {offenders}"


def test_importing_core_modules_does_not_load_rclpy():
    code = (
        "import importlib, pkgutil, sys, wmpo_core\n"
        "for m in pkgutil.walk_packages(wmpo_core.__path__, 'wmpo_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'rclpy' not in sys.modules, 'rclpy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_wmpo_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "wmpo_core.cli", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0
    for name in ("launch", "bags", "ingest", "train", "eval", "cycle", "demo"):
        assert name in out.stdout
