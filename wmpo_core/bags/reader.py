"""Read episode bags: raw messages in time order, decoded messages, and a one-look summary.

Reading goes through `rosbags` (no ROS install needed on the trainer). Damaged
bags raise BagError with the bag's path and the fix (`wmpo bags verify --repair`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError

from wmpo_core.bags.metadata import EpisodeSidecar, read_sidecar
from wmpo_core.bags.writer import METADATA_NAME, typestore
from wmpo_core.errors import BagError


@dataclass
class RawMessage:
    topic: str
    msgtype: str
    log_ns: int
    """Receive time at the recorder (ns since epoch): the bag's own timestamp."""
    data: bytes
    """CDR bytes, exactly as they came off the wire."""


def cdr_string(data: bytes) -> str:
    """Decode a std_msgs/String without a typestore (4-byte CDR header, u32 length, NUL)."""
    if len(data) < 8:
        raise BagError(f"std_msgs/String CDR needs >= 8 bytes, got {len(data)}")
    order = "<" if data[1] == 1 else ">"
    (n,) = struct.unpack(order + "I", data[4:8])
    if n == 0 or 8 + n > len(data):
        raise BagError(f"std_msgs/String CDR length {n} does not fit in {len(data)} bytes")
    return data[8 : 8 + n - 1].decode("utf-8")


def deserialize(msg: RawMessage) -> Any:
    """A rosbags message object (attribute access like an rclpy message)."""
    return typestore().deserialize_cdr(msg.data, msg.msgtype)


def open_reader(bag: str | Path) -> Reader:
    bag = Path(bag)
    if not (bag / METADATA_NAME).is_file():
        raise BagError(
            f"{bag}: no metadata.yaml (recorder killed, or not a bag); "
            "run `wmpo bags verify --repair` on it"
        )
    try:
        reader = Reader(bag)
        reader.open()
    except (ReaderError, OSError, KeyError, ValueError) as exc:
        raise BagError(f"{bag}: unreadable bag ({exc}); run `wmpo bags verify` on it") from None
    return reader


def iter_messages(bag: str | Path, topics: Iterable[str] | None = None) -> Iterator[RawMessage]:
    """Every message (optionally of some topics) in log-time order."""
    wanted = set(topics) if topics is not None else None
    reader = open_reader(bag)
    try:
        conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
        for conn, log_ns, data in reader.messages(connections=conns):
            yield RawMessage(conn.topic, conn.msgtype, log_ns, bytes(data))
    except (ReaderError, OSError, ValueError) as exc:
        raise BagError(f"{bag}: read failed ({exc}); run `wmpo bags verify` on it") from None
    finally:
        reader.close()


@dataclass
class BagInfo:
    path: Path
    duration_s: float
    start_ns: int
    message_count: int
    topics: dict[str, tuple[str, int]] = field(default_factory=dict)
    """topic -> (type, message count)."""
    size_bytes: int = 0
    files: list[str] = field(default_factory=list)
    sidecar: EpisodeSidecar | None = None


def bag_size(bag: Path) -> int:
    return sum(p.stat().st_size for p in Path(bag).rglob("*") if p.is_file())


def bag_info(bag: str | Path) -> BagInfo:
    """Summary from metadata.yaml and the sidecar (does not read messages)."""
    bag = Path(bag)
    reader = open_reader(bag)
    try:
        topics = {name: (t.msgtype or "", t.msgcount) for name, t in reader.topics.items()}
        return BagInfo(
            path=bag,
            duration_s=reader.duration / 1e9 if reader.message_count else 0.0,
            start_ns=reader.start_time if reader.message_count else 0,
            message_count=reader.message_count,
            topics=topics,
            size_bytes=bag_size(bag),
            files=_file_names(bag),
            sidecar=read_sidecar(bag),
        )
    finally:
        reader.close()


def _file_names(bag: Path) -> list[str]:
    info = yaml.safe_load((bag / METADATA_NAME).read_text())["rosbag2_bagfile_information"]
    return [Path(p).name for p in info["relative_file_paths"]]


def find_bags(roots: Iterable[str | Path]) -> list[Path]:
    """Bag directories under each root (a root may itself be a bag)."""
    found: list[Path] = []
    for root in map(Path, roots):
        if _looks_like_bag(root):
            found.append(root)
        elif root.is_dir():
            found += sorted(p for p in root.iterdir() if p.is_dir() and _looks_like_bag(p))
    return found


def _looks_like_bag(p: Path) -> bool:
    return p.is_dir() and (
        (p / METADATA_NAME).is_file() or (p / "episode.json").is_file() or any(p.glob("*.mcap"))
    )
