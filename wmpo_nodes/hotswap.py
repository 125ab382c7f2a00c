"""policy_node's registry watch: a background thread that vets and hands over new versions.

The thread polls the registry's `promoted.json`; for a new version it runs
`wmpo_core.runtime.hotswap.prepare_candidate` (verify, load, contract, warm-up) off
the control path and, only when that passes, calls `install(candidate)`, which the
node implements as one reference swap between chunks. A refused version is reported
once and the running policy stays; it is retried only if promoted again later.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from wmpo_core.errors import WmpoError
from wmpo_core.policy_api import ChunkPolicy, Observation
from wmpo_core.runtime.hotswap import RegistryWatcher, RobotContract, prepare_candidate


class RegistryHotSwapper:
    def __init__(
        self,
        root: Path,
        current_version: str,
        load: Callable[[Path], ChunkPolicy],
        contract: RobotContract,
        install: Callable[[ChunkPolicy], None],
        log_info: Callable[[str], None],
        log_error: Callable[[str], None],
        poll_s: float = 1.0,
        warmup_observations: int = 4,
    ):
        self.watcher = RegistryWatcher(root)
        self.watcher.current = current_version
        self.watcher.poll()  # remember the pointer as it is now
        self.root = root
        self.load = load
        self.contract = contract
        self.install = install
        self.log_info = log_info
        self.log_error = log_error
        self.poll_s = poll_s
        self.recent: deque[Observation] = deque(maxlen=warmup_observations)
        self.swaps = 0
        self.refusals = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def remember(self, obs: Observation) -> None:
        """Recent real observations: what a candidate is warmed up on."""
        self.recent.append(obs)

    def _run(self) -> None:
        # Loading and warming up a candidate must not take CPU from the control loop on a
        # small robot computer: this thread runs at the lowest scheduling priority.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        pending: str | None = None
        while not self._stop.wait(self.poll_s):
            try:
                version = self.watcher.poll() or pending
            except WmpoError as exc:
                self._error(str(exc))
                continue
            if version is None or version == self.watcher.current:
                pending = None
                continue
            if not self.recent:
                pending = version  # nothing seen yet to warm up on: try again next poll
                continue
            pending = None
            self._try_swap(version)

    def _try_swap(self, version: str) -> None:
        try:
            candidate = prepare_candidate(
                version, self.root, self.load, self.contract, list(self.recent)
            )
        except WmpoError as exc:
            self.refusals += 1
            # Not retried on every poll: the watcher only reports a pointer that changes again.
            self._error(f"hot-swap to {version} refused, keeping {self.watcher.current}: {exc}")
            return
        previous = self.watcher.current
        self.install(candidate)
        self.watcher.current = version
        self.swaps += 1
        self.log_info(f"hot-swapped policy {previous} -> {version}")

    def _error(self, text: str) -> None:
        self.last_error = text
        self.log_error(text)
