"""The episode recorder's core: episode events in, one closed bag per episode out.

ROS-free: the node (wmpo_nodes/recorder_node.py) hands it serialized bytes from
raw subscriptions and parsed episode events; everything else happens here, on
a writer thread of its own, so a slow disk never stalls the executor:

    subscription callbacks ──submit()──► queue (bounded by bytes) ──► writer thread ──► bag

Nothing is lost silently: a full queue drops the newest message and counts it
per topic (`queue_dropped`), the middleware's message-lost events are counted
(`lost`), gaps in a topic's own counter are counted (`seq_gaps`); all three go
into the sidecar and the diagnostics status. A free-disk guard closes the bag
cleanly (valid, status 'stopped_disk_full') before the disk fills and refuses
new episodes until space is freed.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

from wmpo_core.bags.metadata import (
    STATUS_COMPLETE,
    STATUS_DISCARDED,
    STATUS_DISK_FULL,
    STATUS_ERROR,
    EpisodeSidecar,
    apply_event,
    event_id,
    is_discard,
    read_sidecar,
    write_sidecar,
)
from wmpo_core.bags.reader import cdr_string
from wmpo_core.bags.writer import BagWriterConfig, EpisodeBagWriter, TopicSpec
from wmpo_core.errors import BagError
from wmpo_core.interfaces import EPISODE_TOPIC

# name -> (reliability, durability, depth). The node turns these into rclpy QoS profiles;
# the writer records them as the offered QoS so `ros2 bag play` republishes alike.
# Depth is the subscription's own history: deep, so a burst while the executor is busy is
# queued instead of overwritten (a KEEP_LAST overwrite is invisible to message_lost events).
QOS_PRESETS: dict[str, tuple[str, str, int]] = {
    "sensor_data": ("best_effort", "volatile", 100),  # cameras: matches qos_profile_sensor_data
    "reliable": ("reliable", "volatile", 100),
    "latched": ("reliable", "transient_local", 10),  # instruction, policy version, events
}
EVENTS = ("start", "stop", "label", "discard", "reset")
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.\-]")


def rosbags_qos(preset: str) -> Qos:
    reliability, durability, depth = QOS_PRESETS[preset]
    zero = QosTime(0, 0)
    return Qos(
        QosHistory.KEEP_LAST,
        depth,
        QosReliability[reliability.upper()],
        QosDurability[durability.upper()],
        zero,
        zero,
        QosLiveliness.AUTOMATIC,
        zero,
        False,
    )


@dataclass
class RecordedTopic:
    name: str
    """Topic name."""
    msgtype: str
    """ROS 2 type, e.g. sensor_msgs/msg/Image."""
    qos: str = "reliable"
    """A QOS_PRESETS key; match the publisher (cameras publish with sensor-data QoS)."""
    seq: str = ""
    """Where the topic carries its own counter, for gap counting: 'json:KEY' (std_msgs/String
    JSON payload with an integer KEY). '' = no counter."""

    def __post_init__(self) -> None:
        if self.qos not in QOS_PRESETS:
            raise ValueError(f"topic {self.name}: qos '{self.qos}' not in {sorted(QOS_PRESETS)}")
        if self.seq and not self.seq.startswith("json:"):
            raise ValueError(f"topic {self.name}: seq '{self.seq}' must look like 'json:KEY'")

    @classmethod
    def parse(cls, spec: str) -> RecordedTopic:
        """'NAME TYPE [QOS] [seq=json:KEY]' (the form used in launch/config/recorder.yaml)."""
        parts = spec.split()
        if len(parts) < 2:
            raise ValueError(f"topic spec '{spec}' needs at least 'NAME TYPE'")
        seq = next((p[4:] for p in parts[2:] if p.startswith("seq=")), "")
        rest = [p for p in parts[2:] if not p.startswith("seq=")]
        return cls(parts[0], parts[1], rest[0] if rest else "reliable", seq)


@dataclass
class RecorderConfig:
    output_dir: str
    """Directory that receives one bag directory per episode."""
    topics: list[RecordedTopic]
    """What to record; the episode topic is added when missing."""
    source: str = "sim"
    """'sim' or 'robot' (goes into every sidecar)."""
    robot: str = ""
    """Robot / sim name for the sidecar."""
    max_split_bytes: int = 512 * 1024 * 1024
    """Split the bag into a new file after this many bytes (0 = never)."""
    max_split_duration_s: float = 300.0
    """Split after this many seconds (0 = never)."""
    flush_interval_s: float = 1.0
    """Longest time recorded data stays in memory (bounds what a SIGKILL loses)."""
    min_free_bytes: int = 2 * 1024**3
    """Disk guard: stop recording cleanly when free space drops below this."""
    disk_check_interval_s: float = 0.5
    """How often the writer thread checks free space while recording."""
    max_queue_bytes: int = 256 * 1024 * 1024
    """Write-queue bound; beyond it new messages are dropped and counted."""
    discard_action: str = "mark"
    """On a discard event: 'mark' (sidecar status 'discarded'; ingest skips) or 'delete'."""
    episode_topic: str = EPISODE_TOPIC
    preroll_s: float = 1.0
    """Messages received up to this long before a start event is handled are kept, and
    those received after the event's own stamp go into the bag: the first commands of an
    episode can reach the recorder before its start event does (different topics)."""
    postroll_s: float = 1.0
    """After a stop or reset event the bag stays open this long for messages sent before
    the event's stamp but delivered after it: topics race, and a busy executor hands a
    backlog of commands over after the stop event that followed them. 0 = close at once."""

    def __post_init__(self) -> None:
        if self.discard_action not in ("mark", "delete"):
            raise ValueError(
                f"discard_action must be 'mark' or 'delete', got '{self.discard_action}'"
            )
        for name in ("preroll_s", "postroll_s"):
            value = getattr(self, name)
            if not 0 <= value < 60:
                raise ValueError(f"{name} must be in [0, 60) seconds, got {value}")
        if self.min_free_bytes < 0 or self.max_queue_bytes <= 0:
            raise ValueError(
                f"min_free_bytes ({self.min_free_bytes}) must be >= 0 and "
                f"max_queue_bytes ({self.max_queue_bytes}) > 0"
            )
        names = [t.name for t in self.topics]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate topics: {names}")
        if self.episode_topic not in names:
            self.topics.append(RecordedTopic(self.episode_topic, "std_msgs/msg/String", "latched"))

    def writer_config(self) -> BagWriterConfig:
        return BagWriterConfig(
            self.max_split_bytes, self.max_split_duration_s, self.flush_interval_s
        )


@dataclass
class _Episode:
    writer: EpisodeBagWriter
    sidecar: EpisodeSidecar
    lost_at_open: dict[str, int]
    replayed: bool
    """The start event predates this recorder (a transient-local replay)."""
    data_messages: int = 0
    latched_written: dict[str, int] = field(default_factory=dict)
    """topic -> receive time of the latched message copied in at the start (not twice)."""
    seq_gaps: dict[str, int] = field(default_factory=dict)
    queue_dropped: dict[str, int] = field(default_factory=dict)
    closing: tuple[str, str, int, float] | None = None
    """(status, reason, boundary ns, monotonic deadline) once a stop or reset arrived: data
    sent up to the boundary still goes in until the deadline, then the bag closes."""


Log = Callable[[str, str], None]  # (level: 'info' | 'warn' | 'error', text)


class EpisodeRecorder:
    """Thread-safe front (`submit*`, `count_lost`, `status`) over a single writer thread."""

    def __init__(self, config: RecorderConfig, log: Log | None = None):
        self.config = config
        self.out = Path(config.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.topics = {t.name: t for t in config.topics}
        self._specs = [TopicSpec(t.name, t.msgtype, [rosbags_qos(t.qos)]) for t in config.topics]
        self._log = log or (lambda level, text: None)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._queued_bytes = 0
        self._lost: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._latched: dict[str, tuple[int, bytes]] = {}
        self._last_seq: dict[str, int] = {}
        self._episode: _Episode | None = None
        # (recv_ns, sent_ns, topic, data, seq gap) received while no episode was open.
        self._preroll: deque[tuple[int, int, str, bytes, int]] = deque()
        self._preroll_ns = int(config.preroll_s * 1e9)
        self._state = "idle"
        self._last_error = ""
        self._free_bytes = shutil.disk_usage(self.out).free
        self._bags_closed: list[Path] = []
        self._started_ns = time.time_ns()
        self._thread = threading.Thread(target=self._run, name="bag-writer", daemon=True)
        self._thread.start()

    # -- called from subscription callbacks (any thread) -------------------------------
    def submit(self, topic: str, data: bytes, recv_ns: int, sent_ns: int = 0) -> None:
        """A serialized message received at `recv_ns` (written as its bag time). `sent_ns`
        is the publisher's send time where the middleware reports it (0 = unknown): it
        places a message that was delivered late on the right side of a start or stop."""
        if self.topics[topic].qos == "latched":
            with self._lock:
                self._latched[topic] = (recv_ns, data)
        with self._lock:
            if self._queued_bytes + len(data) > self.config.max_queue_bytes:
                self._dropped[topic] = self._dropped.get(topic, 0) + 1
                return
            self._queued_bytes += len(data)
        self._queue.put(("msg", topic, data, recv_ns, sent_ns or recv_ns))

    def submit_event(self, data: bytes, recv_ns: int) -> None:
        """An episode event message (std_msgs/String JSON) as received."""
        self._queue.put(("event", self.config.episode_topic, data, recv_ns, recv_ns))

    def count_lost(self, topic: str, n: int) -> None:
        """The middleware reported `n` messages lost on `topic` (message_lost event)."""
        with self._lock:
            self._lost[topic] = self._lost.get(topic, 0) + n

    def status(self) -> dict[str, Any]:
        """A snapshot for /diagnostics."""
        with self._lock:
            ep = self._episode
            return {
                "state": self._state,
                "episode": ep.sidecar.id if ep else "",
                "episode_messages": sum(ep.writer.counts.values()) if ep else 0,
                "episode_topic_messages": dict(ep.writer.counts) if ep else {},
                "queue_messages": self._queue.qsize(),
                "queue_bytes": self._queued_bytes,
                "lost": dict(self._lost),
                "queue_dropped": dict(self._dropped),
                "seq_gaps": dict(ep.seq_gaps) if ep else {},
                "free_bytes": self._free_bytes,
                "bags_closed": len(self._bags_closed),
                "last_error": self._last_error,
            }

    @property
    def bags_closed(self) -> list[Path]:
        with self._lock:
            return list(self._bags_closed)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until the queue is drained and a stopped episode's bag is closed (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                closing = self._episode is not None and self._episode.closing is not None
            if self._queue.unfinished_tasks == 0 and not closing:
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        """Drain the queue, close an open bag (status complete, reason 'shutdown'), stop."""
        if self._thread.is_alive():
            self._queue.put(("shutdown", "", b"", time.time_ns(), 0))
            self._thread.join()

    # -- writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        last_disk_check = 0.0
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = None
            try:
                if item is not None and item[0] == "shutdown":
                    if not self._finish_closing():
                        self._close_episode(STATUS_COMPLETE, "recorder shut down mid-episode")
                    return
                if item is not None:
                    self._handle(item)
                now = time.monotonic()
                ep = self._episode
                if ep is not None and ep.closing is not None and now >= ep.closing[3]:
                    self._finish_closing()
                if self._episode is not None:
                    if now - last_disk_check >= self.config.disk_check_interval_s:
                        last_disk_check = now
                        self._check_disk()
                    if self._episode is not None and item is None:
                        self._episode.writer.flush()  # idle: push the open chunk out
            except Exception as exc:  # a write error must close the bag, not kill the thread
                self._fail(exc)
            finally:
                if item is not None:
                    self._queue.task_done()

    def _handle(self, item: tuple[str, str, bytes, int, int]) -> None:
        kind, topic, data, recv_ns, sent_ns = item
        if kind == "event":
            self._on_event(data, recv_ns)
            return
        with self._lock:
            self._queued_bytes -= len(data)
        ep = self._episode
        gap = self._seq_gap(topic, data)
        if ep is not None and ep.closing is not None and sent_ns > ep.closing[2]:
            ep = None  # sent after the stop: it may belong to the next episode
        if ep is None:
            self._keep_preroll(topic, data, recv_ns, sent_ns, gap)
            return
        if ep.latched_written.get(topic) == recv_ns:
            return  # already copied into the bag at the start (it raced the start event)
        self._write_data(ep, topic, data, recv_ns, gap)

    def _write_data(self, ep: _Episode, topic: str, data: bytes, recv_ns: int, gap: int) -> None:
        if gap:
            ep.seq_gaps[topic] = ep.seq_gaps.get(topic, 0) + gap
        ep.writer.write(topic, recv_ns, data)
        ep.data_messages += 1

    def _keep_preroll(self, topic: str, data: bytes, recv_ns: int, sent_ns: int, gap: int) -> None:
        if self.topics[topic].qos == "latched" or not self._preroll_ns:
            return  # latched values are copied in at the start anyway
        self._preroll.append((recv_ns, sent_ns, topic, data, gap))
        while self._preroll[0][0] < recv_ns - self._preroll_ns:
            self._preroll.popleft()

    def _write_preroll(self, ep: _Episode, event: dict[str, Any], recv_ns: int) -> int:
        """Write what was sent after the start event was published but handled before it;
        nothing when the event's stamp is not on this clock (sim time)."""
        stamp = _stamp_ns(event)
        on_this_clock = recv_ns - self._preroll_ns <= stamp <= recv_ns
        early = [m for m in self._preroll if on_this_clock and m[1] >= stamp]
        self._preroll.clear()
        for t_ns, _sent, topic, data, gap in early:
            self._write_data(ep, topic, data, t_ns, gap)
        return len(early)

    def _seq_gap(self, topic: str, data: bytes) -> int:
        spec = self.topics[topic].seq
        if not spec:
            return 0
        try:
            seq = int(json.loads(cdr_string(data))[spec[5:]])
        except (ValueError, KeyError, TypeError, BagError):
            return 0
        last = self._last_seq.get(topic)
        self._last_seq[topic] = seq
        return max(0, seq - last - 1) if last is not None and seq > last else 0

    # -- events -------------------------------------------------------------------------
    def _on_event(self, data: bytes, recv_ns: int) -> None:
        try:
            event = json.loads(cdr_string(data))
            if not isinstance(event, dict) or event.get("event") not in EVENTS:
                raise ValueError(f"'event' must be one of {EVENTS}")
        except (ValueError, BagError) as exc:
            self._log("warn", f"{self.config.episode_topic}: ignored a malformed event ({exc})")
            return
        kind, eid = event["event"], _safe_id(event_id(event))
        ep = self._episode
        if kind == "start":
            self._start(event, eid, data, recv_ns)
        elif ep is not None and (not eid or eid == ep.sidecar.id):
            ep.writer.write(self.config.episode_topic, recv_ns, data)
            ep.sidecar.events.append(event)
            apply_event(ep.sidecar, event)
            if is_discard(event):
                self._close_episode(STATUS_DISCARDED, ep.sidecar.stop_reason)
            elif kind in ("stop", "reset") and ep.closing is None:
                reason = str(event.get("reason") or f"{kind} event")
                self._begin_closing(ep, reason, event, recv_ns)
        elif kind == "reset":
            return
        elif kind in ("label", "discard") and eid:
            self._amend_closed(eid, event)
        elif ep is not None:
            self._log(
                "warn", f"{kind} event for '{eid}' while recording '{ep.sidecar.id}': ignored"
            )

    def _start(self, event: dict[str, Any], eid: str, data: bytes, recv_ns: int) -> None:
        if self._episode is not None and not self._finish_closing():
            self._close_episode(STATUS_COMPLETE, "a new episode started before a stop event")
        eid = eid or time.strftime("ep_%Y%m%d_%H%M%S", time.gmtime())
        bag = self.out / eid
        if bag.exists():
            self._log("info", f"episode '{eid}' already has a bag at {bag}; start event ignored")
            return
        free = shutil.disk_usage(self.out).free
        self._free_bytes = free
        if free < self.config.min_free_bytes:
            self._state = "disk_full"
            self._last_error = (
                f"not recording episode '{eid}': {free / 1e9:.2f} GB free in {self.out} < "
                f"min_free_bytes {self.config.min_free_bytes / 1e9:.2f} GB; free disk space"
            )
            self._log("error", self._last_error)
            return
        writer = EpisodeBagWriter(bag, self._specs, self.config.writer_config())
        sidecar = EpisodeSidecar(
            id=eid,
            source=self.config.source,
            robot=self.config.robot,
            start_ns=time.time_ns(),
            topics={
                s.name: {"type": s.msgtype, "rihs01": s.definition()[1], "count": 0}
                for s in self._specs
            },
        )
        sidecar.events.append(event)
        apply_event(sidecar, event)
        with self._lock:
            lost = dict(self._lost)
            self._dropped.clear()  # drops while idle were not episode data
            latched = {t: v for t, v in self._latched.items() if t != self.config.episode_topic}
            self._episode = _Episode(writer, sidecar, lost, _stamp_ns(event) < self._started_ns)
            self._state = "recording"
        write_sidecar(bag, sidecar)
        writer.write(self.config.episode_topic, recv_ns, data)
        # Latched topics (instruction, policy version) were published once, maybe long ago:
        # the bag starts with their latest value so it is self-contained.
        for topic, (latched_ns, payload) in latched.items():
            writer.write(topic, recv_ns, payload)
            self._episode.latched_written[topic] = latched_ns
        early = self._write_preroll(self._episode, event, recv_ns)
        note = f" ({early} messages that arrived before the start event)" if early else ""
        self._log("info", f"recording episode '{eid}' -> {bag}{note}")

    def _amend_closed(self, eid: str, event: dict[str, Any]) -> None:
        """A label / discard for an episode whose bag is already closed: update its sidecar."""
        bag = self.out / eid
        sidecar = read_sidecar(bag) if bag.is_dir() else None
        if sidecar is None:
            self._log("warn", f"{event['event']} event for unknown episode '{eid}': ignored")
            return
        sidecar.events.append(event)
        apply_event(sidecar, event)
        sidecar.extra.setdefault("amended_after_close", []).append(event.get("event"))
        write_sidecar(bag, sidecar)
        if is_discard(event) and self.config.discard_action == "delete":
            shutil.rmtree(bag)
            self._log("info", f"episode '{eid}' discarded: deleted {bag}")

    # -- closing ------------------------------------------------------------------------
    def _begin_closing(self, ep: _Episode, reason: str, event: dict[str, Any], recv_ns: int):
        """Keep the bag open `postroll_s` for data sent before the stop's stamp (on this
        clock; otherwise before the stop was handled)."""
        if not self.config.postroll_s:
            self._close_episode(STATUS_COMPLETE, reason)
            return
        stamp = _stamp_ns(event)
        window = int(self.config.postroll_s * 1e9)
        boundary = stamp if recv_ns - window <= stamp <= recv_ns else recv_ns
        ep.closing = (STATUS_COMPLETE, reason, boundary, time.monotonic() + self.config.postroll_s)

    def _finish_closing(self) -> bool:
        """Close a bag whose stop already arrived; False when none is waiting to close."""
        ep = self._episode
        if ep is None or ep.closing is None:
            return False
        self._close_episode(ep.closing[0], ep.closing[1])
        return True

    def _close_episode(self, status: str, reason: str) -> None:
        ep = self._episode
        if ep is None:
            return
        writer, sidecar = ep.writer, ep.sidecar
        try:
            writer.close()
        finally:
            with self._lock:
                self._episode = None
                if self._state == "recording":
                    self._state = "idle"
                lost = {
                    t: n - ep.lost_at_open.get(t, 0)
                    for t, n in self._lost.items()
                    if n - ep.lost_at_open.get(t, 0)
                }
                dropped = dict(self._dropped)
                self._dropped.clear()
        sidecar.status = status
        sidecar.stop_reason = reason
        sidecar.stop_ns = time.time_ns()
        sidecar.lost, sidecar.seq_gaps, sidecar.queue_dropped = lost, ep.seq_gaps, dropped
        sidecar.files = list(writer.files)
        for topic, n in writer.counts.items():
            sidecar.topics[topic]["count"] = n
        if ep.replayed and ep.data_messages == 0 and status != STATUS_DISK_FULL:
            # A transient-local replay of an episode that ended before this recorder started.
            shutil.rmtree(writer.path)
            self._log("info", f"episode '{sidecar.id}' was a replayed event; no bag kept")
            return
        if status == STATUS_DISCARDED and self.config.discard_action == "delete":
            shutil.rmtree(writer.path)
            self._log("info", f"episode '{sidecar.id}' discarded: deleted {writer.path}")
            return
        write_sidecar(writer.path, sidecar)
        with self._lock:
            self._bags_closed.append(writer.path)
        missing = sidecar.total_lost
        level = "warn" if missing or status != STATUS_COMPLETE else "info"
        self._log(
            level,
            f"closed episode '{sidecar.id}' ({status}: {reason}); "
            f"{sum(writer.counts.values())} messages, {missing} known missing",
        )

    def _check_disk(self) -> None:
        free = shutil.disk_usage(self.out).free
        self._free_bytes = free
        if free >= self.config.min_free_bytes:
            return
        self._last_error = (
            f"disk guard: {free / 1e9:.2f} GB free in {self.out} < min_free_bytes "
            f"{self.config.min_free_bytes / 1e9:.2f} GB; recording stopped, bag closed and valid"
        )
        self._close_episode(STATUS_DISK_FULL, self._last_error)
        self._state = "disk_full"
        self._log("error", self._last_error)

    def _fail(self, exc: Exception) -> None:
        self._last_error = f"write failed: {type(exc).__name__}: {exc}"
        self._log("error", self._last_error)
        try:
            self._close_episode(STATUS_ERROR, self._last_error)
        except Exception as close_exc:  # the bag stays unclosed: `wmpo bags verify --repair`
            self._log(
                "error", f"could not close the bag ({close_exc}); run wmpo bags verify --repair"
            )
            with self._lock:
                self._episode = None
        self._state = "error"


def _safe_id(value: Any) -> str:
    return _SAFE_ID.sub("_", str(value)) if value not in (None, "") else ""


def _stamp_ns(event: dict[str, Any]) -> int:
    """Event 'stamp' as ns since epoch (accepts seconds as a float or ns as an int)."""
    try:
        stamp = float(event.get("stamp", 0) or 0)
    except (TypeError, ValueError):
        return time.time_ns()
    if stamp <= 0:
        return time.time_ns()
    return int(stamp if stamp > 1e14 else stamp * 1e9)
