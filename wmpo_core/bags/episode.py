"""Bag -> training episode: frames decoded and resized, actions aligned to frames.

Alignment (docs/data.md): each camera frame t gets the command nearest in time
within `tolerance_ns`. Commands come either from the arm command topics
(TwistStamped + gripper, turned back into the policy's normalized EE space with
commands.twist_to_ee_action) or, when a bag has none, from the executed action
chunks (one point per action, at header.stamp + time_from_start).

Clocks: twist commands and frames are compared on the recorder's receive time
(one clock for every topic); chunks carry the observation's header stamp, so in
chunk mode frames are compared on their header stamps too.

A frame with no command within the tolerance is a gap: it gets zero motion and
the last gripper command, and its index is reported in meta.extra['alignment'].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wmpo_core.bags.metadata import EpisodeSidecar, read_sidecar
from wmpo_core.bags.reader import RawMessage, cdr_string, deserialize, iter_messages
from wmpo_core.commands import twist_to_ee_action
from wmpo_core.errors import BagError
from wmpo_core.images import image_fields_to_rgb, resize_rgb
from wmpo_core.interfaces import (
    ACTION_CHUNK_TOPIC,
    CAMERA_TOPIC,
    DEFAULT_CONTROL_RATE_HZ,
    EE_ACTION_DIM,
    EE_ACTION_NAMES,
    EPISODE_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    INSTRUCTION_TOPIC,
    TWIST_COMMAND_TOPIC,
)
from wmpo_core.store import EpisodeMeta

ACTION_SOURCES = ("auto", "twist", "chunk")
MATCHES = ("nearest", "next")


@dataclass
class IngestConfig:
    image_size: int = 64
    """Stored frames are image_size x image_size RGB."""
    tolerance_ms: float = 60.0
    """A frame takes the nearest command within this many ms (default: ~1 control period)."""
    rate_hz: float = DEFAULT_CONTROL_RATE_HZ
    """Control rate that turns twist velocities back into per-step normalized actions."""
    camera_topic: str = CAMERA_TOPIC
    actions: str = "auto"
    """'twist' (arm commands), 'chunk' (executed action chunks) or 'auto' (twist if present)."""
    match: str = "nearest"
    """'nearest' command in time, or 'next': the first command at or after the frame (causal:
    the command computed from frame t cannot precede it; use it when commands lag frames by
    more than half a frame period, e.g. a wall-clock sim with an unsynchronised teleop)."""

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.tolerance_ms < 0 or self.rate_hz <= 0:
            raise ValueError(
                f"image_size ({self.image_size}) and rate_hz ({self.rate_hz}) must be > 0, "
                f"tolerance_ms ({self.tolerance_ms}) >= 0"
            )
        if self.actions not in ACTION_SOURCES:
            raise ValueError(f"actions must be one of {ACTION_SOURCES}, got '{self.actions}'")
        if self.match not in MATCHES:
            raise ValueError(f"match must be one of {MATCHES}, got '{self.match}'")


@dataclass
class Alignment:
    actions: np.ndarray
    """float32 [T, 7]."""
    gap_frames: list[int] = field(default_factory=list)
    """Frames without a command within the tolerance."""
    max_offset_ms: float = 0.0
    """Largest |frame time - command time| among aligned frames."""


def align_actions(
    frame_ns: np.ndarray,
    cmd_ns: np.ndarray,
    cmd_motion: np.ndarray,
    grip_ns: np.ndarray,
    grip_values: np.ndarray,
    tolerance_ns: int,
    match: str = "nearest",
) -> Alignment:
    """Nearest (or next, see IngestConfig.match) motion command per frame within the
    tolerance; the gripper holds its last value.

    cmd_motion: [N, 6] normalized motion at cmd_ns (sorted); grip_values at grip_ns (sorted).
    """
    t = len(frame_ns)
    out = np.zeros((t, EE_ACTION_DIM), dtype=np.float32)
    gaps: list[int] = []
    max_off = 0
    for i, ft in enumerate(frame_ns):
        j = _nearest(cmd_ns, ft) if match == "nearest" else _next(cmd_ns, ft)
        if j is None or abs(int(cmd_ns[j]) - int(ft)) > tolerance_ns:
            gaps.append(i)
            ref = ft
        else:
            out[i, :6] = cmd_motion[j]
            max_off = max(max_off, abs(int(cmd_ns[j]) - int(ft)))
            ref = cmd_ns[j]
        # Gripper: the last gripper command at or before the motion command (+ tolerance,
        # since both are sent together and may arrive in either order).
        k = np.searchsorted(grip_ns, ref + tolerance_ns, side="right") - 1
        out[i, 6] = grip_values[k] if k >= 0 else -1.0
    return Alignment(out, gaps, max_off / 1e6)


def _nearest(times: np.ndarray, t: int) -> int | None:
    if len(times) == 0:
        return None
    j = int(np.searchsorted(times, t))
    if j == 0:
        return 0
    if j == len(times):
        return j - 1
    return j if times[j] - t < t - times[j - 1] else j - 1


def _next(times: np.ndarray, t: int) -> int | None:
    j = int(np.searchsorted(times, t, side="left"))
    return j if j < len(times) else None


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def load_episode(
    bag: str | Path, config: IngestConfig
) -> tuple[EpisodeMeta, np.ndarray, np.ndarray]:
    """Read one bag into (meta without source fields, frames [T,S,S,3] uint8, actions [T,7])."""
    bag = Path(bag)
    topics = [config.camera_topic, TWIST_COMMAND_TOPIC, GRIPPER_COMMAND_TOPIC]
    topics += [ACTION_CHUNK_TOPIC, EPISODE_TOPIC, INSTRUCTION_TOPIC]
    frames, f_log, f_hdr = [], [], []
    twists: list[tuple[int, np.ndarray]] = []
    grips: list[tuple[int, float]] = []
    chunks: list[RawMessage] = []
    events: list[dict[str, Any]] = []
    instruction = ""
    for msg in iter_messages(bag, topics):
        if msg.topic == config.camera_topic:
            img = deserialize(msg)
            rgb = image_fields_to_rgb(
                img.height, img.width, img.encoding, img.step, img.data, config.camera_topic
            )
            frames.append(resize_rgb(rgb, config.image_size))
            f_log.append(msg.log_ns)
            f_hdr.append(_stamp_ns(img.header))
        elif msg.topic == TWIST_COMMAND_TOPIC:
            tw = deserialize(msg).twist
            lin = (tw.linear.x, tw.linear.y, tw.linear.z)
            ang = (tw.angular.x, tw.angular.y, tw.angular.z)
            twists.append((msg.log_ns, twist_to_ee_action(lin, ang, 0.0, config.rate_hz)[:6]))
        elif msg.topic == GRIPPER_COMMAND_TOPIC:
            grips.append((msg.log_ns, float(deserialize(msg).data)))
        elif msg.topic == ACTION_CHUNK_TOPIC:
            chunks.append(msg)
        elif msg.topic == EPISODE_TOPIC:
            events.append(_json(msg))
        elif msg.topic == INSTRUCTION_TOPIC:
            instruction = cdr_string(msg.data)
    if not frames:
        raise BagError(f"{bag}: no frames on {config.camera_topic}; check --camera")
    source = config.actions
    if source == "auto":
        source = "twist" if twists else "chunk"
    if source == "twist":
        if not twists:
            raise BagError(f"{bag}: no {TWIST_COMMAND_TOPIC} commands; try --actions chunk")
        cmd_ns = np.array([t for t, _ in twists], dtype=np.int64)
        motion = np.array([m for _, m in twists])
        frame_ns = np.array(f_log, dtype=np.int64)
    else:
        cmd_ns, motion, g_ns, g_val = _chunk_timeline(chunks, bag)
        grips = list(zip(g_ns.tolist(), g_val.tolist(), strict=True))
        frame_ns = np.array(f_hdr, dtype=np.int64)
    order = np.argsort(cmd_ns, kind="stable")
    grips.sort(key=lambda g: g[0])
    aligned = align_actions(
        frame_ns,
        cmd_ns[order],
        motion[order],
        np.array([g[0] for g in grips], dtype=np.int64),
        np.array([g[1] for g in grips], dtype=np.float64),
        int(config.tolerance_ms * 1e6),
        config.match,
    )
    meta = _meta(bag, read_sidecar(bag), events, instruction, frame_ns)
    meta.extra["alignment"] = {
        "action_source": source,
        "match": config.match,
        "tolerance_ms": config.tolerance_ms,
        "gap_frames": aligned.gap_frames,
        "n_gaps": len(aligned.gap_frames),
        "max_offset_ms": round(aligned.max_offset_ms, 3),
        "rate_hz": config.rate_hz,
    }
    return meta, np.stack(frames), aligned.actions


def _chunk_timeline(chunks: list[RawMessage], bag: Path):
    """Executed action chunks -> (times, motion [N,6], gripper times, gripper values).

    Later chunks replace earlier ones from their first point on (the executor switches
    to the newest chunk), so only points before the next chunk's start are kept."""
    if not chunks:
        raise BagError(f"{bag}: neither arm commands nor {ACTION_CHUNK_TOPIC}; nothing to align")
    parsed = []
    for msg in chunks:
        traj = deserialize(msg)
        t0 = _stamp_ns(traj.header)
        pts = [
            (
                t0 + int(p.time_from_start.sec) * 1_000_000_000 + int(p.time_from_start.nanosec),
                np.asarray(p.positions, dtype=np.float64),
            )
            for p in traj.points
        ]
        parsed.append((t0, pts))
    parsed.sort(key=lambda c: c[0])
    times, actions = [], []
    for i, (_t0, pts) in enumerate(parsed):
        end = parsed[i + 1][0] if i + 1 < len(parsed) else None
        for t, a in pts:
            if end is None or t < end:
                times.append(t)
                actions.append(a)
    acts = np.array(actions)
    if acts.ndim != 2 or acts.shape[1] != EE_ACTION_DIM:
        raise BagError(f"{bag}: action chunk points have shape {acts.shape}, expected [*, 7]")
    t = np.array(times, dtype=np.int64)
    return t, acts[:, :6], t, acts[:, 6]


