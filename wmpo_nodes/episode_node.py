"""episode_node: starts, stops, resets and labels episodes; publishes their JSON events.

Control (std_srvs has no string service, so two equivalent ways):
- std_srvs/Trigger services /wmpo/episode/{start,stop,reset,label_success,label_failure};
  start uses the `instruction` parameter (set it first, or leave the task's default).
- a JSON command topic /wmpo/episode/command (std_msgs/String), e.g.
  {"command": "start", "instruction": "lift the red cube"}, {"command": "label",
  "label": "success", "by": "operator"}.

Each transition is one event on /wmpo/episode (schema in wmpo_core.runtime.episode).
Starting an episode publishes its instruction on /wmpo/instruction (latched); with
`reset_sim_on_start` it first resets the embedded sim through its Trigger service.
With `label_from_sim` the sim's privileged success flag labels the episode
(labelled_by 'sim'; evaluation only) and a timeout labels it a failure.
"""

from __future__ import annotations

import re
import sys
import threading

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import (
    EPISODE_TOPIC,
    INSTRUCTION_TOPIC,
    POLICY_VERSION_TOPIC,
    SIM_RESET_SERVICE,
    SIM_SUCCESS_TOPIC,
    TASK_INSTRUCTIONS,
)
from wmpo_core.runtime.episode import EpisodeError, EpisodeEvent, EpisodeTracker, parse_command
from wmpo_core.runtime.topics import (
    EPISODE_COMMAND_TOPIC,
    EPISODE_LABEL_FAILURE_SERVICE,
    EPISODE_LABEL_SUCCESS_SERVICE,
    EPISODE_RESET_SERVICE,
    EPISODE_START_SERVICE,
    EPISODE_STOP_SERVICE,
)
from wmpo_nodes.common import run_node
from wmpo_nodes.runtime_msgs import EVENTS_QOS, LATCHED


def _desc(text: str, read_only: bool = True) -> ParameterDescriptor:
    return ParameterDescriptor(read_only=read_only, description=text)


