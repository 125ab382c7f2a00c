"""Test session environment: loopback-only ROS with a domain id of its own.

Set before anything imports rclpy, so every node in this session (in-process or
a subprocess started by a fixture) discovers only its peers on this machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wmpo_core.rosenv import apply_ros_env, pick_domain_id  # noqa: E402

os.environ.setdefault("WMPO_TEST_DOMAIN_ID", str(pick_domain_id()))
apply_ros_env(int(os.environ["WMPO_TEST_DOMAIN_ID"]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True, scope="module")
def _module_ros_domain(request):
    """Each test module gets its own ROS domain: a node one module leaves behind (or a
    slow-dying one) can never publish into the next module's graph."""
    import zlib

    base = int(os.environ["WMPO_TEST_DOMAIN_ID"])
    offset = zlib.crc32(request.module.__name__.encode()) % 97
    domain = (base + offset) % 101 + 1
    previous = os.environ.get("ROS_DOMAIN_ID")
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    yield domain
    if previous is not None:
        os.environ["ROS_DOMAIN_ID"] = previous


@pytest.fixture
def ros_domain_id() -> int:
    return int(os.environ["ROS_DOMAIN_ID"])


@pytest.fixture
def ros_context():
    """An rclpy context for one test, shut down even when the test fails."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        context.try_shutdown()
