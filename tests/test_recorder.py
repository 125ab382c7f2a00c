"""recorder_node over real loopback DDS: record, read back (rosbags AND rclpy), SIGKILL + repair,
the disk guard, /diagnostics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosutil import NodeProcess, wait_for

from wmpo_core.bags.metadata import read_sidecar
from wmpo_core.bags.reader import iter_messages
from wmpo_core.bags.verify import check_bag
from wmpo_core.cli import main as wmpo_main
from wmpo_core.interfaces import (
    CAMERA_TOPIC,
    DIAGNOSTICS_TOPIC,
    EPISODE_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    INSTRUCTION_TOPIC,
    JOINT_STATES_TOPIC,
    TWIST_COMMAND_TOPIC,
)

pytestmark = pytest.mark.ros

TOPICS = [
    f"{CAMERA_TOPIC} sensor_msgs/msg/Image sensor_data",
    f"{JOINT_STATES_TOPIC} sensor_msgs/msg/JointState reliable",
    f"{TWIST_COMMAND_TOPIC} geometry_msgs/msg/TwistStamped reliable",
    f"{GRIPPER_COMMAND_TOPIC} std_msgs/msg/Float64 reliable",
    f"{INSTRUCTION_TOPIC} std_msgs/msg/String latched",
    f"{EPISODE_TOPIC} std_msgs/msg/String latched",
]


def start_recorder(tmp_path: Path, **params) -> tuple[NodeProcess, Path]:
    out = tmp_path / "bags"
    values = {"output_dir": str(out), "topics": TOPICS, "min_free_mb": 0.0}
    values |= {"flush_interval_s": 0.2} | params
    cfg = tmp_path / "recorder.yaml"
    cfg.write_text(yaml.safe_dump({"recorder": {"ros__parameters": values}}))
    proc = NodeProcess("wmpo_recorder_node", ["--params-file", str(cfg)], log=tmp_path / "rec.log")
    return proc.start(), out


def sim_and_expert_teleop(
    tmp_path: Path, image_size: int, max_steps: int
) -> tuple[NodeProcess, NodeProcess]:
    """sim_node + teleop_node running one scripted-expert Lift episode of its own (seed 5),
    started only once 2 subscribers (the arm and one more) are matched; not started yet."""
    sim_cfg = tmp_path / "sim.yaml"
    sim_params = {"image_size": image_size, "seed": 5}
    sim_cfg.write_text(yaml.safe_dump({"sim_node": {"ros__parameters": sim_params}}))
    teleop_params = {"mode": "expert", "manage_episodes": "self", "episodes": 1, "seed": 5}
    teleop_params |= {"max_steps": max_steps, "task": "Lift", "wait_for_subscribers": 2}
    teleop_cfg = tmp_path / "teleop.yaml"
    teleop_cfg.write_text(yaml.safe_dump({"teleop": {"ros__parameters": teleop_params}}))
    sim = NodeProcess("wmpo_sim_node", ["--params-file", str(sim_cfg)], log=tmp_path / "sim.log")
    teleop = NodeProcess(
        "wmpo_teleop_node", ["--params-file", str(teleop_cfg)], log=tmp_path / "teleop.log"
    )
    return sim, teleop


class Publisher:
    """The test's side of the graph: every publisher the recorder listens to."""

    def __init__(self, context):
        import rclpy
        from geometry_msgs.msg import TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (
            DurabilityPolicy,
            QoSProfile,
            ReliabilityPolicy,
            qos_profile_sensor_data,
        )
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float64, String

        latched = QoSProfile(
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.node = rclpy.create_node("test_publisher", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        n = self.node
        self.pubs = {
            CAMERA_TOPIC: n.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data),
            JOINT_STATES_TOPIC: n.create_publisher(JointState, JOINT_STATES_TOPIC, 100),
            TWIST_COMMAND_TOPIC: n.create_publisher(TwistStamped, TWIST_COMMAND_TOPIC, 100),
            GRIPPER_COMMAND_TOPIC: n.create_publisher(Float64, GRIPPER_COMMAND_TOPIC, 100),
            INSTRUCTION_TOPIC: n.create_publisher(String, INSTRUCTION_TOPIC, latched),
            EPISODE_TOPIC: n.create_publisher(String, EPISODE_TOPIC, latched),
        }
        self.diagnostics: list = []
        from diagnostic_msgs.msg import DiagnosticArray

        n.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self.diagnostics.append, 10)
        self.sent: dict[str, list] = {t: [] for t in self.pubs}

    def wait_matched(self, timeout: float = 20.0) -> None:
        ok = wait_for(
            self.executor,
            lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values()),
            timeout,
        )
        assert ok, "the recorder never subscribed to every topic"
        # Both sides must have matched: a best-effort reader drops samples from a writer it
        # has not discovered yet (the first camera frames went missing on a loaded machine).
        ok = wait_for(
            self.executor,
            lambda: self._recorder_sees_publishers(set(self.pubs)),
            timeout,
        )
        assert ok, f"the recorder never matched these publishers: {self.diagnostics[-1:]}"

    def _recorder_sees_publishers(self, topics: set[str]) -> bool:
        import ast

        if not self.diagnostics:
            return False
        values = {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values}
        if "topics_without_publisher" not in values:
            return False
        return not set(ast.literal_eval(values["topics_without_publisher"])) & topics

    def publish(self, topic: str, msg) -> None:
        self.pubs[topic].publish(msg)
        self.sent[topic].append(msg)

    def event(self, kind: str, eid: str, **extra) -> None:
        from std_msgs.msg import String

        body = {"schema": 1, "event": kind, "episode_id": eid, "task": "Lift", "seed": 7}
        body |= {"instruction": "lift the red cube", "policy_version": "v3", "stamp": time.time()}
        self.publish(EPISODE_TOPIC, String(data=json.dumps(body | extra)))

    def close(self) -> None:
        self.executor.remove_node(self.node)
        self.node.destroy_node()