class EpisodeNode(Node):
    def __init__(self):
        super().__init__("episode_node")
        d = self.declare_parameter
        d("task", "Lift", _desc("task name written into every event"))
        d("seed", 0, _desc("seed written into every event"))
        d("instruction", "", _desc("instruction for the start service ('' = task default)", False))
        d("max_duration_s", 60.0, _desc("stop a running episode after this long (0 = never)"))
        d("reset_sim_on_start", False, _desc("reset the sim (Trigger service) before a start"))
        d("sim_reset_timeout_s", 15.0, _desc("how long to wait for the sim reset"))
        d("label_from_sim", False, _desc("label from /wmpo/sim/success (evaluation only)"))
        p = {n: self.get_parameter(n).value for n in ("task", "seed", "max_duration_s")}
        self.tracker = EpisodeTracker(p["task"], p["seed"], p["max_duration_s"])
        self._lock = threading.Lock()
        group = ReentrantCallbackGroup()  # the sim reset is awaited inside a service callback
        self._events = self.create_publisher(String, EPISODE_TOPIC, EVENTS_QOS)
        self._instruction = self.create_publisher(String, INSTRUCTION_TOPIC, LATCHED)
        self._sim_reset = self.create_client(Trigger, SIM_RESET_SERVICE, callback_group=group)
        self.create_subscription(String, POLICY_VERSION_TOPIC, self._on_version, LATCHED)
        self.create_subscription(
            String, EPISODE_COMMAND_TOPIC, self._on_command, 10, callback_group=group
        )
        if self.get_parameter("label_from_sim").value:
            self.create_subscription(Bool, SIM_SUCCESS_TOPIC, self._on_sim_success, 10)
        services = {
            EPISODE_START_SERVICE: lambda: self.start(self._default_instruction()),
            EPISODE_STOP_SERVICE: lambda: self.stop(),
            EPISODE_RESET_SERVICE: lambda: self.reset(),
            EPISODE_LABEL_SUCCESS_SERVICE: lambda: self.label("success", "operator"),
            EPISODE_LABEL_FAILURE_SERVICE: lambda: self.label("failure", "operator"),
        }
        for name, action in services.items():
            self.create_service(
                Trigger, name, lambda req, res, a=action: self._serve(a, res), callback_group=group
            )
        self.create_timer(0.1, self._check_timeout)

    # --- transitions -----------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _default_instruction(self) -> str:
        text = self.get_parameter("instruction").value
        return text or TASK_INSTRUCTIONS.get(self.tracker.task, "")

    def start(self, instruction: str) -> str:
        if self.get_parameter("reset_sim_on_start").value:
            self._reset_sim()
        with self._lock:
            event = self.tracker.start(instruction, self._now())
            self._instruction.publish(String(data=instruction))
            self._publish(event)
        return f"started {event.episode_id}: {instruction}"

    def stop(self) -> str:
        with self._lock:
            event = self.tracker.stop(self._now())
            self._publish(event)
        return f"stopped {event.episode_id}"

    def label(self, label: str, by: str) -> str:
        with self._lock:
            for event in self.tracker.label_episode(label, by, self._now()):
                self._publish(event)
        return f"labelled {self.tracker.episode_id} {label} (by {by})"

    def reset(self) -> str:
        with self._lock:
            self._publish(self.tracker.reset(self._now()))
        sim = self._reset_sim() if self._sim_reset.service_is_ready() else "no sim"
        return f"reset ({sim})"

    def _reset_sim(self) -> str:
        timeout = self.get_parameter("sim_reset_timeout_s").value
        if not self._sim_reset.wait_for_service(timeout_sec=timeout):
            raise EpisodeError(f"{SIM_RESET_SERVICE}: sim reset service not available")
        done = threading.Event()
        future = self._sim_reset.call_async(Trigger.Request())
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise EpisodeError(f"{SIM_RESET_SERVICE}: no answer within {timeout} s")
        result = future.result()
        if not result.success:
            raise EpisodeError(f"{SIM_RESET_SERVICE}: sim refused the reset: {result.message}")
        # sim_node answers "reset TASK with seed N": the events then carry the seed of the
        # scene this episode really starts from (stores and evaluations key on it).
        found = re.search(r"with seed (-?\d+)", result.message)
        if found:
            with self._lock:
                self.tracker.seed = int(found.group(1))
        return "sim reset"

    def _publish(self, event: EpisodeEvent) -> None:
        self._events.publish(String(data=event.to_json()))
        self.get_logger().info(
            f"episode {event.episode_id}: {event.event}"
            + (f" ({event.reason})" if event.reason else "")
            + (f" label={event.label} by {event.labelled_by}" if event.event == "label" else "")
        )

    # --- inputs ----------------------------------------------------------------
    def _serve(self, action, response):
        try:
            response.message = action()
            response.success = True
        except EpisodeError as exc:
            response.success, response.message = False, str(exc)
        return response

    def _on_command(self, msg: String) -> None:
        try:
            command, args = parse_command(msg.data)
            if command == "start":
                self.start(str(args.get("instruction") or self._default_instruction()))
            elif command == "stop":
                self.stop()
            elif command == "reset":
                self.reset()
            else:
                self.label(str(args.get("label", "")), str(args.get("by", "operator")))
        except EpisodeError as exc:
            self.get_logger().error(str(exc))

    def _on_version(self, msg: String) -> None:
        self.tracker.policy_version = msg.data

    def _on_sim_success(self, msg: Bool) -> None:
        if msg.data and self.tracker.state == "running":
            try:
                self.label("success", "sim")
            except EpisodeError as exc:
                self.get_logger().error(str(exc))

    def _check_timeout(self) -> None:
        with self._lock:
            event = self.tracker.check_timeout(self._now())
            if event is None:
                return
            self._publish(event)
            if self.get_parameter("label_from_sim").value:
                for e in self.tracker.label_episode("failure", "timeout", self._now()):
                    self._publish(e)


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(EpisodeNode, args, threads=3)
    except WmpoError as exc:
        print(f"wmpo_episode_node: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
