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


_DOMAINS_USED: set[int] = set()


@pytest.fixture(autouse=True, scope="module")
def _module_ros_domain(request):
    """Each test module gets a ROS domain of its own, never used earlier in this session and
    free on this machine when the module starts: a node one module leaves behind (or a
    slow-dying one), or a demo running beside the suite, can never publish into its graph."""
    import zlib

    seed = int(os.environ["WMPO_TEST_DOMAIN_ID"]) + zlib.crc32(request.module.__name__.encode())
    domain = pick_domain_id(seed=seed, avoid=_DOMAINS_USED)
    _DOMAINS_USED.add(domain)
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
