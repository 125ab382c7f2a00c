"""Domain selection: a graph already running on this machine is never joined by accident."""

from __future__ import annotations

import socket

from wmpo_core.rosenv import domain_in_use, pick_domain_id, ros_env


def _hold_discovery_port(domain: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 7410 + 250 * domain))  # participant 0's unicast discovery port
    return s


def test_a_domain_whose_discovery_port_is_held_is_in_use_and_skipped():
    free = pick_domain_id(seed=5)
    assert not domain_in_use(free)
    with _hold_discovery_port(free):
        assert domain_in_use(free)
        assert pick_domain_id(seed=5) != free
    assert pick_domain_id(seed=5) == free


def test_avoid_set_is_honoured_and_ids_stay_in_the_safe_range():
    first = pick_domain_id(seed=9)
    second = pick_domain_id(seed=9, avoid={first})
    assert second != first
    assert all(1 <= pick_domain_id(seed=s) <= 101 for s in range(50))


def test_ros_env_keeps_discovery_on_loopback_even_if_the_caller_widened_it():
    env = ros_env(7, base={"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"})
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert env["ROS_DOMAIN_ID"] == "7"


def test_a_live_rclpy_node_marks_its_domain_in_use(ros_context, ros_domain_id):
    import rclpy

    node = rclpy.create_node("domain_probe_target", context=ros_context)
    try:
        assert domain_in_use(ros_domain_id)
    finally:
        node.destroy_node()
