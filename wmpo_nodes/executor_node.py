"""executor_node: plays action chunks at the control rate, through the safety filter, onto the arm.

Every control period: the chunk scheduler (wmpo_core.runtime.chunking) picks the
action due now, the safety filter (wmpo_core.runtime.safety) turns it into a safe
command or a hold, and the command goes to the arm's interface:

- 'twist' (EE-delta arms, MoveIt Servo convention; the embedded sim takes the same):
  geometry_msgs/TwistStamped in base_link + std_msgs/Float64 gripper.
- 'joint_trajectory' (joint-space arms): a one-point trajectory_msgs/JointTrajectory
  to a ros2_control JointTrajectoryController, reached in one control period.
- 'moveit_py': joint targets through moveit_py (import-guarded; it is not installable
  on the dev machines, see docs/runtime.md).

It asks policy_node for the next chunk on /wmpo/chunk_request early enough that the
queue does not run dry at the measured inference latency. /wmpo/estop (latched) true
halts within one control period: the queue is dropped and every command is a hold
until /wmpo/estop_reset (std_srvs/Trigger) is called with the e-stop released.
"""

from __future__ import annotations

import functools
import json
import math
import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64, Header, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from wmpo_core.commands import ee_action_to_twist
from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    BASE_FRAME,
    DEFAULT_CONTROL_RATE_HZ,
    DIAGNOSTICS_TOPIC,
    EE_ACTION_NAMES,
    EPISODE_TOPIC,
    ESTOP_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    JOINT_STATES_TOPIC,
    JOINT_TRAJECTORY_TOPIC,
    POLICY_VERSION_TOPIC,
    TWIST_COMMAND_TOPIC,
)
from wmpo_core.runtime.chunking import ChunkConfig, make_scheduler, request_lead_steps
from wmpo_core.runtime.diagnostics import RollingStats, Throttle
from wmpo_core.runtime.episode import EpisodeError, parse_event
from wmpo_core.runtime.safety import SafeCommand, SafetyConfig, SafetyFilter
from wmpo_core.runtime.topics import CHUNK_REQUEST_TOPIC, ESTOP_RESET_SERVICE, SIM_STATE_TOPIC
from wmpo_nodes.common import run_node
from wmpo_nodes.runtime_msgs import (
    EVENTS_QOS,
    LATCHED,
    diagnostic_array,
    msg_to_chunk,
    s_to_duration,
    s_to_stamp,
    stamp_to_s,
)

INTERFACES = ("twist", "joint_trajectory", "moveit_py")
POSE_SOURCES = ("sim_state", "pose_topic", "none")
# 'timer': a wall-clock timer at control_rate_hz (real arms). 'joint_states': one tick per
# /joint_states message, i.e. per step of an arm that may run slower than real time (the
# embedded sim on a loaded CPU): every action reaches the arm, none is overwritten unseen.
TICK_SOURCES = ("timer", "joint_states")


