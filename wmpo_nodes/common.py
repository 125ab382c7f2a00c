"""What every node's main() shares: rclpy.init, an explicit executor, clean shutdown.

Nodes import this; it is the only place that decides how a node process starts
and stops, so Ctrl-C / SIGTERM behave the same everywhere.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from wmpo_core.rosenv import apply_ros_env


def run_node(make_node: Callable[[], Node], args: list[str] | None = None, threads: int = 2) -> int:
    """Start a node with a multi-threaded executor until Ctrl-C / SIGTERM; return an exit code."""
    apply_ros_env()
    rclpy.init(args=sys.argv if args is None else args)
    # SIGTERM (from `wmpo launch` or systemd) shuts down like Ctrl-C, so files get closed.
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    node = None
    try:
        node = make_node()
        executor = MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
