"""policy_node: camera(s) + joint states + instruction -> action chunks, inference off the executor.

A lifecycle node (ros2/demos lifecycle_py): configure loads the policy and creates
subscriptions and publishers, activate starts the inference worker thread,
deactivate stops it, cleanup releases the policy. `autostart: true` configures and
activates it at start-up for graphs without a lifecycle manager.

When to infer (`trigger`): 'request' runs one inference per request from the
executor on /wmpo/chunk_request (the executor asks early enough that its queue
never runs dry at the measured latency); 'continuous' runs back-to-back, each time
on the newest observation not yet used. Inference never runs in a ROS callback,
so subscriptions keep flowing while the model thinks. See docs/runtime.md.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Header, String
from trajectory_msgs.msg import JointTrajectory

from wmpo_core.errors import WmpoError
from wmpo_core.images import ImageFormatError, image_fields_to_rgb, resize_rgb
from wmpo_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    CAMERA_TOPIC,
    DEFAULT_CONTROL_RATE_HZ,
    DEFAULT_IMAGE_SIZE,
    DIAGNOSTICS_TOPIC,
    EPISODE_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    POLICY_VERSION_TOPIC,
)
from wmpo_core.policy_api import ChunkPolicy, Observation
from wmpo_core.registry import Registry, resolve_promoted
from wmpo_core.runtime.diagnostics import RollingStats, Throttle
from wmpo_core.runtime.episode import EpisodeError, EpisodeStartFrame, parse_event
from wmpo_core.runtime.hotswap import contract_of, registry_root_of
from wmpo_core.runtime.policies import load_policy
from wmpo_core.runtime.topics import CHUNK_REQUEST_TOPIC, SIM_STATE_TOPIC
from wmpo_core.runtime_monitor import MonitorConfig
from wmpo_nodes.common import run_node
from wmpo_nodes.hotswap import RegistryHotSwapper
from wmpo_nodes.rollback import RollbackWatch
from wmpo_nodes.runtime_msgs import EVENTS_QOS, LATCHED, chunk_to_msg, diagnostic_array, stamp_to_s

TRIGGERS = ("request", "continuous")


def camera_name(topic: str) -> str:
    """'/camera/image_raw' -> 'camera', '/wrist_camera/image_raw' -> 'wrist_camera'."""
    return topic.strip("/").split("/")[0]


class PolicyNode(LifecycleNode):
    def __init__(self):
        super().__init__("policy_node")
        ro = ParameterDescriptor(read_only=True)
        self.declare_parameter(
            "policy",
            "scripted",
            ParameterDescriptor(
                read_only=True, description="'scripted', 'random' or a checkpoint directory"
            ),
        )
        self.declare_parameter(
            "task",
            "Lift",
            ParameterDescriptor(read_only=True, description="sim task (scripted policy only)"),
        )
        self.declare_parameter(
            "chunk_size",
            0,
            ParameterDescriptor(
                read_only=True, description="actions per chunk; 0 = the policy's own"
            ),
        )
        self.declare_parameter("seed", 0, ro)
        self.declare_parameter(
            "temperature",
            0.0,
            ParameterDescriptor(
                read_only=True,
                description="0 = greedy (default); > 0 samples a checkpoint's action tokens at "
                "this temperature, seeded by 'seed' (what GRPO optimised; docs/grpo.md)",
            ),
        )
        self.declare_parameter("device", "cpu", ro)
        self.declare_parameter("camera_topics", [CAMERA_TOPIC], ro)
        self.declare_parameter(
            "image_size",
            DEFAULT_IMAGE_SIZE,
            ParameterDescriptor(
                read_only=True, description="expected square image size; others are refused"
            ),
        )
        self.declare_parameter(
            "resize_images",
            False,
            ParameterDescriptor(
                read_only=True, description="resize other sizes instead of refusing them"
            ),
        )
        self.declare_parameter(
            "max_observation_age_s",
            0.5,
            ParameterDescriptor(description="observations older than this are refused (stale)"),
        )
        self.declare_parameter(
            "trigger",
            "request",
            ParameterDescriptor(
                read_only=True, description="'request' (executor asks) or 'continuous'"
            ),
        )
        self.declare_parameter(
            "action_period_s",
            1.0 / DEFAULT_CONTROL_RATE_HZ,
            ParameterDescriptor(
                read_only=True, description="dt between a chunk's actions (time_from_start = k*dt)"
            ),
        )
        self.declare_parameter(
            "use_privileged_state",
            False,
            ParameterDescriptor(
                read_only=True, description="feed /wmpo/sim/state to the policy (scripted only)"
            ),
        )
        self.declare_parameter(
            "require_images",
            True,
            ParameterDescriptor(
                read_only=True,
                description="false: act on the privileged state alone (state-only sim benchmarks)",
            ),
        )
        self.declare_parameter(
            "require_instruction",
            True,
            ParameterDescriptor(
                read_only=True, description="infer only once an instruction was received"
            ),
        )
        self.declare_parameter(
            "added_latency_s",
            0.0,
            ParameterDescriptor(
                read_only=True, description="extra inference delay (benchmarks/tests only)"
            ),
        )
        self.declare_parameter(
            "autostart",
            False,
            ParameterDescriptor(read_only=True, description="configure + activate at start-up"),
        )
        self.declare_parameter(
            "registry_poll_s",
            1.0,
            ParameterDescriptor(
                read_only=True,
                description="policy 'registry:ROOT': how often to check for a promoted version",
            ),
        )
        self.declare_parameter(
            "auto_rollback",
            True,
            ParameterDescriptor(
                read_only=True,
                description="policy 'registry:ROOT': roll a promoted version back when its real "
                "success drops below the previous version's by a margin or safety "
                "interventions spike (docs/registry.md)",
            ),
        )
        self.declare_parameter(
            "rollback_window_episodes",
            40,
            ParameterDescriptor(read_only=True, description="labelled episodes to judge it on"),
        )
        self.declare_parameter(
            "rollback_min_episodes",
            10,
            ParameterDescriptor(read_only=True, description="no verdict before this many"),
        )
        self.declare_parameter(
            "rollback_success_margin",
            0.15,
            ParameterDescriptor(
                read_only=True, description="rollback below previous success minus this"
            ),
        )
        self.policy: ChunkPolicy | None = None
        self._swapper: RegistryHotSwapper | None = None
        self._rollback: RollbackWatch | None = None
        self._configure_error = ""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._images: dict[str, tuple[np.ndarray, float]] = {}
        self._joints: np.ndarray | None = None
        self._privileged: dict = {}
        self._privileged_stamp = 0.0
        self._require_images = True
        self._instruction = ""
        self._episode_start = -1.0
        self._last_used_stamp = -1.0
        self._reset_policy = False
        main_camera = camera_name(next(iter(self.get_parameter("camera_topics").value), "camera"))
        self._first_frame = EpisodeStartFrame(main_camera)
        self._pending_request = False
        self._throttle = Throttle(2.0)
        self._latency = RollingStats()
        self._obs_to_publish = RollingStats()
        self._refused: dict[str, int] = {"stale": 0, "encoding": 0, "size": 0}
        self._chunks = 0
        self._subs, self._pubs, self._timers = [], [], []
        if self.get_parameter("autostart").value:
            self.trigger_configure()
            if self.policy is None:
                # No lifecycle manager would retry: exit so the supervisor reports it.
                raise WmpoError(self._configure_error or "policy_node: configure failed")
            self.trigger_activate()

    # --- lifecycle -----------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = {
            n: self.get_parameter(n).value
            for n in (
                "policy",
                "task",
                "chunk_size",
                "seed",
                "temperature",
                "device",
                "trigger",
                "added_latency_s",
            )
        }
        if p["trigger"] not in TRIGGERS:
            self._configure_error = (
                f"policy_node: trigger must be one of {TRIGGERS}, got '{p['trigger']}'"
            )
            self.get_logger().error(self._configure_error)
            return TransitionCallbackReturn.FAILURE
        registry = registry_root_of(p["policy"])
        try:
            if registry is not None:
                # Only verified registry versions run (manifest hashes, safetensors only).
                version = Registry(registry).promoted()
                spec = str(resolve_promoted(registry))
            else:
                spec = p["policy"]
            self.policy = load_policy(
                spec,
                task=p["task"],
                chunk_size=p["chunk_size"],
                seed=p["seed"],
                device=p["device"],
                delay_s=p["added_latency_s"],
                temperature=p["temperature"],
            )
            if registry is not None:
                self.policy.version = version
        except WmpoError as exc:
            self._configure_error = f"policy_node: {exc}"
            self.get_logger().error(str(exc))
            return TransitionCallbackReturn.FAILURE
        self._continuous = p["trigger"] == "continuous"
        self._image_size = self.get_parameter("image_size").value
        self._resize = self.get_parameter("resize_images").value
        self._dt = self.get_parameter("action_period_s").value
        self._use_privileged = self.get_parameter("use_privileged_state").value
        self._require_images = self.get_parameter("require_images").value
        self._chunk_pub = self.create_publisher(JointTrajectory, ACTION_CHUNK_TOPIC, 10)
        self._version_pub = self.create_publisher(String, POLICY_VERSION_TOPIC, LATCHED)
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._pubs = [self._chunk_pub, self._version_pub, self._diag_pub]
        for topic in self.get_parameter("camera_topics").value:
            self._subs.append(
                self.create_subscription(
                    Image, topic, lambda m, t=topic: self._on_image(t, m), qos_profile_sensor_data
                )
            )
        self._subs += [
            self.create_subscription(JointState, JOINT_STATES_TOPIC, self._on_joints, 10),
            self.create_subscription(String, INSTRUCTION_TOPIC, self._on_instruction, LATCHED),
            self.create_subscription(String, EPISODE_TOPIC, self._on_episode, EVENTS_QOS),
            self.create_subscription(Header, CHUNK_REQUEST_TOPIC, self._on_request, 10),
        ]
        if self.get_parameter("use_privileged_state").value:
            self._subs.append(
                self.create_subscription(String, SIM_STATE_TOPIC, self._on_sim_state, 10)
            )
        self._timers.append(self.create_timer(1.0, self._publish_diagnostics))
        self._version_pub.publish(String(data=self.policy.version))
        if registry is not None:
            self._start_swapper(registry, p)
            if self.get_parameter("auto_rollback").value:
                try:
                    self._start_rollback_watch(registry)
                except WmpoError as exc:
                    self._configure_error = f"policy_node: {exc}"
                    self.get_logger().error(self._configure_error)
                    return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"policy '{self.policy.version}' loaded: chunk {self.policy.chunk_size} x "
            f"{len(self.policy.action_names)}, trigger '{p['trigger']}'"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="inference", daemon=True)
        self._worker.start()
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_worker()
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        self._stop_worker()

    def _stop_worker(self) -> None:
        if self._swapper is not None:
            self._swapper.stop()
            self._swapper = None
        if self._rollback is not None:
            self._rollback.stop()
            self._rollback = None
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
            self._worker = None

    def _release(self) -> None:
        for s in self._subs:
            self.destroy_subscription(s)
        for t in self._timers:
            self.destroy_timer(t)
        for pub in self._pubs:
            self.destroy_publisher(pub)
        self._subs, self._timers, self._pubs = [], [], []
        self.policy = None

    # --- inputs --------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _refuse(self, kind: str, topic: str, text: str) -> None:
        self._refused[kind] += 1
        if self._throttle.allow(f"{kind}:{topic}", time.monotonic()):
            self.get_logger().error(f"{topic}: {text}")

    def _on_image(self, topic: str, msg: Image) -> None:
        try:
            rgb = image_fields_to_rgb(
                msg.height, msg.width, msg.encoding, msg.step, msg.data, topic
            )
        except ImageFormatError as exc:
            self._refuse("encoding", topic, str(exc).split(": ", 1)[-1])
            return
        size = self._image_size
        if rgb.shape[:2] != (size, size):
            if not self._resize or rgb.shape[0] != rgb.shape[1]:
                self._refuse(
                    "size",
                    topic,
                    (
                        f"image is {msg.width}x{msg.height}, expected {size}x{size} "
                        "(set image_size, or resize_images: true for square images)"
                    ),
                )
                return
            rgb = resize_rgb(rgb, size)
        with self._lock:
            self._images[camera_name(topic)] = (rgb, stamp_to_s(msg.header.stamp))
        if self._continuous or self._pending_request:
            self._wake.set()

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._joints = np.asarray(msg.position, dtype=np.float32)

    def _on_sim_state(self, msg: String) -> None:
        try:
            state = json.loads(msg.data)
        except json.JSONDecodeError:
            self._refuse("encoding", SIM_STATE_TOPIC, "not JSON")
            return
        with self._lock:
            self._privileged = state
            self._privileged_stamp = self._now()
        if not self._require_images and (self._continuous or self._pending_request):
            self._wake.set()

    def _on_instruction(self, msg: String) -> None:
        with self._lock:
            self._instruction = msg.data

    def _on_episode(self, msg: String) -> None:
        try:
            event = parse_event(msg.data)
        except EpisodeError as exc:
            self.get_logger().error(str(exc))
            return
        if self._rollback is not None:
            self._rollback.on_event(event)
        if event.event == "start":
            with self._lock:
                # Frames from before the start show the previous scene: never act on them.
                self._episode_start = event.start_stamp or event.stamp
                self._images.clear()
                self._first_frame.reset()
                self._privileged = {}
                self._instruction = event.instruction or self._instruction
                self._reset_policy = True

    def _on_request(self, msg: Header) -> None:
        # Stays pending until served: a request that finds no usable observation is retried
        # on the next frame instead of being lost.
        self._pending_request = True
        self._wake.set()

    # --- inference -------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(timeout=0.2) or self._stop.is_set():
                continue
            self._wake.clear()
            obs = self._take_observation()
            if obs is None:
                continue
            self._pending_request = False
            try:
                self._infer(obs)
            except WmpoError as exc:
                if self._throttle.allow("infer", time.monotonic()):
                    self.get_logger().error(str(exc))
            if self._continuous:
                self._wake.set()  # back-to-back: the next newest observation

    def _take_observation(self) -> Observation | None:
        max_age = self.get_parameter("max_observation_age_s").value
        with self._lock:
            if self.get_parameter("require_instruction").value and not self._instruction:
                return None
            if self._images:
                stamp = min(s for _, s in self._images.values())
            elif not self._require_images and self._privileged:
                stamp = self._privileged_stamp  # state-only sim (benchmarks): receive time
            else:
                return None
            if stamp < self._episode_start:
                return None
            if self._continuous and stamp <= self._last_used_stamp:
                return None
            if self._use_privileged and not self._privileged:
                return None  # the sim's state for this episode has not arrived yet
            age = self._now() - stamp
            if age > max_age:
                topic = next(iter(self.get_parameter("camera_topics").value))
                self._images.clear()  # refuse each stale frame once
                self._refuse(
                    "stale",
                    topic,
                    (
                        f"observation is {age:.2f} s old (max_observation_age_s {max_age}); "
                        "is the camera publishing, and are clocks in sync (use_sim_time)?"
                    ),
                )
                return None
            if self._reset_policy and self.policy is not None:
                self.policy.reset()
                self._reset_policy = False
            self._last_used_stamp = stamp
            obs = Observation(
                # Plus the episode's first frame, for a policy that reads it.
                images=self._first_frame.add_to({k: v[0] for k, v in self._images.items()}),
                instruction=self._instruction,
                proprio=None if self._joints is None else self._joints.copy(),
                stamp=stamp,
                privileged=dict(self._privileged),
            )
        if self._swapper is not None:
            self._swapper.remember(obs)
        return obs

    def _infer(self, obs: Observation) -> None:
        policy = self.policy
        if policy is None:
            return
        t0 = time.monotonic()
        chunk = np.asarray(policy.predict_chunk(obs))
        self._latency.add(time.monotonic() - t0)
        if policy is not self.policy:
            return  # swapped while inferring: never publish the old policy's chunk after it
        expected = (policy.chunk_size, len(policy.action_names))
        if chunk.shape != expected:
            raise WmpoError(
                f"policy '{policy.version}' returned {chunk.shape}, expected {expected}"
            )
        self._chunk_pub.publish(chunk_to_msg(chunk, policy.action_names, obs.stamp, self._dt))
        self._obs_to_publish.add(self._now() - obs.stamp)
        self._chunks += 1

    # --- hot-swap ----------------------------------------------------------------
    def _start_swapper(self, registry: Path, p: dict) -> None:
        def load(path: Path) -> ChunkPolicy:
            return load_policy(
                str(path),
                task=p["task"],
                chunk_size=p["chunk_size"],
                seed=p["seed"],
                device=p["device"],
                delay_s=p["added_latency_s"],
                temperature=p["temperature"],
            )

        self._swapper = RegistryHotSwapper(
            registry,
            self.policy.version,
            load,
            contract_of(self.policy, self._image_size),
            self._install,
            self.get_logger().info,
            self.get_logger().error,
            poll_s=self.get_parameter("registry_poll_s").value,
        )
        self._swapper.start()

    def _start_rollback_watch(self, registry: Path) -> None:
        config = MonitorConfig(
            window_episodes=self.get_parameter("rollback_window_episodes").value,
            min_episodes=self.get_parameter("rollback_min_episodes").value,
            success_margin=self.get_parameter("rollback_success_margin").value,
        )
        self._rollback = RollbackWatch(self, registry, config)
        self._subs += self._rollback.subscriptions

    def _install(self, candidate: ChunkPolicy) -> None:
        """Swap between chunks: inference takes the lock, so no chunk mixes two policies."""
        with self._lock:
            self.policy = candidate
            self._reset_policy = True
        # The executor drops its queued actions when the version changes.
        self._version_pub.publish(String(data=candidate.version))

    def _publish_diagnostics(self) -> None:
        values = {
            "policy_version": self.policy.version if self.policy else "",
            "chunks": str(self._chunks),
        }
        if self._swapper is not None:
            values["hot_swaps"] = str(self._swapper.swaps)
            values["hot_swap_refusals"] = str(self._swapper.refusals)
            values["hot_swap_last_error"] = self._swapper.last_error
        values.update(self._latency.summary("inference_latency"))
        values.update(self._obs_to_publish.summary("observation_to_chunk"))
        values.update({f"refused_{k}": str(v) for k, v in self._refused.items()})
        message = "active" if self._worker is not None else "inactive"
        self._diag_pub.publish(diagnostic_array(self, "wmpo/policy_node", message, values))


def main(args: list[str] | None = None) -> int:
    try:
        return run_node(PolicyNode, args)
    except WmpoError as exc:
        print(f"wmpo_policy_node: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