def _locked(method):
    """Run a callback under the node's lock (the e-stop group runs on its own thread)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


def _ro(description: str) -> ParameterDescriptor:
    return ParameterDescriptor(read_only=True, description=description)


# A /joint_states this far behind the node clock is on another clock (sim time vs wall).
CLOCK_MISMATCH_S = 60.0


class ExecutorNode(Node):
    def __init__(self):
        super().__init__("executor_node")
        d = self.declare_parameter
        d("control_rate_hz", DEFAULT_CONTROL_RATE_HZ, _ro("command rate (Hz)"))
        d("arm_type", "ee_delta", _ro("'ee_delta' (normalized OSC deltas) or 'joint'"))
        d("command_interface", "twist", _ro(f"one of {INTERFACES}"))
        d("action_names", list(EE_ACTION_NAMES), _ro("expected joint_names of each chunk"))
        d("joint_names", [""], _ro("joint arms: names sent to the trajectory controller"))
        d("chunk_strategy", "open_loop", _ro("open_loop | temporal_ensemble | latency_aware"))
        d("ensemble_decay", 0.01, _ro("temporal_ensemble: ACT weight exp(-m*i)"))
        d("blend_steps", 2, _ro("latency_aware: cross-fade length (actions)"))
        d("request_chunks", True, _ro("ask policy_node for chunks (policy trigger 'request')"))
        d("request_lead_steps", -1, _ro("ask when this many actions remain; -1 = from latency"))
        d("request_timeout_s", 2.0, _ro("re-ask when a request got no chunk for this long"))
        d("lower", [-1.0] * 7, _ro("per-dimension lower bound (joint arms: joint limits)"))
        d("upper", [1.0] * 7, _ro("per-dimension upper bound"))
        d("max_step", [0.5] * 6 + [2.0], _ro("largest change per period, per dimension"))
        d("workspace_low", [0.0], _ro("EE box lower corner [x, y, z] m; [] or [0.0] = none"))
        d("workspace_high", [0.0], _ro("EE box upper corner [x, y, z] m"))
        d("chunk_timeout_s", 1.0, _ro("hold actions from observations older than this"))
        d("ee_pose_source", "sim_state", _ro(f"one of {POSE_SOURCES}"))
        d("ee_pose_topic", "/ee_pose", _ro("geometry_msgs/PoseStamped (pose_topic source)"))
        d("ee_pose_timeout_s", 0.5, _ro("an EE pose older than this counts as unknown"))
        d("require_episode", True, _ro("hold unless an episode is running"))
        d("tick_source", "timer", _ro(f"one of {TICK_SOURCES}: what paces the control loop"))
        d(
            "max_tick_age_s",
            0.25,
            _ro("joint_states ticks: skip a /joint_states older than this (a backlog); 0 = off"),
        )
        d("twist_topic", TWIST_COMMAND_TOPIC, _ro("TwistStamped command topic"))
        d("gripper_topic", GRIPPER_COMMAND_TOPIC, _ro("Float64 gripper command topic"))
        d("joint_trajectory_topic", JOINT_TRAJECTORY_TOPIC, _ro("JointTrajectory command topic"))
        d("moveit_group", "arm", _ro("moveit_py planning group"))
        p = {n: self.get_parameter(n).value for n in self._parameters}
        self._p = p
        if p["command_interface"] not in INTERFACES:
            raise WmpoError(
                f"command_interface must be one of {INTERFACES}, got {p['command_interface']}"
            )
        if p["tick_source"] not in TICK_SOURCES:
            raise WmpoError(f"tick_source must be one of {TICK_SOURCES}, got {p['tick_source']}")
        if p["ee_pose_source"] not in POSE_SOURCES:
            raise WmpoError(
                f"ee_pose_source must be one of {POSE_SOURCES}, got {p['ee_pose_source']}"
            )
        self.dt = 1.0 / p["control_rate_hz"]
        self.scheduler = make_scheduler(
            ChunkConfig(p["chunk_strategy"], self.dt, p["ensemble_decay"], p["blend_steps"])
        )
        box = len(p["workspace_low"]) == 3
        self.safety = SafetyFilter(
            SafetyConfig(
                arm_type=p["arm_type"],
                lower=tuple(p["lower"]),
                upper=tuple(p["upper"]),
                max_step=tuple(p["max_step"]),
                workspace_low=tuple(p["workspace_low"]) if box else None,
                workspace_high=tuple(p["workspace_high"]) if box else None,
                chunk_timeout_s=p["chunk_timeout_s"],
            )
        )
        self._moveit = (
            _MoveItPy(p["moveit_group"]) if p["command_interface"] == "moveit_py" else None
        )
        self._ee_pos: np.ndarray | None = None
        self._ee_stamp = -math.inf
        self._episode_running = not p["require_episode"]
        self._estop_asserted = False
        self._request_out = False
        self._request_time = 0.0
        self._request_latency = RollingStats(20)
        self._period = RollingStats()
        self._obs_to_cmd = RollingStats()
        self._boundary_step = RollingStats()
        self._last_tick = None
        self._last_now = -math.inf
        self._joint_stamp: float | None = None
        self._last_scheduled: np.ndarray | None = None
        self._last_chunk_id = -1
        self._chunks_in = 0
        self._bad_chunks = 0
        self._stale_ticks = 0
        self._throttle = Throttle(2.0)
        # The e-stop and its reset live in their own callback group, so a press is taken
        # by the executor's second thread even while a tick or a chunk is being handled
        # (in the node's default group it would queue behind them). The lock keeps the
        # safety filter and the scheduler consistent between the two threads.
        self._lock = threading.RLock()
        estop_group = MutuallyExclusiveCallbackGroup()

        if p["command_interface"] == "twist":
            self._twist_pub = self.create_publisher(TwistStamped, p["twist_topic"], 10)
            self._grip_pub = self.create_publisher(Float64, p["gripper_topic"], 10)
        elif p["command_interface"] == "joint_trajectory":
            self._traj_pub = self.create_publisher(JointTrajectory, p["joint_trajectory_topic"], 10)
        self._request_pub = self.create_publisher(Header, CHUNK_REQUEST_TOPIC, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_subscription(JointTrajectory, ACTION_CHUNK_TOPIC, self._on_chunk, 10)
        self.create_subscription(
            Bool, ESTOP_TOPIC, self._on_estop, LATCHED, callback_group=estop_group
        )
        self.create_subscription(String, EPISODE_TOPIC, self._on_episode, EVENTS_QOS)
        self.create_subscription(String, POLICY_VERSION_TOPIC, self._on_policy_version, LATCHED)
        self._policy_version: str | None = None
        self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joints, 10)
        if p["ee_pose_source"] == "sim_state":
            self.create_subscription(String, SIM_STATE_TOPIC, self._on_sim_state, 10)
        elif p["ee_pose_source"] == "pose_topic":
            self.create_subscription(PoseStamped, p["ee_pose_topic"], self._on_pose, 10)
        self.create_service(
            Trigger, ESTOP_RESET_SERVICE, self._on_estop_reset, callback_group=estop_group
        )
        if p["tick_source"] == "timer":
            self.create_timer(self.dt, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"executing '{p['chunk_strategy']}' chunks at {p['control_rate_hz']} Hz "
            f"via '{p['command_interface']}'"
        )

    # --- inputs ----------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _monotonic(self, t: float) -> float:
        """Time never runs backwards for the scheduler, whatever the clock sources do."""
        self._last_now = max(t, self._last_now)
        return self._last_now

    def _warn(self, key: str, text: str) -> None:
        if self._throttle.allow(key, time.monotonic()):
            self.get_logger().error(text)

    @_locked
    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = self._monotonic(self._now())
        if self._request_out:
            self._request_latency.add(now - self._request_time)
            self._request_out = False
        if list(msg.joint_names) != list(self._p["action_names"]):
            self._bad_chunks += 1
            self._warn(
                "names",
                (
                    f"{ACTION_CHUNK_TOPIC}: joint_names {list(msg.joint_names)} do not match "
                    f"action_names {self._p['action_names']}; chunk dropped (check the policy)"
                ),
            )
            return
        actions, stamp = msg_to_chunk(msg)
        if actions.ndim != 2 or actions.shape[0] == 0 or actions.shape[1] != len(msg.joint_names):
            self._bad_chunks += 1
            self._warn("shape", f"{ACTION_CHUNK_TOPIC}: malformed chunk {actions.shape}; dropped")
            return
        if self.safety.halted or not self._episode_running:
            return
        self._chunks_in += 1
        self.scheduler.add_chunk(actions, stamp, now)

    @_locked
    def _on_estop(self, msg: Bool) -> None:
        self._estop_asserted = bool(msg.data)
        if msg.data:
            # Halt now, not at the next tick: drop the queue and send a hold immediately.
            self.safety.estop()
            self.scheduler.clear()
            if self._p["tick_source"] == "timer":
                # Don't wait for the next tick. (Ticked by the arm's steps, the next step is
                # the next period; an extra command there would step a lockstep sim twice.)
                now = self._monotonic(self._now())
                self._send(self.safety.filter(None, now=now), now)
            self.get_logger().warning("e-stop: halted; call /wmpo/estop_reset after releasing it")

    @_locked
    def _on_estop_reset(self, request, response):
        if self._estop_asserted:
            response.success = False
            response.message = f"{ESTOP_TOPIC} is still true: release the e-stop first"
        else:
            self.safety.reset_estop()
            self.scheduler.clear()
            response.success = True
            response.message = "e-stop reset: executing chunks again"
            self.get_logger().info(response.message)
        return response

    @_locked
    def _on_policy_version(self, msg: String) -> None:
        # A hot-swap: queued actions came from the old policy; drop them (the arm holds
        # for at most one inference, it never plays a mix of two policies' chunks).
        if self._policy_version is not None and msg.data != self._policy_version:
            self.scheduler.clear()
            self._request_out = False
            self.get_logger().info(
                f"policy {self._policy_version} -> {msg.data}: dropped queued actions"
            )
        self._policy_version = msg.data

    @_locked
    def _on_episode(self, msg: String) -> None:
        try:
            event = parse_event(msg.data)
        except EpisodeError as exc:
            self._warn("episode", str(exc))
            return
        if event.event in ("start", "stop", "reset", "label"):
            # Chunks from one episode never play into the next (or after a stop).
            self.scheduler.clear()
            self._request_out = False
        if self._p["require_episode"]:
            if event.event == "start":
                self._episode_running = True
                if self._p["tick_source"] == "joint_states" and self._joint_stamp is not None:
                    # Restart the loop: the arm's reset step came before this event, and a
                    # lockstep sim waits for a command before it steps again.
                    self._tick(self._joint_stamp)
            elif event.event in ("stop", "reset", "label"):
                self._episode_running = False

    @_locked
    def _on_joints(self, msg: JointState) -> None:
        if self._p["arm_type"] == "joint":
            by_name = dict(zip(msg.name, msg.position, strict=False))
            names = self._p["joint_names"]
            if all(n in by_name for n in names):
                self.safety.set_measured(np.array([by_name[n] for n in names]))
        self._joint_stamp = stamp_to_s(msg.header.stamp)
        if self._p["tick_source"] == "joint_states" and self._episode_running:
            # The arm's own step time paces the loop (sim time for a lockstep sim). Between
            # episodes nothing is sent: a lockstep sim then stops stepping (and answers its
            # reset service at once), a wall-clock arm holds on its own command timeout.
            if self._tick_is_stale(self._joint_stamp):
                return
            self._tick(self._joint_stamp)

    def _tick_is_stale(self, stamp: float) -> bool:
        """A starved executor finds a backlog of arm states: ticking on each would send a
        burst of commands stamped in the past (the arm refuses the stale ones) and play
        queued actions late. Skip them; the next fresh state ticks, and the time-indexed
        chunk queue drops the actions whose time has passed."""
        limit = self._p["max_tick_age_s"]
        age = self._now() - stamp
        if limit <= 0 or age <= limit:
            return False
        self._stale_ticks += 1
        if age > CLOCK_MISMATCH_S:  # not a backlog: the arm stamps on another clock
            self._warn(
                "tick_clock",
                f"/joint_states stamped {age:.0f} s behind this node's clock, no tick sent: "
                "with a lockstep sim set use_sim_time:=true on executor_node too",
            )
        else:
            self._warn(
                "stale_tick",
                f"skipped a tick on a /joint_states {age:.2f} s old (> max_tick_age_s "
                f"{limit}): this executor is starved of CPU",
            )
        return True

    def _on_sim_state(self, msg: String) -> None:
        try:
            state = json.loads(msg.data)
            pos = np.asarray(state["eef_pos"], dtype=np.float64)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            self._warn("simstate", f"{SIM_STATE_TOPIC}: expected JSON with 'eef_pos' [x, y, z]")
            return
        self._ee_pos, self._ee_stamp = pos, self._now()

    def _on_pose(self, msg: PoseStamped) -> None:
        p = msg.pose.position
        self._ee_pos, self._ee_stamp = np.array([p.x, p.y, p.z]), self._now()

    # --- the control loop ------------------------------------------------------
    @_locked
    def _tick(self, stamp: float | None = None) -> None:
        now = self._monotonic(self._now() if stamp is None else stamp)
        wall = time.monotonic()
        if self._last_tick is not None:
            self._period.add(wall - self._last_tick)
        self._last_tick = wall
        scheduled = None
        if not self.safety.halted and self._episode_running:
            scheduled = self.scheduler.next_action(now)
        ee_pos = self._ee_pos if now - self._ee_stamp <= self._p["ee_pose_timeout_s"] else None
        if not self._episode_running and not self.safety.halted:
            cmd = self.safety.idle()  # holding between episodes is no intervention
        else:
            cmd = self.safety.filter(
                None if scheduled is None else scheduled.action,
                now=now,
                action_stamp=None if scheduled is None else scheduled.obs_stamp,
                ee_pos=ee_pos,
            )
        self._send(cmd, now)
        if scheduled is not None and cmd is not None and not cmd.hold:
            if scheduled.chunk_id != self._last_chunk_id:
                self._obs_to_cmd.add(now - scheduled.obs_stamp)
                if self._last_scheduled is not None:
                    # What the strategy asks for at the boundary, before the safety filter's
                    # step limit; motion dims only (an EE gripper flips by design).
                    a = scheduled.action
                    n = len(a) - (1 if self._p["arm_type"] == "ee_delta" else 0)
                    step = np.abs(a[:n] - self._last_scheduled[:n])
                    self._boundary_step.add(float(np.max(step)))
                self._last_chunk_id = scheduled.chunk_id
        if scheduled is not None:
            self._last_scheduled = scheduled.action
        self._maybe_request(now)

    def _maybe_request(self, now: float) -> None:
        if not self._p["request_chunks"] or self.safety.halted or not self._episode_running:
            return
        if self._request_out and now - self._request_time < self._p["request_timeout_s"]:
            return
        lead = self._p["request_lead_steps"]
        if lead < 0:
            latency = max(self._request_latency._values, default=0.0)
            lead = request_lead_steps(latency, self.dt)
        # temporal_ensemble wants a fresh chunk as often as inference allows (ACT: every step).
        ensemble = self._p["chunk_strategy"] == "temporal_ensemble"
        if ensemble or self.scheduler.queue_depth <= lead:
            header = Header(frame_id=BASE_FRAME)
            header.stamp = s_to_stamp(now)
            self._request_pub.publish(header)
            self._request_out, self._request_time = True, now

    def _send(self, cmd: SafeCommand | None, now: float) -> None:
        if cmd is None:
            return  # joint arm with no measured position yet: nothing safe to send
        iface = self._p["command_interface"]
        if iface == "twist":
            linear, angular, gripper = ee_action_to_twist(cmd.command, 1.0 / self.dt)
            msg = TwistStamped()
            msg.header.stamp = s_to_stamp(now)
            msg.header.frame_id = BASE_FRAME
            (msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z) = map(float, linear)
            (msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z) = map(float, angular)
            # Gripper first: an arm that steps on each twist (the lockstep sim) then applies
            # this period's gripper command with this period's motion, not the previous one.
            self._grip_pub.publish(Float64(data=gripper))
            self._twist_pub.publish(msg)
        elif iface == "joint_trajectory":
            msg = JointTrajectory(joint_names=list(self._p["joint_names"]))
            msg.header.stamp = s_to_stamp(now)
            point = JointTrajectoryPoint(positions=[float(v) for v in cmd.command])
            point.time_from_start = s_to_duration(self.dt)
            msg.points.append(point)
            self._traj_pub.publish(msg)
        else:
            self._moveit.send(list(self._p["joint_names"]), cmd.command)

    @_locked
    def _publish_diagnostics(self) -> None:
        values = {
            "halted": str(self.safety.halted),
            "episode_running": str(self._episode_running),
            "queue_depth": str(self.scheduler.queue_depth),
            "chunks_received": str(self._chunks_in),
            "chunks_malformed": str(self._bad_chunks),
            "chunks_dropped": str(self.scheduler.dropped_chunks),
            "actions_skipped": str(self.scheduler.skipped_actions),
            "ticks_skipped_stale": str(self._stale_ticks),
        }
        values.update({f"intervention_{k}": str(v) for k, v in self.safety.snapshot().items()})
        values.update(self._period.summary("command_period"))
        values.update(self._obs_to_cmd.summary("observation_to_command"))
        values.update(self._request_latency.summary("request_to_chunk"))
        values.update(self._boundary_step.summary("chunk_boundary_step", scale=1.0, unit="norm"))
        message = "halted (e-stop)" if self.safety.halted else "running"
        self._diag_pub.publish(diagnostic_array(self, "wmpo/executor_node", message, values))


class _MoveItPy:
    """Joint targets through moveit_py (not installable here: import-guarded, untested)."""

    def __init__(self, group: str):
        try:
            from moveit.planning import MoveItPy  # type: ignore[import-not-found]
        except ImportError:
            raise WmpoError(
                "command_interface 'moveit_py' needs MoveIt 2's Python bindings (moveit_py), "
                "which come with a ROS 2 install (apt install ros-$ROS_DISTRO-moveit-py); "
                "use 'joint_trajectory' or 'twist' (MoveIt Servo) otherwise"
            ) from None
        self._robot = MoveItPy(node_name="wmpo_executor_moveit")
        self._group = self._robot.get_planning_component(group)

    def send(self, joint_names: list[str], positions: np.ndarray) -> None:
        from moveit.core.robot_state import RobotState  # type: ignore[import-not-found]

        state = RobotState(self._robot.get_robot_model())
        state.joint_positions = dict(zip(joint_names, map(float, positions), strict=True))
        self._group.set_goal_state(robot_state=state)
        plan = self._group.plan()
        if plan:
            self._robot.execute(plan.trajectory, controllers=[])


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(ExecutorNode, args)
    except WmpoError as exc:
        print(f"wmpo_executor_node: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