def image(i: int, size: int = 64):
    from sensor_msgs.msg import Image

    data = (np.arange(size * size * 3, dtype=np.uint32) * (i + 1) % 251).astype(np.uint8)
    msg = Image(height=size, width=size, encoding="rgb8", step=size * 3, data=data.tobytes())
    msg.header.frame_id = "camera"
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + i, 7
    return msg


def joint_state(i: int):
    from sensor_msgs.msg import JointState

    return JointState(name=[f"j{k}" for k in range(7)], position=[i + k / 10 for k in range(7)])


def twist(i: int):
    from geometry_msgs.msg import TwistStamped

    msg = TwistStamped()
    msg.header.frame_id = "base_link"
    msg.twist.linear.x, msg.twist.angular.z = 0.01 * i, -0.02 * i
    return msg


def wait_closed(bag: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        side = read_sidecar(bag) if bag.is_dir() else None
        if side is not None and side.status != "recording":
            return
        time.sleep(0.05)
    raise AssertionError(f"{bag} was not closed within {timeout} s")


RECORDED_STREAMS = (CAMERA_TOPIC, JOINT_STATES_TOPIC, TWIST_COMMAND_TOPIC, GRIPPER_COMMAND_TOPIC)


def test_record_episode_read_back_with_rosbags_and_rclpy(tmp_path, ros_context):
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import Float64, String

    from wmpo_nodes.recorder_node import message_class

    rec, out = start_recorder(tmp_path)
    pub = Publisher(ros_context)
    try:
        pub.wait_matched()
        pub.publish(INSTRUCTION_TOPIC, String(data="lift the red cube"))
        pub.event("start", "ep-a")
        wait_for(pub.executor, lambda: (out / "ep-a").is_dir(), 10)
        for i in range(20):
            pub.publish(CAMERA_TOPIC, image(i))
            for k in range(2):
                pub.publish(JOINT_STATES_TOPIC, joint_state(2 * i + k))
            pub.publish(TWIST_COMMAND_TOPIC, twist(i))
            pub.publish(GRIPPER_COMMAND_TOPIC, Float64(data=float(i % 2)))
            pub.executor.spin_once(timeout_sec=0.02)
        # Topics are delivered independently: let the last messages arrive before the stop
        # event (the recorder closes the bag at the stop; later messages are not in it). Wait
        # on the recorder's own written counts: a fixed 0.5 s lost frames on a loaded CPU.
        # (A frame that never arrives fails the equality check below, as it should.)
        wait_for(
            pub.executor,
            lambda: all(_written(pub, t) >= len(pub.sent[t]) for t in RECORDED_STREAMS),
            15,
        )
        pub.event("stop", "ep-a")
        bag = out / "ep-a"
        wait_closed(bag)
        wait_for(pub.executor, lambda: len(pub.diagnostics) > 0, 5)
        hashes = {
            t: str(pub.node.get_publishers_info_by_topic(t)[0].topic_type_hash) for t in pub.pubs
        }
    finally:
        pub.close()
        rec.stop()
    assert check_bag(bag, deep=True).healthy
    side = read_sidecar(bag)
    assert side.status == "complete" and side.policy_version == "v3" and side.seed == 7
    assert side.total_lost == 0, f"messages lost: {side.lost} {side.seq_gaps}"
    got: dict[str, list] = {}
    for m in iter_messages(bag):
        # rclpy reads the bytes rosbags wrote, exactly as they came off the wire.
        got.setdefault(m.topic, []).append(deserialize_message(m.data, message_class(m.msgtype)))
    for topic in RECORDED_STREAMS:
        assert got[topic] == pub.sent[topic], f"{topic}: recorded messages differ from sent"
    assert [json.loads(e.data)["event"] for e in got[EPISODE_TOPIC]] == ["start", "stop"]
    assert got[INSTRUCTION_TOPIC] == [String(data="lift the red cube")]
    # The same bag through rosbags' own deserializer.
    from wmpo_core.bags.reader import deserialize

    frames = [deserialize(m) for m in iter_messages(bag, [CAMERA_TOPIC])]
    assert [bytes(f.data) for f in frames] == [bytes(m.data) for m in pub.sent[CAMERA_TOPIC]]
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    for entry in meta["topics_with_message_count"]:
        name = entry["topic_metadata"]["name"]
        assert entry["topic_metadata"]["type_description_hash"] == hashes[name]
    status = pub.diagnostics[-1].status[0]
    assert status.name == "wmpo recorder" and status.level == b"\x00"


def _written(pub: Publisher, topic: str) -> int:
    """Messages of `topic` the recorder says it wrote in the current episode, from its latest
    /diagnostics (0 before any)."""
    import ast

    for msg in reversed(pub.diagnostics):
        for kv in msg.status[0].values:
            if kv.key == "episode_topic_messages":
                return int(ast.literal_eval(kv.value).get(topic, 0))
    return 0


def _joint_states_written(pub: Publisher) -> int:
    return _written(pub, JOINT_STATES_TOPIC)


def test_sigkill_mid_episode_then_verify_and_repair(tmp_path, ros_context, capsys):
    rec, out = start_recorder(tmp_path, flush_interval_s=0.2)
    pub = Publisher(ros_context)
    try:
        pub.wait_matched()
        pub.event("start", "ep-k")
        wait_for(pub.executor, lambda: (out / "ep-k").is_dir(), 10)
        for i in range(40):
            pub.publish(JOINT_STATES_TOPIC, joint_state(i))
            pub.executor.spin_once(timeout_sec=0.01)
        # All 40 written (the recorder's own count, published each second), then several
        # flush intervals so they are on disk: a fixed sleep was too short on a loaded CPU.
        written = wait_for(pub.executor, lambda: _joint_states_written(pub) >= 40, 30)
        assert written, f"recorder wrote {_joint_states_written(pub)} of 40 joint states"
        wait_for(pub.executor, lambda: False, 1.5)
        rec.kill()  # SIGKILL: no close, no metadata.yaml
    finally:
        pub.close()
        rec.stop()
    bag = out / "ep-k"
    health = check_bag(bag)
    assert not health.healthy and health.repairable
    assert wmpo_main(["bags", "verify", str(bag)]) == 1
    assert wmpo_main(["bags", "verify", "--repair", str(bag)]) == 0
    assert "recovered" in capsys.readouterr().out
    assert check_bag(bag, deep=True).healthy
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import JointState

    states = [
        deserialize_message(m.data, JointState) for m in iter_messages(bag, [JOINT_STATES_TOPIC])
    ]
    assert states == pub.sent[JOINT_STATES_TOPIC]
    side = read_sidecar(bag)
    assert side.status == "repaired" and side.extra["repair"]["status_before"] == "recording"


def test_disk_guard_refuses_and_reports_on_diagnostics(tmp_path, ros_context):
    rec, out = start_recorder(tmp_path, min_free_mb=1e12)  # more than any disk has free
    pub = Publisher(ros_context)
    try:
        pub.wait_matched()
        pub.event("start", "ep-d")
        ok = wait_for(
            pub.executor,
            lambda: any(d.status and d.status[0].level == b"\x02" for d in pub.diagnostics),
            10,
        )
        assert ok, "no ERROR diagnostics from the disk guard"
        errors = [d.status[0].message for d in pub.diagnostics if d.status[0].level == b"\x02"]
        assert "not recording episode 'ep-d'" in errors[-1] and "min_free_bytes" in errors[-1]
    finally:
        pub.close()
        rec.stop()
    assert not (out / "ep-d").exists()
    assert "not recording episode" in rec.output()


@pytest.mark.sim
@pytest.mark.slow
def test_teleop_expert_drives_sim_and_recorder_records_it(tmp_path, capsys):
    """The whole teleop path: sim_node + teleop_node (scripted expert, running its own episode)
    + recorder_node over DDS; the bag then ingests into an episode store."""
    from wmpo_core.store import EpisodeStore

    topics = TOPICS + ["/wmpo/sim/state std_msgs/msg/String reliable seq=json:step"]
    rec, out = start_recorder(tmp_path, topics=topics)
    sim, teleop = sim_and_expert_teleop(tmp_path, image_size=64, max_steps=30)
    try:
        sim.start()
        teleop.start()
        deadline = time.monotonic() + 90
        bags: list[Path] = []
        while time.monotonic() < deadline:
            bags = [b for b in out.glob("teleop-*") if (b / "metadata.yaml").is_file()]
            if bags and (read_sidecar(bags[0]).label or "") in ("success", "failure"):
                break
            time.sleep(0.2)
        assert bags, f"no closed bag; teleop log:\n{teleop.output()[-2000:]}"
    finally:
        teleop.stop()
        sim.stop()
        rec.stop()
    bag = bags[0]
    side = read_sidecar(bag)
    assert side.kind == "demonstration" and side.labelled_by == "sim" and side.seed == 5
    assert side.total_lost == 0 and side.seq_gaps == {}
    counts = {t: v["count"] for t, v in side.topics.items()}
    commands = (counts[TWIST_COMMAND_TOPIC], counts[GRIPPER_COMMAND_TOPIC])
    assert commands == (30, 30), f"commands recorded {commands}; recorder:\n{rec.output()[-1500:]}"
    assert counts[CAMERA_TOPIC] >= 30 and counts[JOINT_STATES_TOPIC] >= 30
    rc = wmpo_main(["ingest", str(out), "--out", str(tmp_path / "store"), "--image-size", "32"])
    assert rc == 0, capsys.readouterr().err
    ep = EpisodeStore(tmp_path / "store").load(side.id)
    assert ep.frames.shape[1:] == (32, 32, 3) and ep.meta.success == (side.label == "success")
    gaps = ep.meta.extra["alignment"]["n_gaps"]
    # Frames published before the first command / after the last have no command near them.
    assert gaps <= len(ep.frames) - 25, f"{gaps} of {len(ep.frames)} frames unaligned"
    assert np.abs(ep.actions[:, :3]).max() > 0.05, "the expert's motion must reach the store"


def test_diagnostics_name_a_recorded_topic_nobody_publishes(tmp_path, ros_context):
    wrist = "/wrist_camera/image_raw"
    rec, _ = start_recorder(
        tmp_path, topics=[*TOPICS, f"{wrist} sensor_msgs/msg/Image sensor_data"]
    )
    pub = Publisher(ros_context)
    try:
        pub.wait_matched()  # every topic the test publishes is matched on the recorder's side
        values = {kv.key: kv.value for kv in pub.diagnostics[-1].status[0].values}
    finally:
        pub.close()
        rec.stop()
    assert values["topics_without_publisher"] == f"['{wrist}']"


@pytest.mark.sim
def test_teleop_waits_for_its_subscribers_before_the_first_episode(tmp_path, ros_context):
    """wait_for_subscribers = 2: the arm alone is not enough; the episode starts (and the first
    command goes out) only once a second subscriber, the recorder's stand-in here, is matched
    on both command topics."""
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Float64, String

    from wmpo_core.runtime.episode import parse_event
    from wmpo_nodes.runtime_msgs import EVENTS_QOS

    node = rclpy.create_node("teleop_wait_probe", context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    events: list[str] = []
    twists: list[float] = []
    node.create_subscription(
        String, EPISODE_TOPIC, lambda m: events.append(parse_event(m.data).event), EVENTS_QOS
    )
    sim, teleop = sim_and_expert_teleop(tmp_path, image_size=32, max_steps=10)
    try:
        sim.start()
        teleop.start()
        assert wait_for(executor, lambda: "have 1" in teleop.output(), 60), teleop.output()
        wait_for(executor, lambda: False, 3.0)  # matched by the arm only: nothing may start
        assert "start" not in events, events
        node.create_subscription(
            TwistStamped, TWIST_COMMAND_TOPIC, lambda m: twists.append(time.monotonic()), 100
        )
        # On the twists only: the first gripper commands would still be lost, so no start.
        wait_for(executor, lambda: False, 3.0)
        assert "start" not in events, events
        node.create_subscription(Float64, GRIPPER_COMMAND_TOPIC, lambda m: None, 100)
        assert wait_for(executor, lambda: "start" in events and len(twists) >= 5, 60), (
            teleop.output()[-2000:]
        )
    finally:
        teleop.stop()
        sim.stop()
        executor.shutdown()
        node.destroy_node()
