"""Embedded-sim speed, camera transport latency and scripted-expert success rates.

    .venv/bin/python benchmarks/sim_step.py [--steps 100] [--seeds 20] [--skip-experts]

Measures, on this machine (CPU only, software OpenGL via OSMesa):
1. SimArm steps/s state-only and with a camera frame at 64 / 128 / 224 px, MSAA off
   (our default) against robosuite's default MSAA (the baseline; ratio printed).
2. Reset cost: SimArm's seeded soft reset against robosuite's default hard reset.
3. DDS image round trip over loopback: publish an rgb8 frame, a second process
   echoes it back, p50 / p99 latency per size (sensor-data QoS, as sim_node uses).
4. Scripted-expert success over `--seeds` seeds at noise 0 and 0.1, all tasks
   (state-only; episodes end 8 steps after success or when the expert is done).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIZES = (64, 128, 224)


def bench_steps(steps: int, rounds: int = 5) -> list[dict]:
    """Median steps/s per config over `rounds` interleaved blocks: all configs are timed in
    turn, so a load change on the shared machine hits each of them alike."""
    from wmpo_core.sim.arm import SimArm, SimConfig

    rng = np.random.default_rng(0)
    configs = {"state-only": SimConfig(render=False)}
    for size in SIZES:
        configs[f"camera {size}px, MSAA on (robosuite default)"] = SimConfig(
            image_size=size, msaa=True
        )
        configs[f"camera {size}px, MSAA off"] = SimConfig(image_size=size)
    arms = {name: SimArm(cfg) for name, cfg in configs.items()}
    rates: dict[str, list[float]] = {name: [] for name in arms}
    try:
        for arm in arms.values():
            arm.reset(0)
            for _ in range(3):  # warm-up (first frames allocate buffers)
                arm.step(rng.uniform(-0.3, 0.3, 7))
        block = max(1, steps // rounds)
        for _ in range(rounds):
            for name, arm in arms.items():
                t0 = time.perf_counter()
                for _ in range(block):
                    arm.step(rng.uniform(-0.3, 0.3, 7))
                rates[name].append(block / (time.perf_counter() - t0))
    finally:
        for arm in arms.values():
            arm.close()
    rows = []
    for name, r in rates.items():
        rows.append({"config": name, "steps_per_s": float(np.median(r)), "rounds": r})
        print(f"  {name:45s} {np.median(r):7.1f} steps/s (median of {len(r)})", flush=True)
    return rows


def bench_reset(n: int = 5) -> dict:
    from wmpo_core.sim.arm import SimArm, SimConfig, _import_robosuite

    with SimArm(SimConfig(image_size=128)) as arm:
        t0 = time.perf_counter()
        for s in range(n):
            arm.reset(s)
        soft = (time.perf_counter() - t0) / n
    suite, load = _import_robosuite()
    env = suite.make(
        "Lift",
        robots="Panda",
        controller_configs=load(controller="BASIC", robot="Panda"),
        has_renderer=False,
        has_offscreen_renderer=True,
        use_camera_obs=True,
        camera_names="agentview",
        camera_heights=128,
        camera_widths=128,
    )
    t0 = time.perf_counter()
    for _ in range(n):
        env.reset()
    hard = (time.perf_counter() - t0) / n
    env.close()
    print(f"  reset: soft (SimArm) {soft * 1e3:.1f} ms, robosuite hard reset {hard * 1e3:.0f} ms")
    return {"soft_reset_s": soft, "hard_reset_s": hard}


# -- DDS round trip -----------------------------------------------------------------
def echo_server() -> None:
    """Subscribe to /bench/image and publish every message back on /bench/echo."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_echo")
    pub = node.create_publisher(Image, "/bench/echo", qos_profile_sensor_data)
    node.create_subscription(Image, "/bench/image", pub.publish, qos_profile_sensor_data)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        rclpy.try_shutdown()