def _json(msg: RawMessage) -> dict[str, Any]:
    import json

    try:
        return json.loads(cdr_string(msg.data))
    except (ValueError, BagError):
        return {}


def _meta(
    bag: Path,
    side: EpisodeSidecar | None,
    events: list[dict[str, Any]],
    instruction: str,
    frame_ns: np.ndarray,
) -> EpisodeMeta:
    if side is None:  # a bag from elsewhere: rebuild what the sidecar would say from events
        from wmpo_core.bags.metadata import apply_event

        side = EpisodeSidecar(id=bag.name)
        for e in events:
            apply_event(side, e)
    label = side.label
    success = True if label == "success" else False if label == "failure" else None
    kind = side.kind or ("rollout" if side.policy_version else "demonstration")
    dt = np.diff(frame_ns) / 1e9
    fps = float(1.0 / np.median(dt)) if len(dt) and np.median(dt) > 0 else 0.0
    return EpisodeMeta(
        id=side.id or bag.name,
        task=side.task,
        instruction=side.instruction or instruction,
        success=success,
        kind=kind,
        policy_version=side.policy_version,
        labelled_by=side.labelled_by,
        seed=side.seed,
        fps=round(fps, 3),
        action_names=list(EE_ACTION_NAMES),
        extra={
            "bag_status": side.status,
            "label": label,
            "lost_messages": side.total_lost,
            "source_kind": side.source,
            "robot": side.robot,
        },
    )
