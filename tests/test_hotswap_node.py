"""Hot-swap on the running robot graph (real rclpy over loopback, real sim, real registry).

policy_node runs `registry:ROOT`; while an episode runs and the executor ticks at
20 Hz, an incompatible version is promoted (refused: the old policy keeps running)
and then a good one (swapped in). The executor's command stream must not miss a
tick across either event.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from wmpo_core.policy import (
    NormalizationStats,
    PolicyConfig,
    VLAPolicyModel,
    save_policy_checkpoint,
)
from wmpo_core.registry import Registry

pytestmark = [pytest.mark.ros, pytest.mark.sim]

SMALL = dict(d_model=32, n_layers=1, n_heads=2, vision_channels=(8, 8, 8), vision_grid=4)


def _ckpt(path, seed: int, **overrides):
    torch.manual_seed(seed)
    model = VLAPolicyModel(PolicyConfig(image_size=64, **{**SMALL, **overrides}))
    stats = NormalizationStats.from_actions(np.random.default_rng(0).normal(0, 0.2, (300, 7)))
    return save_policy_checkpoint(
        path, model, stats, instructions=["lift the red cube"], episode_ids=[]
    )


def test_swap_under_a_running_control_loop_misses_no_tick(tmp_path, ros_domain_id):
    import rclpy
    from geometry_msgs.msg import TwistStamped
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    from wmpo_core.interfaces import POLICY_VERSION_TOPIC, TWIST_COMMAND_TOPIC
    from wmpo_core.runtime.topics import EPISODE_COMMAND_TOPIC
    from wmpo_nodes.demo import Graph
    from wmpo_nodes.runtime_msgs import LATCHED

    reg = Registry(tmp_path / "registry", create=True)
    reg.promote(reg.publish(_ckpt(tmp_path / "a", 0)))
    v_bad = reg.publish(_ckpt(tmp_path / "b", 1, chunk_size=4))  # wrong chunk size
    v_good = reg.publish(_ckpt(tmp_path / "c", 2))
    params = [
        "sim_node:image_size:=64",
        f"policy_node:policy:=registry:{reg.root}",
        "policy_node:image_size:=64",
        "policy_node:use_privileged_state:=false",
        "policy_node:registry_poll_s:=0.2",
        "executor_node:tick_source:=timer",
        "episode_node:max_duration_s:=120.0",
        "episode_node:label_from_sim:=false",
    ]
    logs = tmp_path / "logs"
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with Graph("sim", params, ["record:=false"], logs, ros_domain_id) as graph:
            node = rclpy.create_node("swap_probe", context=context)
            ex = SingleThreadedExecutor(context=context)
            ex.add_node(node)
            arrivals: list[float] = []
            versions: list[str] = []
            node.create_subscription(
                TwistStamped, TWIST_COMMAND_TOPIC, lambda m: arrivals.append(time.monotonic()), 50
            )
            node.create_subscription(
                String, POLICY_VERSION_TOPIC, lambda m: versions.append(m.data), LATCHED
            )
            cmd = node.create_publisher(String, EPISODE_COMMAND_TOPIC, 10)

            def spin(cond, timeout):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and not cond():
                    ex.spin_once(timeout_sec=0.05)
                    graph.check()
                return cond()

            assert spin(lambda: versions and cmd.get_subscription_count() > 0, 90), (
                "graph did not come up"
            )
            assert versions[-1] == "v0001"
            cmd.publish(String(data=json.dumps({"command": "start"})))
            assert spin(lambda: len(arrivals) > 40, 60), "no commands flowing"

            t_bad = time.monotonic()
            reg.promote(v_bad)
            # The refusal happens off the control path (loading can take seconds under load).
            spin(lambda: "refused" in (logs / "policy_node.log").read_text(), 60.0)
            log = (logs / "policy_node.log").read_text()
            assert "refused" in log and "chunk size 4" in log, log[-2000:]
            assert versions[-1] == "v0001", "a refused version must not replace the running one"

            t_good = time.monotonic()
            reg.promote(v_good)
            assert spin(lambda: versions[-1] == v_good, 30), (
                "policy_node did not swap in the good version"
            )
            spin(lambda: False, 2.0)
            window = np.array([t for t in arrivals if t >= t_bad - 0.5])
            gaps = np.diff(window)
            # Behaviour, not a timing benchmark: the control loop keeps commanding the arm
            # through both swap attempts (it runs in its own process). Seen on 2 shared cores:
            # max gap 106 ms alone, up to ~200 ms beside a training job (jitter before the
            # swap 64-95 ms); a gap of a second would mean the loop stalled.
            period = 0.05
            print(f"max command gap across the swaps: {gaps.max() * 1e3:.0f} ms")
            assert gaps.max() < 20 * period, f"control loop stalled {gaps.max():.2f} s"
            elapsed = window[-1] - window[0]
            assert len(window) - 1 >= 0.7 * elapsed / period, (
                f"{len(window) - 1} commands in {elapsed:.2f} s at 20 Hz"
            )
            assert len([t for t in arrivals if t > t_good]) > 20
            exe_log = (logs / "executor_node.log").read_text()
            assert "dropped queued actions" in exe_log
            node.destroy_node()
    finally:
        context.try_shutdown()


def test_auto_rollback_on_a_planted_regression_swaps_the_previous_version_back(tmp_path):
    """policy_node alone in registry mode: v1 succeeds on its labelled episodes, v2 is
    promoted and fails every one; the node rolls the registry back and swaps v1 back in."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from tests.rosutil import NodeProcess
    from wmpo_core.interfaces import (
        CAMERA_TOPIC,
        DIAGNOSTICS_TOPIC,
        EPISODE_TOPIC,
        INSTRUCTION_TOPIC,
        POLICY_VERSION_TOPIC,
    )
    from wmpo_core.runtime.episode import EpisodeEvent
    from wmpo_nodes.runtime_msgs import EVENTS_QOS, LATCHED

    reg = Registry(tmp_path / "registry", create=True)
    v1 = reg.publish(_ckpt(tmp_path / "a", 0))
    reg.promote(v1)
    v2 = reg.publish(_ckpt(tmp_path / "b", 1))
    node = NodeProcess(
        "wmpo_policy_node",
        [
            "-p",
            f"policy:=registry:{reg.root}",
            "-p",
            "image_size:=64",
            "-p",
            "autostart:=true",
            "-p",
            "registry_poll_s:=0.2",
            "-p",
            "rollback_window_episodes:=6",
            "-p",
            "rollback_min_episodes:=3",
            "-p",
            "trigger:=continuous",
        ],  # fmt: skip
        log=tmp_path / "policy_node.log",
    ).start()
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        probe = rclpy.create_node("rollback_probe", context=context)
        ex = SingleThreadedExecutor(context=context)
        ex.add_node(probe)
        versions: list[str] = []
        probe.create_subscription(
            String, POLICY_VERSION_TOPIC, lambda m: versions.append(m.data), LATCHED
        )
        events = probe.create_publisher(String, EPISODE_TOPIC, EVENTS_QOS)
        diag = probe.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        # A camera and an instruction: a candidate is warmed up on real observations.
        camera = probe.create_publisher(Image, CAMERA_TOPIC, 10)
        probe.create_publisher(String, INSTRUCTION_TOPIC, LATCHED).publish(
            String(data="lift the red cube")
        )
        pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)

        def frame() -> Image:
            msg = Image(height=64, width=64, encoding="rgb8", step=64 * 3, data=pixels.tobytes())
            msg.header.stamp = probe.get_clock().now().to_msg()
            return msg

        def spin(cond, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not cond():
                camera.publish(frame())
                ex.spin_once(timeout_sec=0.05)
                assert node.alive(), (tmp_path / "policy_node.log").read_text()[-2000:]
            return cond()

        def episode(k: int, version: str, label: str) -> None:
            for kind in ("start", "label"):
                ev = EpisodeEvent(
                    event=kind, episode_id=f"ep{k}", instruction="lift the red cube",
                    policy_version=version, task="Lift", seed=k, start_stamp=float(k),
                    stop_stamp=float(k) + 1.0 if kind == "label" else None,
                    label=label if kind == "label" else None,
                    labelled_by="operator" if kind == "label" else None, reason="", stamp=float(k),
                )  # fmt: skip
                events.publish(String(data=ev.to_json()))
                status = DiagnosticStatus(name="wmpo/executor_node", values=[
                    KeyValue(key="intervention_clamped", value="0")])  # fmt: skip
                diag.publish(DiagnosticArray(status=[status]))
                spin(lambda: False, 0.1)

        assert spin(lambda: versions and events.get_subscription_count() > 0, 60)
        assert versions[-1] == v1
        for k in range(4):
            episode(k, v1, "success")
        log = reg.root / "episodes.jsonl"
        assert spin(lambda: log.is_file() and len(log.read_text().splitlines()) == 4, 20)
        reg.promote(v2, reason="planted regression")
        assert spin(lambda: versions[-1] == v2, 30), "v2 was not swapped in"
        for k in range(4, 8):
            episode(k, v2, "failure")
        assert spin(lambda: reg.promoted() == v1, 30), (tmp_path / "policy_node.log").read_text()
        assert spin(lambda: versions[-1] == v1, 30), "the rolled-back version was not swapped in"
        last = reg.history()[-1]
        assert last["action"] == "rollback" and "auto-rollback" in last["reason"]
        assert "auto-rollback to " + v1 in (tmp_path / "policy_node.log").read_text()
        probe.destroy_node()
    finally:
        context.try_shutdown()
        node.stop()
