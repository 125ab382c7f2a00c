"""The episode lifecycle (idle -> running -> stopped -> labelled) and its JSON events.

Every transition produces one event, published on /wmpo/episode (std_msgs/String,
transient-local) and recorded in the episode's bag; bag ingest reads the label
and instruction back from these events. Schema (version 1), every key always present:

    {"schema": 1, "event": "start" | "stop" | "label" | "reset",
     "episode_id": str, "instruction": str, "policy_version": str,
     "task": str, "seed": int, "start_stamp": float | null, "stop_stamp": float | null,
     "label": "success" | "failure" | null, "labelled_by": str | null,
     "reason": str, "stamp": float}

Stamps are ROS time in seconds. A label may come while running (it also stops the
episode) or after the stop; the last label wins.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from wmpo_core.errors import WmpoError

SCHEMA_VERSION = 1
EVENTS = ("start", "stop", "label", "reset")
LABELS = ("success", "failure")
IDLE, RUNNING, STOPPED = "idle", "running", "stopped"


class EpisodeError(WmpoError):
    """A command that does not fit the episode's current state."""


@dataclass
class EpisodeEvent:
    event: str
    episode_id: str
    instruction: str
    policy_version: str
    task: str
    seed: int
    start_stamp: float | None
    stop_stamp: float | None
    label: str | None
    labelled_by: str | None
    reason: str
    stamp: float
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def parse_event(text: str) -> EpisodeEvent:
    """JSON text -> EpisodeEvent, refusing anything that is not schema 1."""
    try:
        data: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EpisodeError(f"/wmpo/episode: not JSON ({exc}): {text[:80]!r}") from None
    if data.get("schema") != SCHEMA_VERSION:
        raise EpisodeError(
            f"/wmpo/episode: expected schema {SCHEMA_VERSION}, got {data.get('schema')!r}"
        )
    fields = set(EpisodeEvent.__dataclass_fields__)
    missing = fields - set(data)
    if missing:
        raise EpisodeError(f"/wmpo/episode: event lacks keys {sorted(missing)}")
    if data["event"] not in EVENTS:
        raise EpisodeError(f"/wmpo/episode: unknown event '{data['event']}', expected {EVENTS}")
    return EpisodeEvent(**{k: data[k] for k in fields})


class EpisodeTracker:
    """The state machine. Methods return the event to publish or raise EpisodeError."""

    def __init__(self, task: str = "", seed: int = 0, max_duration_s: float = 0.0):
        if max_duration_s < 0:
            raise ValueError(f"max_duration_s must be >= 0 (0 = no limit), got {max_duration_s}")
        self.task = task
        self.seed = seed
        self.max_duration_s = max_duration_s
        self.state = IDLE
        self.policy_version = ""
        self.episode_id = ""
        self.instruction = ""
        self.start_stamp: float | None = None
        self.stop_stamp: float | None = None
        self.label: str | None = None
        self.labelled_by: str | None = None
        self.count = 0

    def start(self, instruction: str, now: float) -> EpisodeEvent:
        if self.state == RUNNING:
            raise EpisodeError(f"episode {self.episode_id} is running; stop it first")
        if not instruction.strip():
            raise EpisodeError("an episode needs a non-empty instruction")
        self.count += 1
        self.episode_id = f"ep{self.count:04d}-{uuid.uuid4().hex[:8]}"
        self.instruction = instruction
        self.start_stamp, self.stop_stamp = now, None
        self.label = self.labelled_by = None
        self.state = RUNNING
        return self._event("start", "", now)

    def stop(self, now: float, reason: str = "requested") -> EpisodeEvent:
        if self.state != RUNNING:
            raise EpisodeError(f"no running episode to stop (state: {self.state})")
        self.state = STOPPED
        self.stop_stamp = now
        return self._event("stop", reason, now)

    def label_episode(self, label: str, by: str, now: float) -> list[EpisodeEvent]:
        """Label the current/last episode; a running one is stopped first (two events)."""
        if label not in LABELS:
            raise EpisodeError(f"label must be one of {LABELS}, got '{label}'")
        if self.state == IDLE:
            raise EpisodeError("no episode to label (start one first)")
        events = []
        if self.state == RUNNING:
            events.append(self.stop(now, reason=f"labelled {label}"))
        self.label, self.labelled_by = label, by
        events.append(self._event("label", "", now))
        return events

    def check_timeout(self, now: float) -> EpisodeEvent | None:
        """The stop event when a running episode has passed max_duration_s."""
        if (
            self.state == RUNNING
            and self.max_duration_s > 0
            and now - self.start_stamp >= self.max_duration_s
        ):
            return self.stop(now, reason="timeout")
        return None

    def reset(self, now: float) -> EpisodeEvent:
        """Back to idle (a running episode is stopped with reason 'reset')."""
        if self.state == RUNNING:
            self.stop_stamp = now
        self.state = IDLE
        return self._event("reset", "", now)

    def _event(self, kind: str, reason: str, now: float) -> EpisodeEvent:
        return EpisodeEvent(
            event=kind,
            episode_id=self.episode_id,
            instruction=self.instruction,
            policy_version=self.policy_version,
            task=self.task,
            seed=self.seed,
            start_stamp=self.start_stamp,
            stop_stamp=self.stop_stamp,
            label=self.label,
            labelled_by=self.labelled_by,
            reason=reason,
            stamp=now,
        )


def parse_command(text: str) -> tuple[str, dict[str, Any]]:
    """A JSON command from /wmpo/episode/command -> (command, arguments).

    Accepted: {"command": "start", "instruction": "..."}, {"command": "stop"},
    {"command": "reset"}, {"command": "label", "label": "success"|"failure", "by": "..."}.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EpisodeError(f"/wmpo/episode/command: not JSON ({exc}): {text[:80]!r}") from None
    if not isinstance(data, dict) or data.get("command") not in ("start", "stop", "reset", "label"):
        raise EpisodeError(
            "/wmpo/episode/command: expected {'command': 'start'|'stop'|'reset'|'label', ...}, "
            f"got {text[:80]!r}"
        )
    return data["command"], {k: v for k, v in data.items() if k != "command"}


class EpisodeStartFrame:
    """Keeps the main camera's first frame of the episode and adds it to every observation
    as the EPISODE_START camera. The runtime holds it, not the policy, so a policy swapped
    in mid-episode still sees the episode's real first frame."""

    def __init__(self, main_camera: str):
        self.main_camera = main_camera
        self.frame = None

    def reset(self) -> None:
        """At an episode start: the next observation's frame becomes the first frame."""
        self.frame = None

    def add_to(self, images: dict) -> dict:
        """`images` with EPISODE_START added (unchanged while no main-camera frame exists)."""
        from wmpo_core.interfaces import EPISODE_START

        if self.main_camera not in images:
            return images
        if self.frame is None:
            self.frame = images[self.main_camera]
        return {**images, EPISODE_START: self.frame}
