"""teleop_node: a person (gamepad / 3D mouse / keyboard) or the scripted expert drives the arm.

Modes (parameter `mode`):
  joy       sensor_msgs/Joy on /joy -> EE-delta (wmpo_core.teleop.JoyTeleop; deadman button)
  keyboard  keys on stdin (w/s a/d r/f q/e move, space gripper; y/n label, x discard,
            b start, p stop)
  expert    the embedded sim's scripted expert is the operator: on each /wmpo/sim/state
            JSON (one per sim control step) runs make_expert(task, noise, seed).act(state)

Every mode publishes geometry_msgs/TwistStamped + std_msgs/Float64 gripper at the
control rate through wmpo_core.commands.ee_action_to_twist. A teleop session is a
sequence of ordinary episodes recorded by recorder_node. Operator keys become
episode-node commands (/wmpo/episode/command). The expert's episodes are run by
`manage_episodes`: 'episode_node' (start / label commands to the episode node),
'self' (no episode node: this node resets the sim and publishes the events, kind
'demonstration', label from the sim's success flag, labelled_by 'sim') or 'off'.
A discard is published as a label event with label 'discard' (docs/data.md).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Joy
from std_msgs.msg import Bool, Float64, String
from std_srvs.srv import Trigger

from wmpo_core.commands import ee_action_to_twist
from wmpo_core.interfaces import (
    BASE_FRAME,
    DEFAULT_CONTROL_RATE_HZ,
    EE_ACTION_DIM,
    EPISODE_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    SIM_RESET_SERVICE,
    SIM_SUCCESS_TOPIC,
    TASK_INSTRUCTIONS,
    TWIST_COMMAND_TOPIC,
)
from wmpo_core.runtime.topics import EPISODE_COMMAND_TOPIC, SIM_STATE_TOPIC
from wmpo_core.teleop import JoyMapping, JoyTeleop, KeyboardTeleop
from wmpo_nodes.common import run_node

MODES = ("joy", "keyboard", "expert")
# Who starts / stops / labels expert episodes: nobody ('off': the expert just acts), this
# node ('self': resets the sim, publishes the events), or the episode node ('episode_node':
# commands on /wmpo/episode/command; it resets the sim and publishes the events).
EPISODE_MANAGERS = ("off", "self", "episode_node")
LATCHED = QoSProfile(
    depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        p = self._declare_parameters()
        if p["mode"] not in MODES:
            raise ValueError(f"teleop mode must be one of {MODES}, got '{p['mode']}'")
        self.p = p
        self.rate = float(p["rate_hz"])
        self.action = np.zeros(EE_ACTION_DIM)
        self.action[6] = -1.0
        self._action_stamp = 0.0
        self._lock = threading.Lock()
        self.twist_pub = self.create_publisher(TwistStamped, TWIST_COMMAND_TOPIC, 10)
        self.gripper_pub = self.create_publisher(Float64, GRIPPER_COMMAND_TOPIC, 10)
        self.command_pub = self.create_publisher(String, EPISODE_COMMAND_TOPIC, 10)
        self.event_pub = self.create_publisher(String, EPISODE_TOPIC, LATCHED)
        self.create_subscription(String, EPISODE_TOPIC, self._on_event, LATCHED)
        self.episode_id = ""
        self.episode_count = 0
        self._seed = int(p["seed"])
        self.instruction = p["instruction"] or TASK_INSTRUCTIONS.get(p["task"], p["task"])
        if p["mode"] == "joy":
            self.joy = JoyTeleop(
                JoyMapping(
                    axes=list(p["axes"]),
                    signs=list(p["signs"]),
                    scale=p["scale"],
                    rotation_scale=p["rotation_scale"],
                    deadzone=p["deadzone"],
                    deadman_button=p["deadman_button"],
                    gripper_close_button=p["gripper_close_button"],
                    gripper_open_button=p["gripper_open_button"],
                )
            )
            self.create_subscription(Joy, "/joy", self._on_joy, 10)
        elif p["mode"] == "keyboard":
            self.keyboard = KeyboardTeleop(p["scale"])
            threading.Thread(target=self._read_keys, daemon=True).start()
        else:
            self._setup_expert()
        self.create_timer(1.0 / self.rate, self._tick)
        self.get_logger().info(f"teleop in '{p['mode']}' mode at {self.rate:.0f} Hz")

    def _declare_parameters(self) -> dict:
        specs = {
            "mode": ("joy", "joy | keyboard | expert"),
            "rate_hz": (DEFAULT_CONTROL_RATE_HZ, "control rate of the published commands"),
            "axes": ([1, 0, 4, -1, -1, 3], "Joy axis per dx dy dz droll dpitch dyaw (-1 = none)"),
            "signs": ([1.0] * 6, "sign per dimension"),
            "scale": (0.5, "full deflection / one key press -> this normalized translation"),
            "rotation_scale": (0.5, "full deflection -> this normalized rotation"),
            "deadzone": (0.1, "stick values below this are zero"),
            "deadman_button": (4, "Joy button that must be held for motion (-1 = none)"),
            "gripper_close_button": (0, "Joy button that closes the gripper"),
            "gripper_open_button": (1, "Joy button that opens the gripper"),
            "stale_after_s": (0.5, "no Joy message for this long -> zero motion"),
            "task": ("Lift", "sim task (expert mode; instruction default)"),
            "instruction": ("", "instruction for the episodes ('' = the task's default)"),
            "noise": (0.0, "expert action noise sigma"),
            "seed": (0, "expert / first episode seed"),
            "manage_episodes": ("off", "expert: off | self | episode_node (who runs episodes)"),
            "episodes": (1, "expert: episodes to run when managed (0 = forever)"),
            "max_steps": (200, "expert + manage_episodes: steps before giving up"),
            "success_hold_steps": (5, "steps to keep going after the sim reports success"),
            "wait_for_subscribers": (
                1,
                "expert + manage_episodes: start an episode only once this many subscribers "
                "(the arm, the recorder) are matched to both the twist and the gripper topic",
            ),
        }
        values = {}
        for name, (default, text) in specs.items():
            desc = ParameterDescriptor(description=text, read_only=True)
            values[name] = self.declare_parameter(name, default, desc).value
        return values

    # -- publishing ---------------------------------------------------------------------
    def _publish(self, action: np.ndarray) -> None:
        linear, angular, gripper = ee_action_to_twist(np.asarray(action), self.rate)
        msg = TwistStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = BASE_FRAME
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = map(float, linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = map(float, angular)
        self.twist_pub.publish(msg)
        self.gripper_pub.publish(Float64(data=float(gripper)))

    def _tick(self) -> None:
        if self.p["mode"] == "expert":
            self._expert_tick()
            return
        with self._lock:
            action = self.action.copy()
            stale = time.monotonic() - self._action_stamp > self.p["stale_after_s"]
        if stale:  # lost the joystick / no key: hold still, keep the gripper
            action[:6] = 0.0
        self._publish(action)
        if self.p["mode"] == "keyboard":
            with self._lock:
                self.action[:6] = 0.0  # one key press = one step of motion

    def _on_joy(self, msg: Joy) -> None:
        action = self.joy.action(msg.axes, msg.buttons)
        with self._lock:
            self.action, self._action_stamp = action, time.monotonic()

    def _read_keys(self) -> None:
        for line in sys.stdin:  # line-buffered: works in any terminal and under launch
            for ch in line.strip():
                action, command = self.keyboard.key(ch)
                if action is not None:
                    with self._lock:
                        self.action, self._action_stamp = action, time.monotonic()
                if command is not None:
                    self._command(command)

    # -- episodes -----------------------------------------------------------------------
    def _on_event(self, msg: String) -> None:
        try:
            event = json.loads(msg.data)
        except json.JSONDecodeError:
            return
        if event.get("event") != "start":
            return
        self.episode_id = str(event.get("episode_id") or event.get("id") or "")
        if self.p["mode"] == "expert":
            self._seed = int(event.get("seed") or self._seed)
            self._new_expert(self._seed)
            self._steps = self._hold = 0
            self._success = False
            if self._phase in ("requested", "idle"):
                self._phase = "running" if self.p["manage_episodes"] != "off" else "idle"

    def _command(self, command: str) -> None:
        if command == "discard":
            self._event("label", label="discard", labelled_by="operator", reason="discarded")
            return
        if command.startswith("label_"):
            body = {"command": "label", "label": command[6:], "by": "operator"}
        elif command == "start":
            body = {"command": "start", "instruction": self.instruction}
        else:
            body = {"command": command}
        self.command_pub.publish(String(data=json.dumps(body)))

    def _event(self, kind: str, **fields) -> None:
        """Publish an episode event (schema 1 of wmpo_core/runtime/episode.py) ourselves."""
        event = {
            "schema": 1,
            "event": kind,
            "episode_id": self.episode_id,
            "instruction": self.instruction,
            "policy_version": "",
            "task": self.p["task"],
            "seed": int(self._seed),
            "start_stamp": None,
            "stop_stamp": None,
            "label": None,
            "labelled_by": None,
            "reason": "",
            "stamp": time.time(),
            "kind": "demonstration",
        }
        event.update(fields)
        self.event_pub.publish(String(data=json.dumps(event, sort_keys=True)))

    # -- expert -------------------------------------------------------------------------
    def _setup_expert(self) -> None:
        from wmpo_core.sim.experts import make_expert  # robosuite-free; imported on use

        if self.p["manage_episodes"] not in EPISODE_MANAGERS:
            raise ValueError(
                f"manage_episodes must be one of {EPISODE_MANAGERS}, got '{self.p['manage_episodes']}'"
            )
        self._make_expert = make_expert
        self._success = False
        self._steps = self._hold = 0
        self._requested_at = 0.0
        self._new_expert(self._seed)
        self.create_subscription(String, SIM_STATE_TOPIC, self._on_state, 10)
        self.create_subscription(Bool, SIM_SUCCESS_TOPIC, self._on_success, 10)
        self.reset_client = self.create_client(Trigger, SIM_RESET_SERVICE)
        self._phase = "idle" if self.p["manage_episodes"] == "off" else "request"

    def _new_expert(self, seed: int) -> None:
        self.expert = self._make_expert(self.p["task"], self.p["noise"], seed)

    def _on_state(self, msg: String) -> None:
        # Act as soon as a state arrives (the sim publishes one per control step): the
        # command then follows its frame by milliseconds, not by up to a timer period,
        # so ingest pairs every frame with the command computed from it.
        if self._phase not in ("running", "idle"):
            return
        self._publish(np.asarray(self.expert.act(json.loads(msg.data)), dtype=np.float64))
        if self._phase == "running":
            self._steps += 1
            self._hold = self._hold + 1 if self._success else 0
            if self._hold >= self.p["success_hold_steps"] or self._steps >= self.p["max_steps"]:
                self._end_episode()

    def _on_success(self, msg: Bool) -> None:
        self._success = bool(msg.data)

    def _expert_tick(self) -> None:
        if self._phase == "request":
            self._request_episode()
        elif self._phase == "requested" and time.monotonic() - self._requested_at > 30.0:
            self._phase = "request"  # the start never came: ask again

    def _request_episode(self) -> None:
        """Ask for the next episode; it begins when its start event arrives (_on_event)."""
        # Both command topics: DDS matches endpoints topic by topic, so a recorder already
        # on the twists can still miss the first gripper commands.
        matched = min(
            self.twist_pub.get_subscription_count(), self.gripper_pub.get_subscription_count()
        )
        if matched < self.p["wait_for_subscribers"]:
            # A recorder that has not discovered us yet would miss the first commands.
            self.get_logger().info(
                f"waiting for {self.p['wait_for_subscribers']} subscribers on "
                f"{TWIST_COMMAND_TOPIC} and {GRIPPER_COMMAND_TOPIC} (have {matched}): "
                "is the recorder running?",
                throttle_duration_sec=5.0,
            )
            return
        self._requested_at = time.monotonic()
        if self.p["manage_episodes"] == "episode_node":
            self._phase = "requested"
            self._command("start")
            return
        if not self.reset_client.service_is_ready():
            return
        self._phase = "requested"
        future = self.reset_client.call_async(Trigger.Request())
        future.add_done_callback(lambda _f: self._publish_start())

    def _publish_start(self) -> None:
        self.episode_count += 1
        self._seed = int(self.p["seed"]) + self.episode_count - 1
        self.episode_id = f"teleop-{int(time.time())}-{self.episode_count:03d}"
        self._event("start", start_stamp=time.time())

    def _end_episode(self) -> None:
        label = "success" if self._success else "failure"
        if self.p["manage_episodes"] == "episode_node":
            self.episode_count += 1
            body = {"command": "label", "label": label, "by": "sim"}
            self.command_pub.publish(String(data=json.dumps(body)))
        else:
            self._event("stop", stop_stamp=time.time(), reason="expert done")
            self._event("label", label=label, labelled_by="sim")
        self.get_logger().info(f"episode {self.episode_id}: {label} after {self._steps} steps")
        done = self.p["episodes"] and self.episode_count >= self.p["episodes"]
        self._phase = "finished" if done else "request"


def main(args: list[str] | None = None) -> int:
    return run_node(TeleopNode, args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
