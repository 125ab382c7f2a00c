"""The episode sidecar: `<bag>/episode.json`, the bag's human- and trainer-readable summary.

The same facts are recorded as JSON events on the episode topic inside the bag;
the sidecar saves a reader from scanning the bag to learn what an episode was,
and holds what the bag itself cannot say (how many messages were lost before
they reached the recorder, why recording stopped, whether it was repaired).

It is written atomically (temp file + fsync + rename) when the bag opens
(status 'recording') and again at close, so a recorder killed mid-episode
leaves a sidecar that says so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from wmpo_core.errors import BagError
from wmpo_core.fileio import atomic_write_json

SIDECAR_NAME = "episode.json"
SIDECAR_FORMAT = "wmpo-episode-bag/1"

# Sidecar `status` values.
STATUS_RECORDING = "recording"  # the recorder had the bag open (or was killed with it open)
STATUS_COMPLETE = "complete"  # closed after a stop event (or recorder shutdown)
STATUS_DISK_FULL = "stopped_disk_full"  # closed early by the free-disk guard; bag valid
STATUS_ERROR = "stopped_error"  # closed early after a write error; bag valid up to it
STATUS_DISCARDED = "discarded"  # the operator discarded the episode; ingest skips it
STATUS_REPAIRED = "repaired"  # `wmpo bags verify --repair` rebuilt it after a crash
STATUSES = (
    STATUS_RECORDING,
    STATUS_COMPLETE,
    STATUS_DISK_FULL,
    STATUS_ERROR,
    STATUS_DISCARDED,
    STATUS_REPAIRED,
)


@dataclass
class EpisodeSidecar:
    id: str
    """Episode id (the bag directory is named after it)."""
    task: str = ""
    """Task name, e.g. 'Lift'."""
    instruction: str = ""
    """Language instruction the policy / operator was given."""
    label: str = ""
    """Last label event: 'success', 'failure', 'demonstration', ... ('' = unlabelled)."""
    labelled_by: str = ""
    """Who labelled: 'operator', 'sim' (privileged, eval only), 'reward_model', ..."""
    kind: str = ""
    """'demonstration' (teleop / scripted expert) or 'rollout' (a policy acting)."""
    policy_version: str = ""
    """Policy version that acted ('' for demonstrations)."""
    seed: int | None = None
    """Initial-state seed (sim), when known."""
    source: str = ""
    """'sim' or 'robot'."""
    robot: str = ""
    """Robot (or sim) name from the recorder's parameters."""
    status: str = STATUS_RECORDING
    """One of STATUSES."""
    stop_reason: str = ""
    """Why recording stopped, in words (stop event, disk guard, shutdown, error)."""
    start_ns: int = 0
    """Wall-clock time the bag was opened (ns since epoch)."""
    stop_ns: int = 0
    """Wall-clock time the bag was closed (0 while recording)."""
    topics: dict[str, dict[str, Any]] = field(default_factory=dict)
    """topic -> {'type', 'rihs01', 'count'}: what was recorded."""
    lost: dict[str, int] = field(default_factory=dict)
    """topic -> messages the middleware reported lost before they reached the recorder."""
    seq_gaps: dict[str, int] = field(default_factory=dict)
    """topic -> messages missing from a topic's own sequence counter."""
    queue_dropped: dict[str, int] = field(default_factory=dict)
    """topic -> messages dropped because the write queue was full (disk too slow)."""
    files: list[str] = field(default_factory=list)
    """Storage files of the bag, in order (split files)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Every episode event seen for this episode (also recorded in the bag)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else (repair report, recorder parameters, ...)."""
    format: str = SIDECAR_FORMAT
    """Sidecar format version."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise BagError(f"episode {self.id}: sidecar status '{self.status}' not in {STATUSES}")

    @property
    def total_lost(self) -> int:
        """Every message known to be missing, whatever the cause."""
        return (
            sum(self.lost.values()) + sum(self.seq_gaps.values()) + sum(self.queue_dropped.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeSidecar:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def sidecar_path(bag: str | Path) -> Path:
    return Path(bag) / SIDECAR_NAME


def write_sidecar(bag: str | Path, sidecar: EpisodeSidecar) -> None:
    atomic_write_json(sidecar_path(bag), sidecar.to_dict())


def read_sidecar(bag: str | Path) -> EpisodeSidecar | None:
    """The bag's sidecar, or None when it has none (a bag not written by the recorder)."""
    path = sidecar_path(bag)
    if not path.is_file():
        return None
    try:
        return EpisodeSidecar.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BagError(
            f"{path}: sidecar is not valid JSON ({exc}); delete it and run "
            "`wmpo bags verify --repair` to rebuild it from the bag"
        ) from None


def event_id(event: dict[str, Any]) -> str:
    """The episode id of an event (schema 1 of wmpo_core/runtime/episode.py says 'episode_id')."""
    return str(event.get("episode_id") or event.get("id") or "")


def is_discard(event: dict[str, Any]) -> bool:
    """A discard is either {'event': 'discard'} or a label event with label 'discard'."""
    return event.get("event") == "discard" or (
        event.get("event") == "label" and event.get("label") == "discard"
    )


def apply_event(sidecar: EpisodeSidecar, event: dict[str, Any]) -> None:
    """Fold one episode event (start / stop / label / discard / reset) into the sidecar."""
    kind = event.get("event")
    for key in ("task", "instruction", "policy_version", "kind", "robot"):
        if event.get(key):
            setattr(sidecar, key, str(event[key]))
    if event.get("seed") is not None:
        try:
            sidecar.seed = int(event["seed"])
        except (TypeError, ValueError):
            pass
    if is_discard(event):
        sidecar.status = STATUS_DISCARDED
        sidecar.stop_reason = str(event.get("reason") or "discarded by the operator")
    elif kind == "label" or (kind in ("start", "stop") and event.get("label")):
        sidecar.label = str(event.get("label") or "")
        sidecar.labelled_by = str(event.get("labelled_by") or "")
