"""Automatic rollback inside policy_node (registry mode): the ROS side of `AutoRollback`.

Fed the episode events policy_node already parses (the label and the version that ran
each episode), and listening to the executor's diagnostics (its safety-intervention counters), and hands one outcome per
labelled episode to `wmpo_core.runtime_monitor.AutoRollback`, off the ROS callback thread
(a rollback verifies the target checkpoint's hashes). A rollback rewrites the registry's
promoted pointer; the node's registry watcher then hot-swaps the previous version back
through the same vetted path as any promotion.
"""

from __future__ import annotations

import queue
import threading

from diagnostic_msgs.msg import DiagnosticArray

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import DIAGNOSTICS_TOPIC
from wmpo_core.registry import Registry
from wmpo_core.runtime.episode import EpisodeEvent
from wmpo_core.runtime_monitor import (
    AutoRollback,
    EpisodeOutcome,
    MonitorConfig,
    safety_interventions,
)

EXECUTOR_STATUS = "wmpo/executor_node"
INTERVENTION_PREFIX = "intervention_"


class RollbackWatch:
    """Subscriptions + a worker thread feeding labelled episodes to AutoRollback."""

    def __init__(self, node, registry_root, config: MonitorConfig):
        self.node = node
        self.auto = AutoRollback(Registry(registry_root), config, log=self._log)
        self._counts: dict[str, int] = {}
        self._at_start: dict[str, int] = {}
        self._recorded: set[str] = set()
        self._queue: queue.Queue = queue.Queue()
        self.subscriptions = [
            node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diag, 10),
        ]
        self._thread = threading.Thread(target=self._work, name="auto-rollback", daemon=True)
        self._thread.start()

    def _log(self, text: str) -> None:
        logger = self.node.get_logger()
        (logger.warning if "auto-rollback to" in text else logger.info)(text)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == EXECUTOR_STATUS:
                self._counts = {
                    kv.key[len(INTERVENTION_PREFIX) :]: int(kv.value)
                    for kv in status.values
                    if kv.key.startswith(INTERVENTION_PREFIX) and kv.value.isdigit()
                }

    def on_event(self, event: EpisodeEvent) -> None:
        """An episode event, parsed by policy_node's /wmpo/episode subscription."""
        if event.event == "start":
            self._at_start = dict(self._counts)
        elif event.event == "label" and event.label and event.episode_id not in self._recorded:
            self._recorded.add(event.episode_id)
            now, before = safety_interventions(self._counts), safety_interventions(self._at_start)
            outcome = EpisodeOutcome(
                version=event.policy_version,
                success=event.label == "success",
                interventions=max(0, now - before),
            )
            self._queue.put((outcome, event.episode_id))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.auto.record(*item)
            except (WmpoError, OSError) as exc:
                self.node.get_logger().error(f"auto-rollback: {exc}")

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5.0)
