"""The robot control loop under inference delay, per chunk strategy, on the real node graph.

For each (chunk strategy, inference delay) it starts policy_node (scripted expert +
`added_latency_s`) and executor_node against one running sim_node + episode_node
(wall clock, the graph `wmpo launch sim` starts, but state-only: no camera, so the
sim keeps up with 20 Hz on a loaded CPU), runs N Lift episodes and reads back what
the executor measured on /diagnostics:

- command period p50 / p99 (ms): jitter of the control loop
- observation -> command p50 / p99 (ms): stamp of the observation a chunk was
  computed from -> the first command taken from it
- largest step at chunk boundaries (normalized action units, max |delta| over dims)
- holds for an empty queue, and task success (the sim's privileged flag)

The baseline is open_loop with request_lead_steps 0 (the paper's mode: observe after
the chunk) at zero added delay; the table prints success and boundary step against it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/control_loop.py --episodes 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from wmpo_core.rosenv import apply_ros_env, pick_domain_id  # noqa: E402

# (label, executor chunk_strategy, request_lead_steps)
STRATEGIES = {
    "open_loop(paper)": ("open_loop", 0),
    "open_loop(lead)": ("open_loop", -1),
    "temporal_ensemble": ("temporal_ensemble", -1),
    "latency_aware": ("latency_aware", -1),
}
BASELINE = ("open_loop(paper)", 0.0)


def node_cmd(exe: str, files: list[str], params: dict[str, str]) -> list[str]:
    cmd = [str(Path(sys.executable).parent / exe), "--ros-args"]
    for f in files:
        cmd += ["--params-file", str(REPO / "launch" / "config" / f)]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO)  # noqa: SIM115


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Probe:
    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from std_msgs.msg import String
        from std_srvs.srv import Trigger

        from wmpo_core.interfaces import DIAGNOSTICS_TOPIC, EPISODE_TOPIC
        from wmpo_core.runtime.episode import parse_event
        from wmpo_core.runtime.topics import EPISODE_START_SERVICE, EPISODE_STOP_SERVICE
        from wmpo_nodes.runtime_msgs import EVENTS_QOS

        rclpy.init()
        self.rclpy = rclpy
        self.node = Node("control_loop_bench")
        self.diag: dict[str, dict[str, str]] = {}
        self.events: list = []
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diag, 50)
        self.node.create_subscription(
            String, EPISODE_TOPIC, lambda m: self.events.append(parse_event(m.data)), EVENTS_QOS
        )
        self.start_client = self.node.create_client(Trigger, EPISODE_START_SERVICE)
        self.stop_client = self.node.create_client(Trigger, EPISODE_STOP_SERVICE)
        self.Trigger = Trigger

    def _on_diag(self, msg) -> None:
        for s in msg.status:
            self.diag[s.name] = {kv.key: kv.value for kv in s.values}

    def spin(self, seconds: float, until=lambda: False) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until():
                return True
            self.rclpy.spin_once(self.node, timeout_sec=0.05)
        return until()

    def call(self, client, timeout: float = 30.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"{client.srv_name} not available")
        future = client.call_async(self.Trigger.Request())
        self.spin(timeout, future.done)
        return future.result()

    def episode(self, timeout: float) -> str:
        self.call(self.stop_client)
        n = len(self.events)
        result = self.call(self.start_client)
        if result is None or not result.success:
            return "start-failed"
        done = self.spin(timeout + 5, lambda: any(e.event == "label" for e in self.events[n:]))
        if not done:
            return "no-label"
        return next(e.label for e in self.events[n:] if e.event == "label")


def run(args) -> list[dict]:
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    common = {"use_sim_time": "false"}
    # State-only sim (no camera): the scripted policy acts on privileged state, and the sim
    # keeps up with 20 Hz on a loaded CPU, so what is measured is the runtime, not rendering.
    sim = start(
        node_cmd("wmpo_sim_node", ["sim.yaml"], {"task": args.task, "render": "false"}),
        logs / "sim.log",
    )
    episode = start(
        node_cmd(
            "wmpo_episode_node",
            ["episode.yaml", "sim.yaml"],
            {"max_duration_s": str(args.episode_timeout), "task": args.task},
        ),
        logs / "episode.log",
    )
    probe = Probe()
    rows = []
    try:
        for delay in args.delays:
            for label, (strategy, lead) in STRATEGIES.items():
                if label not in args.strategies:
                    continue
                policy = start(
                    node_cmd(
                        "wmpo_policy_node",
                        ["policy.yaml", "sim.yaml"],
                        {
                            **common,
                            "added_latency_s": str(delay),
                            "task": args.task,
                            "require_images": "false",
                            "policy": args.policy,
                        },
                    ),
                    logs / f"policy_{label}_{delay}.log",
                )
                executor = start(
                    node_cmd(
                        "wmpo_executor_node",
                        ["executor.yaml", "sim.yaml"],
                        {
                            **common,
                            "chunk_strategy": strategy,
                            "request_lead_steps": str(lead),
                            "tick_source": args.tick_source,
                        },
                    ),
                    logs / f"executor_{label}_{delay}.log",
                )
                try:
                    probe.diag.clear()
                    probe.spin(60, lambda: "wmpo/executor_node" in probe.diag)
                    labels = [probe.episode(args.episode_timeout) for _ in range(args.episodes)]
                    probe.diag.pop("wmpo/executor_node", None)
                    probe.spin(3, lambda: "wmpo/executor_node" in probe.diag)
                    d = probe.diag.get("wmpo/executor_node", {})
                    sim_d = probe.diag.get("sim_node: arm", {})
                finally:
                    stop(executor)
                    stop(policy)
                row = {
                    "strategy": label,
                    "delay_s": delay,
                    "episodes": len(labels),
                    "success": sum(lab == "success" for lab in labels),
                    "labels": labels,
                    "period_p50_ms": float(d.get("command_period_p50_ms", "nan")),
                    "period_p99_ms": float(d.get("command_period_p99_ms", "nan")),
                    "obs_to_cmd_p50_ms": float(d.get("observation_to_command_p50_ms", "nan")),
                    "obs_to_cmd_p99_ms": float(d.get("observation_to_command_p99_ms", "nan")),
                    "boundary_step_max": float(d.get("chunk_boundary_step_max_norm", "nan")),
                    "boundary_step_p99": float(d.get("chunk_boundary_step_p99_norm", "nan")),
                    "queue_empty_holds": int(d.get("intervention_queue_empty", "0")),
                    "stale_holds": int(d.get("intervention_stale_chunk", "0")),
                    "skipped_actions": int(d.get("actions_skipped", "0")),
                    "sim_steps_per_s": float(sim_d.get("steps_per_s", "nan")),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        stop(episode)
        stop(sim)
        probe.node.destroy_node()
        probe.rclpy.try_shutdown()
    return rows


def table(rows: list[dict]) -> str:
    base = next(
        (r for r in rows if (r["strategy"], r["delay_s"]) == BASELINE), rows[0] if rows else None
    )
    head = (
        "| strategy | delay ms | success | period p50/p99 ms | obs->cmd p50/p99 ms "
        "| max boundary step | vs baseline step | empty-queue holds | sim steps/s |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        ratio = r["boundary_step_max"] / base["boundary_step_max"] if base else float("nan")
        lines.append(
            f"| {r['strategy']} | {r['delay_s'] * 1000:.0f} | {r['success']}/{r['episodes']} "
            f"| {r['period_p50_ms']:.1f} / {r['period_p99_ms']:.1f} "
            f"| {r['obs_to_cmd_p50_ms']:.0f} / {r['obs_to_cmd_p99_ms']:.0f} "
            f"| {r['boundary_step_max']:.2f} | {ratio:.2f}x | {r['queue_empty_holds']} "
            f"| {r['sim_steps_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--delays", type=lambda s: [float(v) for v in s.split(",")], default=[0.0, 0.2, 0.5]
    )
    parser.add_argument("--strategies", type=lambda s: s.split(","), default=list(STRATEGIES))
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--episode-timeout", type=float, default=30.0)
    parser.add_argument("--task", default="Lift")
    parser.add_argument(
        "--policy",
        default="scripted",
        help="'scripted' (the sim's expert: phase counters) or 'scripted-markov' (stateless)",
    )
    parser.add_argument("--tick-source", default="timer", choices=("timer", "joint_states"))
    parser.add_argument("--domain-id", type=int, default=None)
    parser.add_argument("--log-dir", default="runs/bench_control_loop")
    parser.add_argument("--out", default="", help="write the rows as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    apply_ros_env(args.domain_id if args.domain_id is not None else pick_domain_id())
    t0 = time.monotonic()
    rows = run(args)
    print(table(rows))
    print(
        f"(policy {args.policy}, {time.monotonic() - t0:.0f} s; "
        f"baseline = {BASELINE[0]} at {BASELINE[1]:.0f} s delay)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
