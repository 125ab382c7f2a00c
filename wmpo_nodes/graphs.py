"""The one list of which nodes make up each graph, and which parameter files each node reads.

`wmpo launch GRAPH` (wmpo_nodes/launcher.py) starts exactly these; the ROS launch
files (launch/*.launch.py) spell out the same nodes for `ros2 launch`, and
tests/test_launch.py checks that both agree. Parameter files are relative to
launch/config/ and are applied in order (later files override earlier ones), so
`sim.yaml` / `robot.yaml` only hold what differs between the sim and a real arm.
No ROS imports here: the launcher and the tests read it without rclpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "launch" / "config"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    """ROS node name (the key of its section in the parameter files)."""
    executable: str
    """Console script (pyproject [project.scripts]; wmpo_bringup installs the same names)."""
    params: tuple[str, ...]
    """Parameter files under launch/config/, applied in order."""
    condition: str = ""
    """Launch argument that must be true to start this node ('' = always)."""


@dataclass(frozen=True)
class LaunchArg:
    name: str
    default: str
    description: str
    targets: tuple[tuple[str, str], ...]
    """(node name, parameter) pairs the argument sets; empty = a node condition."""


SIM = NodeSpec("sim_node", "wmpo_sim_node", ("sim.yaml",))
POLICY_SIM = NodeSpec("policy_node", "wmpo_policy_node", ("policy.yaml", "sim.yaml"))
EXECUTOR_SIM = NodeSpec("executor_node", "wmpo_executor_node", ("executor.yaml", "sim.yaml"))
EPISODE_SIM = NodeSpec("episode_node", "wmpo_episode_node", ("episode.yaml", "sim.yaml"))
RECORDER = NodeSpec("recorder", "wmpo_recorder_node", ("recorder.yaml",), "record")

GRAPHS: dict[str, tuple[NodeSpec, ...]] = {
    # The embedded robosuite arm driven by the policy: what `make demo` and the tests run.
    "sim": (SIM, POLICY_SIM, EXECUTOR_SIM, EPISODE_SIM, RECORDER),
    # A real arm: its drivers (camera, ros2_control / MoveIt Servo) are started by the robot's
    # own bringup; robot.yaml maps our topics and limits onto them.
    "robot": (
        NodeSpec("policy_node", "wmpo_policy_node", ("policy.yaml", "robot.yaml")),
        NodeSpec("executor_node", "wmpo_executor_node", ("executor.yaml", "robot.yaml")),
        NodeSpec("episode_node", "wmpo_episode_node", ("episode.yaml", "robot.yaml")),
        NodeSpec("recorder", "wmpo_recorder_node", ("recorder.yaml", "robot.yaml"), "record"),
    ),
    # Demonstrations by teleoperation (for behaviour cloning): no policy, no executor.
    "teleop": (
        NodeSpec("sim_node", "wmpo_sim_node", ("sim.yaml",), "use_sim"),
        NodeSpec("teleop", "wmpo_teleop_node", ("teleop.yaml",)),
        NodeSpec("episode_node", "wmpo_episode_node", ("episode.yaml", "teleop.yaml")),
        RECORDER,
    ),
}

LAUNCH_ARGS: dict[str, tuple[LaunchArg, ...]] = {
    "sim": (
        LaunchArg(
            "task",
            "Lift",
            "sim task: Lift | Stack | NutAssemblySquare",
            (("sim_node", "task"), ("policy_node", "task"), ("episode_node", "task")),
        ),
        LaunchArg(
            "policy",
            "scripted",
            "'scripted', 'random' or a policy checkpoint directory",
            (("policy_node", "policy"),),
        ),
        LaunchArg(
            "chunk_strategy",
            "open_loop",
            "open_loop | temporal_ensemble | latency_aware",
            (("executor_node", "chunk_strategy"),),
        ),
        LaunchArg("record", "true", "record every episode to a rosbag2 directory", ()),
    ),
    "robot": (
        LaunchArg(
            "policy",
            "",
            "policy checkpoint directory (required on a robot)",
            (("policy_node", "policy"),),
        ),
        LaunchArg(
            "chunk_strategy",
            "latency_aware",
            "open_loop | temporal_ensemble | latency_aware",
            (("executor_node", "chunk_strategy"),),
        ),
        LaunchArg("record", "true", "record every episode to a rosbag2 directory", ()),
    ),
    "teleop": (
        LaunchArg("use_sim", "true", "start the embedded sim arm (false on a real arm)", ()),
        LaunchArg(
            "task",
            "Lift",
            "task: the expert teleoperator's task and the one written into the episode events",
            (("teleop", "task"), ("episode_node", "task")),
        ),
        LaunchArg("record", "true", "record every episode to a rosbag2 directory", ()),
    ),
}


def graph(name: str) -> tuple[NodeSpec, ...]:
    if name not in GRAPHS:
        raise KeyError(f"unknown graph '{name}'; choose one of {sorted(GRAPHS)}")
    return GRAPHS[name]