def bench_dds(n: int) -> list[dict]:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from wmpo_core.images import rgb_to_image_fields
    from wmpo_core.rosenv import ros_env

    env = ros_env(int(os.environ.get("ROS_DOMAIN_ID", "77")))
    os.environ.update(env)
    echo = subprocess.Popen([sys.executable, __file__, "--echo"], env=env)
    rclpy.init()
    node = rclpy.create_node("bench_ping")
    pub = node.create_publisher(Image, "/bench/image", qos_profile_sensor_data)
    got: dict[int, float] = {}
    node.create_subscription(
        Image,
        "/bench/echo",
        lambda m: got.__setitem__(m.header.stamp.nanosec, time.perf_counter()),
        qos_profile_sensor_data,
    )
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    rows = []
    try:
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        probe = Image(**rgb_to_image_fields(np.zeros((8, 8, 3), np.uint8)))
        while not got and time.monotonic() < deadline:  # wait until the echo path works
            probe.header.stamp.nanosec = 999_999_999
            pub.publish(probe)
            executor.spin_once(timeout_sec=0.2)
        for size in SIZES:
            img = np.random.default_rng(size).integers(0, 256, (size, size, 3), dtype=np.uint8)
            msg = Image(**rgb_to_image_fields(img))
            lat, lost = [], 0
            for i in range(n):
                got.clear()
                msg.header.stamp.nanosec = i
                t0 = time.perf_counter()
                pub.publish(msg)
                end = t0 + 1.0
                while i not in got and time.perf_counter() < end:
                    executor.spin_once(timeout_sec=0.01)
                if i in got:
                    lat.append(got[i] - t0)
                else:
                    lost += 1
            lat_ms = np.array(lat) * 1e3
            row = {
                "size": size,
                "bytes": size * size * 3,
                "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat) else float("nan"),
                "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat) else float("nan"),
                "lost": lost,
                "n": n,
            }
            rows.append(row)
            print(
                f"  {size}px ({row['bytes'] / 1e3:.0f} kB): round trip p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, lost {lost}/{n}",
                flush=True,
            )
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        echo.terminate()
        echo.wait(10)
    return rows


def bench_experts(seeds: int, noises: tuple[float, ...]) -> list[dict]:
    from wmpo_core.interfaces import TASKS
    from wmpo_core.sim.arm import SimArm, SimConfig
    from wmpo_core.sim.episode import run_expert_episode
    from wmpo_core.sim.experts import make_expert

    rows = []
    for task in TASKS:
        with SimArm(SimConfig(task=task, render=False)) as arm:
            for noise in noises:
                t0 = time.perf_counter()
                eps = [
                    run_expert_episode(arm, make_expert(task, noise, seed=s), s)
                    for s in range(seeds)
                ]
                ok = [e for e in eps if e.success]
                row = {
                    "task": task,
                    "noise": noise,
                    "successes": len(ok),
                    "episodes": seeds,
                    "failed_seeds": [e.seed for e in eps if not e.success],
                    "mean_success_step": float(np.mean([e.success_step for e in ok]))
                    if ok
                    else None,
                    "seconds": time.perf_counter() - t0,
                }
                rows.append(row)
                print(
                    f"  {task:18s} noise {noise:.1f}: {len(ok)}/{seeds} "
                    f"(mean success step {row['mean_success_step'] or 0:.0f}, "
                    f"failed seeds {row['failed_seeds']}, {row['seconds']:.0f} s)",
                    flush=True,
                )
    return rows


def bench_speed(args: argparse.Namespace, results: dict) -> None:
    print("SimArm steps/s (Lift, Panda OSC_POSE, random actions):")
    results["steps"] = bench_steps(args.steps)
    base = {r["config"]: r["steps_per_s"] for r in results["steps"]}
    for size in SIZES:
        on = base[f"camera {size}px, MSAA on (robosuite default)"]
        off = base[f"camera {size}px, MSAA off"]
        print(
            f"  {size}px: MSAA off / on = {off / on:.2f}x; state-only / camera = {base['state-only'] / off:.1f}x"
        )
    print("Reset:")
    results["reset"] = bench_reset()
    print("DDS image round trip (loopback, sensor-data QoS, echo in a second process):")
    results["dds"] = bench_dds(args.pings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per speed measurement")
    parser.add_argument("--pings", type=int, default=200, help="round trips per image size")
    parser.add_argument("--seeds", type=int, default=20, help="expert episodes per task and noise")
    parser.add_argument("--skip-experts", action="store_true")
    parser.add_argument("--only-experts", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        echo_server()
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count()}
    if not args.only_experts:
        bench_speed(args, results)
    if not args.skip_experts:
        print(f"Scripted experts over {args.seeds} seeds (state-only):")
        results["experts"] = bench_experts(args.seeds, (0.0, 0.1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
