"""Message helpers shared by the runtime nodes (policy, executor, episode)."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

# Latched: late joiners get the last message (instruction, e-stop, episode, policy version).
LATCHED = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
# /wmpo/episode keeps a short history so a late recorder still sees start + label.
EVENTS_QOS = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def stamp_to_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def s_to_stamp(t: float) -> Time:
    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def s_to_duration(t: float) -> Duration:
    ns = int(round(t * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def chunk_to_msg(chunk: np.ndarray, names, obs_stamp: float, dt: float) -> JointTrajectory:
    """[K, D] chunk -> JointTrajectory: stamp = observation, point k at k*dt."""
    msg = JointTrajectory()
    msg.header.stamp = s_to_stamp(obs_stamp)
    msg.joint_names = list(names)
    for k, action in enumerate(chunk):
        point = JointTrajectoryPoint(positions=[float(v) for v in action])
        point.time_from_start = s_to_duration(k * dt)
        msg.points.append(point)
    return msg


def msg_to_chunk(msg: JointTrajectory) -> tuple[np.ndarray, float]:
    """JointTrajectory -> ([K, D] float64, observation stamp in s)."""
    actions = np.array([list(p.positions) for p in msg.points], dtype=np.float64)
    return actions, stamp_to_s(msg.header.stamp)


def diagnostic_array(node, name: str, message: str, values: dict[str, str], level=None):
    status = DiagnosticStatus(
        level=DiagnosticStatus.OK if level is None else level,
        name=name,
        hardware_id=node.get_name(),
        message=message,
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    return array
