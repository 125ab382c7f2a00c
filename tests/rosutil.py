"""Helpers for integration tests over real loopback DDS.

`NodeProcess` starts a node's console script as a subprocess in this test
session's ROS domain and always stops it (SIGINT, then SIGKILL), so a failing
test never leaves a node running. `wait_for` spins an rclpy node until a
condition holds or a timeout passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wmpo_core.rosenv import ros_env

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class NodeProcess:
    def __init__(self, executable: str, ros_args: list[str] | None = None, log: Path | None = None):
        self.executable = executable
        self.ros_args = ros_args or []
        self.log_path = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        cmd = [str(BIN / self.executable)]
        if self.ros_args:
            cmd += ["--ros-args", *self.ros_args]
        out = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            env=ros_env(int(os.environ["ROS_DOMAIN_ID"])),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for(executor, condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Spin `executor` until `condition()` is true; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        executor.spin_once(timeout_sec=step)
    return condition()
