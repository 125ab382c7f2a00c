"""The ROS environment this project owns (no rclpy import here).

Discovery always stays on loopback; tests and `wmpo launch` each pick their
own ROS_DOMAIN_ID so parallel runs never see each other.
"""

from __future__ import annotations

import os
import random

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


def pick_domain_id(seed: int | None = None) -> int:
    """A domain id in 1..101 (0 is the default everyone else uses; >101 collides with ports)."""
    rng = random.Random(seed if seed is not None else os.getpid())
    return rng.randint(1, 101)
