"""Recording benchmark: two 224x224 RGB cameras at 30 Hz + joint states at 100 Hz (+ twist and
gripper commands at 20 Hz) over loopback DDS into recorder_node, for --seconds.

Reports per topic sent / recorded / dropped, the recorder process's CPU %, MB/s written,
and compares against the ceiling: the same serialized messages written directly with
rosbags' Writer in a loop (no DDS, no queue). Then ingests the bag (224 -> 64 px) and
reports frames/s.

    .venv/bin/python benchmarks/recording.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wmpo_core.rosenv import apply_ros_env, ros_env  # noqa: E402

CAM1, CAM2 = "/camera/image_raw", "/wrist_camera/image_raw"
JOINTS, TWIST, GRIP, EPISODE = (
    "/joint_states",
    "/servo_node/delta_twist_cmds",
    "/gripper/command",
    "/wmpo/episode",
)
RATES = {CAM1: 30.0, CAM2: 30.0, JOINTS: 100.0, TWIST: 20.0, GRIP: 20.0}
TOPICS = [
    f"{CAM1} sensor_msgs/msg/Image sensor_data",
    f"{CAM2} sensor_msgs/msg/Image sensor_data",
    f"{JOINTS} sensor_msgs/msg/JointState reliable",
    f"{TWIST} geometry_msgs/msg/TwistStamped reliable",
    f"{GRIP} std_msgs/msg/Float64 reliable",
    f"{EPISODE} std_msgs/msg/String latched",
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_recorder_session(out: Path, seconds: float, domain: int) -> dict:
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64, String

    cfg = out.parent / "recorder.yaml"
    params = {"output_dir": str(out), "topics": TOPICS, "min_free_mb": 500.0}
    cfg.write_text(yaml.safe_dump({"recorder": {"ros__parameters": params}}))
    log = open(out.parent / "recorder.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "wmpo_recorder_node"),
            "--ros-args",
            "--params-file",
            str(cfg),
        ],
        env=ros_env(domain),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    apply_ros_env(domain)
    rclpy.init()
    node = rclpy.create_node("bench_publisher")
    latched = QoSProfile(
        depth=10,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    pubs = {
        CAM1: node.create_publisher(Image, CAM1, qos_profile_sensor_data),
        CAM2: node.create_publisher(Image, CAM2, qos_profile_sensor_data),
        JOINTS: node.create_publisher(JointState, JOINTS, 100),
        TWIST: node.create_publisher(TwistStamped, TWIST, 100),
        GRIP: node.create_publisher(Float64, GRIP, 100),
    }
    events = node.create_publisher(String, EPISODE, latched)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, 224 * 224 * 3, dtype=np.uint8).tobytes() for _ in range(8)]
    imgs = {t: Image(height=224, width=224, encoding="rgb8", step=672) for t in (CAM1, CAM2)}
    js = JointState(name=[f"j{i}" for i in range(9)], position=[0.0] * 9, velocity=[0.0] * 9)
    tw = TwistStamped()
    deadline = time.monotonic() + 30
    while any(p.get_subscription_count() == 0 for p in pubs.values()):
        rclpy.spin_once(node, timeout_sec=0.05)
        if time.monotonic() > deadline:
            raise SystemExit("recorder did not subscribe within 30 s; see recorder.log")

    def event(kind: str) -> None:
        body = {
            "schema": 1,
            "event": kind,
            "episode_id": "bench",
            "task": "Lift",
            "stamp": time.time(),
        }
        events.publish(String(data=json.dumps(body | {"instruction": "lift the red cube"})))

    event("start")
    time.sleep(1.0)
    sent = {t: 0 for t in pubs}
    payload: dict[str, list[bytes]] = {t: [] for t in pubs}
    keep = seconds <= 90  # the ceiling run replays exactly these bytes
    t0 = time.monotonic()
    cpu0 = cpu_seconds(proc.pid)
    next_at = {t: t0 for t in pubs}
    while (now := time.monotonic()) < t0 + seconds:
        for topic, due in next_at.items():
            if now < due:
                continue
            i = sent[topic]
            stamp = node.get_clock().now().to_msg()
            if topic in imgs:
                msg = imgs[topic]
                msg.header.stamp = stamp
                msg.data = frames[i % len(frames)]
            elif topic == JOINTS:
                msg = js
                msg.header.stamp = stamp
                msg.position[0] = float(i)
            elif topic == TWIST:
                msg = tw
                msg.header.stamp = stamp
                msg.twist.linear.x = 0.01 * (i % 10)
            else:
                msg = Float64(data=float(i % 2))
            pubs[topic].publish(msg)
            if keep:
                payload[topic].append(serialize_message(msg))
            sent[topic] += 1
            next_at[topic] = due + 1.0 / RATES[topic]
        time.sleep(max(0.0, min(next_at.values()) - time.monotonic()))
    elapsed = time.monotonic() - t0
    time.sleep(1.0)  # let the last messages arrive
    cpu = cpu_seconds(proc.pid) - cpu0
    event("stop")
    bag = out / "bench"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        side = bag / "episode.json"
        if side.is_file() and json.loads(side.read_text())["status"] != "recording":
            break
        time.sleep(0.1)
    proc.send_signal(2)
    proc.wait(30)
    node.destroy_node()
    rclpy.shutdown()
    return {"sent": sent, "elapsed": elapsed, "cpu": cpu, "bag": bag, "payload": payload}


def rosbags_ceiling(payload: dict[str, list[bytes]], tmp: Path) -> tuple[float, float, int]:
    """Same bytes, same topics, written directly with rosbags: (wall s, cpu s, bytes)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {t.split()[0]: t.split()[1] for t in TOPICS}
    order = sorted(
        ((i / RATES[t], t, d) for t, msgs in payload.items() for i, d in enumerate(msgs)),
        key=lambda x: x[0],
    )
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    with Writer(tmp / "ceiling", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {t: w.add_connection(t, types[t], typestore=store) for t in payload}
        for ts, topic, data in order:
            w.write(conns[topic], int(ts * 1e9), data)
    wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    size = sum(f.stat().st_size for f in (tmp / "ceiling").iterdir())
    return wall, cpu, size


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--domain", type=int, default=int(os.environ.get("ROS_DOMAIN_ID", "33")))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wmpo-bench-rec-"))
    try:
        out = tmp / "bags"
        r = run_recorder_session(out, args.seconds, args.domain)
        from wmpo_core.bags.metadata import read_sidecar
        from wmpo_core.bags.reader import bag_info, bag_size

        info = bag_info(r["bag"])
        side = read_sidecar(r["bag"])
        size = bag_size(r["bag"])
        print(f"\nrecorder: {args.seconds:.0f} s, 2 cameras 224x224 rgb8 @30 Hz, joints @100 Hz")
        print(f"{'topic':32s} {'sent':>7s} {'recorded':>9s} {'dropped':>8s}")
        total_drop = 0
        for topic, n in r["sent"].items():
            got = info.topics.get(topic, ("", 0))[1]
            total_drop += n - got
            print(f"{topic:32s} {n:7d} {got:9d} {n - got:8d}")
        print(f"known missing per sidecar (lost/gaps/queue): {side.total_lost}")
        cpu_pct = 100 * r["cpu"] / r["elapsed"]
        mbps = size / 1e6 / r["elapsed"]
        print(
            f"recorder CPU: {cpu_pct:.1f} % of one core; written {size / 1e6:.1f} MB = {mbps:.2f} MB/s"
        )
        if r["payload"][CAM1]:
            wall, cpu, csize = rosbags_ceiling(r["payload"], tmp)
            print(
                f"ceiling (rosbags Writer loop, same {csize / 1e6:.1f} MB): {csize / 1e6 / wall:.0f} MB/s, "
                f"{cpu:.2f} CPU-s"
            )
            print(
                f"recorder CPU-s per MB / ceiling CPU-s per MB = "
                f"{(r['cpu'] / size) / (cpu / csize):.1f}x; ceiling headroom over the "
                f"{mbps:.1f} MB/s stream: {csize / 1e6 / wall / mbps:.0f}x"
            )
        from wmpo_core.cli import main as wmpo_main

        t = time.perf_counter()
        wmpo_main(["ingest", str(out), "--out", str(tmp / "store"), "--image-size", "64"])
        print(f"(ingest wall time {time.perf_counter() - t:.1f} s)")
        print(f"dropped total: {total_drop}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if total_drop == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
