"""recorder_node: every episode on the configured topics -> one rosbag2 (MCAP) directory.

Thin: raw subscriptions (serialized CDR bytes, no deserialize/serialize) hand
bytes to wmpo_core.bags.recorder.EpisodeRecorder, which writes on its own
thread. The episode topic drives start/stop. Middleware message-lost events are
counted per topic; the recorder's state goes out on /diagnostics at 1 Hz.
Parameters come from launch/config/recorder.yaml; see docs/data.md.
"""

from __future__ import annotations

import importlib
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from wmpo_core.bags.recorder import QOS_PRESETS, EpisodeRecorder, RecordedTopic, RecorderConfig
from wmpo_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    CAMERA_TOPIC,
    DIAGNOSTICS_TOPIC,
    EPISODE_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    POLICY_VERSION_TOPIC,
    TWIST_COMMAND_TOPIC,
)
from wmpo_nodes.common import run_node

DEFAULT_TOPICS = [
    f"{CAMERA_TOPIC} sensor_msgs/msg/Image sensor_data",
    f"{JOINT_STATES_TOPIC} sensor_msgs/msg/JointState reliable",
    f"{TWIST_COMMAND_TOPIC} geometry_msgs/msg/TwistStamped reliable",
    f"{GRIPPER_COMMAND_TOPIC} std_msgs/msg/Float64 reliable",
    f"{ACTION_CHUNK_TOPIC} trajectory_msgs/msg/JointTrajectory reliable",
    f"{INSTRUCTION_TOPIC} std_msgs/msg/String latched",
    f"{POLICY_VERSION_TOPIC} std_msgs/msg/String latched",
    f"{EPISODE_TOPIC} std_msgs/msg/String latched",
]


def rclpy_qos(preset: str) -> QoSProfile:
    reliability, durability, depth = QOS_PRESETS[preset]
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy[reliability.upper()],
        durability=DurabilityPolicy[durability.upper()],
    )


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image."""
    pkg, sub, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{sub}"), name)


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("recorder")
        p = self._declare_parameters()
        topics = [RecordedTopic.parse(s) for s in p["topics"]]
        self.config = RecorderConfig(
            output_dir=p["output_dir"],
            topics=topics,
            source=p["source"],
            robot=p["robot"],
            max_split_bytes=int(p["max_split_mb"] * 1024 * 1024),
            max_split_duration_s=p["max_split_duration_s"],
            flush_interval_s=p["flush_interval_s"],
            min_free_bytes=int(p["min_free_mb"] * 1024 * 1024),
            max_queue_bytes=int(p["max_queue_mb"] * 1024 * 1024),
            discard_action=p["discard_action"],
            preroll_s=p["preroll_s"],
            postroll_s=p["postroll_s"],
        )
        self.recorder = EpisodeRecorder(self.config, log=self._log)
        self._subs = [self._subscribe(t) for t in self.config.topics]
        self._diag = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"recording {len(self._subs)} topics per episode into {self.config.output_dir}"
        )

    def _declare_parameters(self) -> dict:
        ro = ParameterDescriptor(read_only=True)
        specs = {
            "output_dir": ("bags", "directory receiving one bag per episode"),
            "topics": (DEFAULT_TOPICS, "'NAME TYPE [sensor_data|reliable|latched] [seq=json:KEY]'"),
            "source": ("sim", "'sim' or 'robot' (written into every sidecar)"),
            "robot": ("", "robot / sim name for the sidecar"),
            "max_split_mb": (512.0, "start a new bag file after this many MB (0 = never)"),
            "max_split_duration_s": (300.0, "start a new bag file after this long (0 = never)"),
            "flush_interval_s": (1.0, "longest time recorded data stays in memory"),
            "min_free_mb": (2048.0, "disk guard: stop recording below this much free space"),
            "max_queue_mb": (256.0, "write-queue bound; beyond it messages are dropped, counted"),
            "discard_action": ("mark", "on discard: 'mark' the sidecar or 'delete' the bag"),
            "preroll_s": (1.0, "keep data sent after a start's stamp but handled before it"),
            "postroll_s": (1.0, "after a stop, keep the bag open this long for late data"),
        }
        values = {}
        for name, (default, text) in specs.items():
            desc = ParameterDescriptor(description=text, read_only=ro.read_only)
            if isinstance(default, list):
                desc.type = ParameterType.PARAMETER_STRING_ARRAY
            values[name] = self.declare_parameter(name, default, desc).value
        return values

    def _subscribe(self, topic: RecordedTopic):
        cls = message_class(topic.msgtype)
        events = SubscriptionEventCallbacks(
            message_lost=lambda info, name=topic.name: self.recorder.count_lost(
                name, int(info.total_count_change)
            ),
            incompatible_qos=lambda _info, name=topic.name: self.get_logger().error(
                f"{name}: a publisher's QoS is incompatible with '{topic.qos}'; "
                "set the topic's QoS in recorder.yaml to match it"
            ),
        )
        if topic.name == self.config.episode_topic:
            callback = self._on_event
        else:

            def callback(data: bytes, info: dict, name: str = topic.name) -> None:
                # Two parameters: rclpy then passes the middleware's MessageInfo. Its
                # source timestamp places a late-delivered message before or after a stop.
                recv = int(info.get("received_timestamp") or 0) or time.time_ns()
                self.recorder.submit(name, data, recv, int(info.get("source_timestamp") or 0))

        return self.create_subscription(
            cls, topic.name, callback, rclpy_qos(topic.qos), raw=True, event_callbacks=events
        )

    def _on_event(self, data: bytes) -> None:
        self.recorder.submit_event(data, time.time_ns())

    def _log(self, level: str, text: str) -> None:
        logger = self.get_logger()
        {"info": logger.info, "warn": logger.warning, "error": logger.error}[level](text)

    def _publish_diagnostics(self) -> None:
        s = self.recorder.status()
        missing = sum(s["lost"].values()) + sum(s["queue_dropped"].values())
        missing += sum(s["seq_gaps"].values())
        if s["state"] in ("disk_full", "error"):
            level, text = DiagnosticStatus.ERROR, s["last_error"]
        elif missing:
            level, text = DiagnosticStatus.WARN, f"{missing} messages lost"
        else:
            level, text = DiagnosticStatus.OK, s["state"]
        status = DiagnosticStatus(level=level, name="wmpo recorder", message=text)
        status.hardware_id = self.config.robot or self.config.source
        # A camera that never connected records nothing: say which topics have no publisher.
        s["topics_without_publisher"] = [
            sub.topic_name for sub in self._subs if sub.get_publisher_count() == 0
        ]
        status.values = [KeyValue(key=k, value=str(v)) for k, v in s.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag.publish(msg)

    def close(self) -> None:
        """Called by run_node on shutdown: drain the queue and close an open bag."""
        self.recorder.close()


def main(args: list[str] | None = None) -> int:
    return run_node(RecorderNode, args, threads=2)


if __name__ == "__main__":
    raise SystemExit(main())
