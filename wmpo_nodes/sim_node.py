"""sim_node: the embedded robosuite arm behind the same topics a real arm's driver stack offers.

Publishes every step: the camera (sensor_msgs/Image rgb8, sensor-data QoS) and
/joint_states; plus the privileged success flag (std_msgs/Bool, evaluation only)
and /wmpo/sim/state (std_msgs/String JSON of SimArm.privileged_state(), for the
scripted expert acting as teleoperator or policy; never for learning).

Takes MoveIt Servo style commands: geometry_msgs/TwistStamped on
/servo_node/delta_twist_cmds in `frame_id` (base_link) and std_msgs/Float64 on
/gripper/command (-1 open, +1 closed). A twist with NaN/Inf, the wrong frame, or
a stale stamp is refused with a throttled one-line error, counted (diagnostics),
and the arm holds still.

Clock modes (`clock_mode`, read-only):
- 'wall': a timer at control_rate_hz steps the sim with the latest fresh twist
  (zero motion when none or stale); stamps are the node clock.
- 'lockstep': one sim step per received twist (with the latest gripper command);
  /clock and every stamp are sim time = steps since node start x dt (monotonic
  across resets, so ROS time never jumps back; a reset counts as one step, so
  every frame's stamp is unique); staleness uses sim time. Same
  seed + same commands -> the same images, bit for bit.

/wmpo/sim/reset (std_srvs/Trigger) resets to the state drawn from the current
`seed` parameter, then increments it: episode k after start-up uses seed + k.
Start-up shows the `seed` scene without consuming it.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger

from wmpo_core.images import rgb_to_image_fields
from wmpo_core.interfaces import (
    BASE_FRAME,
    CAMERA_TOPIC,
    CLOCK_TOPIC,
    DEFAULT_CONTROL_RATE_HZ,
    DEFAULT_IMAGE_SIZE,
    DIAGNOSTICS_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    JOINT_STATES_TOPIC,
    SIM_RESET_SERVICE,
    SIM_SUCCESS_TOPIC,
    TWIST_COMMAND_TOPIC,
)
from wmpo_core.runtime.diagnostics import Throttle
from wmpo_core.runtime.topics import SIM_STATE_TOPIC
from wmpo_core.sim.arm import SimArm, SimConfig, SimObservation
from wmpo_core.sim.gate import CommandGate, TwistCommand, hold
from wmpo_nodes.common import run_node
from wmpo_nodes.runtime_msgs import s_to_stamp, stamp_to_s

CLOCK_MODES = ("wall", "lockstep")


def _ro(description: str) -> ParameterDescriptor:
    return ParameterDescriptor(read_only=True, description=description)


class SimNode(Node):
    def __init__(self):
        super().__init__("sim_node")
        d = self.declare_parameter
        d("task", "Lift", _ro("robosuite task: Lift | Stack | NutAssemblySquare"))
        d("image_size", DEFAULT_IMAGE_SIZE, _ro("camera frame side (px)"))
        d("camera", "agentview", _ro("robosuite camera name"))
        d("render", True, _ro("publish camera frames (false = state only, faster)"))
        d("control_rate_hz", DEFAULT_CONTROL_RATE_HZ, _ro("sim control rate (Hz)"))
        d("clock_mode", "wall", _ro(f"one of {CLOCK_MODES}: timer-driven, or one step per twist"))
        d("seed", 0, ParameterDescriptor(description="seed of the next reset (incremented by it)"))
        d("command_timeout_s", 0.5, _ro("twists older than this (arm clock) are refused"))
        d("frame_id", BASE_FRAME, _ro("the frame twists must be expressed in"))
        p = {n: self.get_parameter(n).value for n in ("task", "image_size", "camera", "render")}
        self.rate = float(self.get_parameter("control_rate_hz").value)
        self.mode = self.get_parameter("clock_mode").value
        if self.mode not in CLOCK_MODES:
            raise ValueError(
                f"sim_node: clock_mode '{self.mode}' unknown; use one of {CLOCK_MODES}"
            )
        self.arm = SimArm(
            SimConfig(
                task=p["task"],
                image_size=int(p["image_size"]),
                camera=p["camera"],
                render=bool(p["render"]),
                control_freq=self.rate,
                horizon=10**9,  # episodes are ended by the episode node, not the sim
            )
        )
        self.gate = CommandGate(
            rate_hz=self.rate,
            timeout_s=float(self.get_parameter("command_timeout_s").value),
            frame_id=self.get_parameter("frame_id").value,
        )
        self.throttle = Throttle(2.0)
        self.total_steps = 0  # lockstep sim clock: never reset, so ROS time only moves forward
        self.gripper = -1.0  # open until commanded
        self.latest: tuple[np.ndarray, float] | None = None  # accepted twist action, stamp
        self.held_steps = 0
        self._sim_lock = threading.Lock()  # the arm is stepped from the timer, twists, reset
        self._closed = False

        self.pub_image = self.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        self.pub_joints = self.create_publisher(JointState, JOINT_STATES_TOPIC, 10)
        self.pub_success = self.create_publisher(Bool, SIM_SUCCESS_TOPIC, 10)
        self.pub_state = self.create_publisher(String, SIM_STATE_TOPIC, 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.pub_clock = self.create_publisher(Clock, CLOCK_TOPIC, 10) if self.lockstep else None
        # Twists in their own group too: in 'wall' mode, when a step + render takes longer
        # than the timer period (a loaded CPU), the always-ready timer starved them. One
        # group (not reentrant) keeps lockstep twists in order; `_sim_lock` serializes the arm.
        self.create_subscription(
            TwistStamped,
            TWIST_COMMAND_TOPIC,
            self._on_twist,
            10,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        # Own callback group: with twists always pending (lockstep) the gripper callback would
        # otherwise never get the node's one mutually exclusive group (it only sets a float).
        self.create_subscription(
            Float64,
            GRIPPER_COMMAND_TOPIC,
            self._on_gripper,
            10,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_service(Trigger, SIM_RESET_SERVICE, self._on_reset)
        self.create_timer(1.0, self._publish_diagnostics)
        self._rate_window = (time.monotonic(), 0)  # (wall time, total_steps) at last diagnostics

        self._publish(self.arm.reset(int(self.get_parameter("seed").value)))
        if not self.lockstep:
            self.create_timer(1.0 / self.rate, self._on_tick)
        self.get_logger().info(
            f"sim {p['task']} {p['image_size']}px at {self.rate:g} Hz, clock '{self.mode}', "
            f"seed {self.arm.seed}"
        )

    @property
    def lockstep(self) -> bool:
        return self.mode == "lockstep"

    # -- clock ----------------------------------------------------------------
    def _now(self) -> float:
        if self.lockstep:
            return self.total_steps / self.rate
        return self.get_clock().now().nanoseconds * 1e-9

    # -- commands ---------------------------------------------------------------
    def _on_twist(self, msg: TwistStamped) -> None:
        cmd = TwistCommand(
            stamp_s=stamp_to_s(msg.header.stamp),
            frame_id=msg.header.frame_id,
            linear=(msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z),
            angular=(msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z),
        )
        action, why = self.gate.check(cmd, self._now(), self.gripper)
        if action is None:
            self.latest = None  # a bad command also cancels the previous one: hold still
            self._log_refusal(why)
        else:
            self.latest = (action, cmd.stamp_s)
        if self.lockstep:  # one step per twist, a refused one included (as a hold)
            self._step(action if action is not None else hold(self.gripper))

    def _on_gripper(self, msg: Float64) -> None:
        if not np.isfinite(msg.data):
            self.gate.rejected["gripper_non_finite"] += 1
            self._log_refusal(f"gripper_non_finite: {GRIPPER_COMMAND_TOPIC} got {msg.data}")
            return
        self.gripper = float(np.clip(msg.data, -1.0, 1.0))

    def _log_refusal(self, why: str) -> None:
        key = why.split(":", 1)[0]
        if self.throttle.allow(key, time.monotonic()):
            total = sum(self.gate.rejected.values())
            self.get_logger().error(
                f"{TWIST_COMMAND_TOPIC}: refused command ({why}); holding still "
                f"[{total} refused so far]"
            )

    def _on_tick(self) -> None:
        now = self._now()
        if self.latest is not None and self.gate.fresh(self.latest[1], now):
            action = self.latest[0].copy()
            action[6] = self.gripper
        else:
            action = hold(self.gripper)
            self.held_steps += 1
        self._step(action)

    # -- stepping and publishing ---------------------------------------------------
    def _step(self, action: np.ndarray) -> None:
        with self._sim_lock:
            if self._closed:  # a twist that arrived during shutdown
                return
            obs = self.arm.step(action)
            self.total_steps += 1
            self._publish(obs)

    def _publish(self, obs: SimObservation) -> None:
        stamp = s_to_stamp(self._now()) if self.lockstep else self.get_clock().now().to_msg()
        if self.pub_clock is not None:
            self.pub_clock.publish(Clock(clock=stamp))
        if obs.image is not None:
            img = Image(**rgb_to_image_fields(obs.image))
            img.header.stamp, img.header.frame_id = stamp, "camera"
            self.pub_image.publish(img)
        joints = JointState(name=obs.joint_names, position=obs.joint_positions.tolist())
        joints.header.stamp = stamp
        self.pub_joints.publish(joints)
        state = self.arm.privileged_state()
        self.pub_success.publish(Bool(data=bool(state["success"])))
        self.pub_state.publish(String(data=json.dumps(state)))

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        seed = int(self.get_parameter("seed").value)
        with self._sim_lock:
            if self._closed:
                response.success, response.message = False, "sim_node is shutting down"
                return response
            self.latest = None
            if self.lockstep:
                self.total_steps += 1  # a reset takes one period of sim time: unique stamps
            self._publish(self.arm.reset(seed))
        self.set_parameters([Parameter("seed", value=seed + 1)])
        response.success = True
        response.message = f"reset {self.arm.config.task} with seed {seed}"
        self.get_logger().info(response.message)
        return response

    def _publish_diagnostics(self) -> None:
        t0, n0 = self._rate_window
        now = time.monotonic()
        steps_per_s = (self.total_steps - n0) / max(now - t0, 1e-6)
        self._rate_window = (now, self.total_steps)
        refused = dict(self.gate.rejected)
        level = DiagnosticStatus.WARN if refused else DiagnosticStatus.OK
        values = {
            "refused_total": sum(refused.values()),
            **{f"refused_{k}": v for k, v in sorted(refused.items())},
            "steps": self.total_steps,
            "episode_step": self.arm.step_count,
            "held_steps": self.held_steps,
            "seed": self.arm.seed,
            "steps_per_s": round(steps_per_s, 1),
        }
        status = DiagnosticStatus(
            level=level,
            name="sim_node: arm",
            hardware_id="robosuite",
            message=f"{sum(refused.values())} commands refused" if refused else "ok",
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = (
            s_to_stamp(self._now()) if self.lockstep else self.get_clock().now().to_msg()
        )
        self.pub_diag.publish(array)

    def close(self) -> None:
        with self._sim_lock:  # never while a callback is stepping the arm
            self._closed = True
            self.arm.close()


def main(args: list[str] | None = None) -> int:
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
