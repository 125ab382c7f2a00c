"""The ROS environment this project owns (no rclpy import here).

Discovery always stays on loopback; tests and `wmpo launch` each pick their
own ROS_DOMAIN_ID so parallel runs never see each other.
"""

from __future__ import annotations

import os
import random
import socket

LOCALHOST_ENV = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    # Headless MuJoCo rendering on a machine without a display.
    "MUJOCO_GL": "osmesa",
    "PYOPENGL_PLATFORM": "osmesa",
}


def ros_env(domain_id: int | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for ROS processes: loopback-only discovery and a domain id."""
    env = dict(os.environ if base is None else base)
    for key, value in LOCALHOST_ENV.items():
        env.setdefault(key, value)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # never multicast on the LAN
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    return env


def apply_ros_env(domain_id: int | None = None) -> None:
    """Apply `ros_env` to this process (call before rclpy.init)."""
    os.environ.update(ros_env(domain_id))


MAX_DOMAIN_ID = 101  # above this, DDS ports collide with Linux's ephemeral port range
_PROBED_PARTICIPANTS = 4


def domain_in_use(domain_id: int) -> bool:
    """Whether a DDS participant on this machine holds one of the domain's first unicast
    discovery ports (RTPS: 7400 + 250 * domain + 10 + 2 * participant). A bind probe, no
    DDS traffic: it sees a graph another process (a demo, a leaked test node) is running."""
    for participant in range(_PROBED_PARTICIPANTS):
        port = 7410 + 250 * domain_id + 2 * participant
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                return True
    return False


def pick_domain_id(seed: int | None = None, avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A free domain id in 1..101 (0 is the default everyone else uses), starting from a
    random one and skipping `avoid` and any domain a process on this machine is using."""
    rng = random.Random(seed if seed is not None else os.getpid())
    start = rng.randint(1, MAX_DOMAIN_ID)
    candidates = [(start - 1 + i) % MAX_DOMAIN_ID + 1 for i in range(MAX_DOMAIN_ID)]
    for domain in candidates:
        if domain not in avoid and not domain_in_use(domain):
            return domain
    return start  # every domain busy: share one rather than fail
