"""Episode bag writer: one rosbag2 directory (MCAP storage) per episode, split by size/duration.

Written with `rosbags.rosbag2.Writer` (metadata version 9, MCAP storage) from
already-serialized CDR bytes, so a raw ROS subscription goes to disk without a
deserialize/serialize round trip.

Layout of a bag (the same as `ros2 bag record --max-bag-size`):

    <bag>/
      metadata.yaml          rosbag2 metadata, written last (absent => not closed)
      <bag>_0.mcap           split files, in order
      <bag>_1.mcap
      episode.json           sidecar (metadata.py)

rosbags' Writer has no splitting and always names its one file after its
directory, so each split is written by its own Writer into a hidden
sub-directory `<bag>/.<bag>_<i>/` and its file is moved up next to the others
when the split closes; metadata.yaml then lists every file. A recorder killed
mid-split leaves that sub-directory behind: verify.py treats it as the
in-progress split and salvages it.

Crash safety: rosbags' MCAP writer keeps the open chunk (up to 1 MiB) in
memory. For small, frequent messages that could be minutes of joint states, so
the open chunk is closed and flushed to the OS every `flush_interval_s`; a
SIGKILL then loses at most that much.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from rosbags.interfaces import Qos
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import dump_qos_v9
from rosbags.typesys import Stores, get_typestore

from wmpo_core.errors import BagError
from wmpo_core.fileio import atomic_write_bytes, fsync_dir

METADATA_NAME = "metadata.yaml"
# The typestore whose definitions and RIHS01 hashes match the rclpy wheels in use
# (checked against `get_publishers_info_by_topic` in tests/test_recorder.py).
TYPESTORE = Stores.ROS2_KILTED


@lru_cache(maxsize=1)
def typestore():
    return get_typestore(TYPESTORE)


@dataclass
class BagWriterConfig:
    max_split_bytes: int = 0
    """Start a new split file after this many message bytes (0 = never split on size)."""
    max_split_duration_s: float = 0.0
    """Start a new split file after this many seconds of messages (0 = never)."""
    flush_interval_s: float = 1.0
    """Close the open MCAP chunk and flush it to the OS at least this often (bounds crash loss)."""

    def __post_init__(self) -> None:
        if self.max_split_bytes < 0 or self.max_split_duration_s < 0:
            raise ValueError(
                f"split limits must be >= 0, got bytes={self.max_split_bytes} "
                f"duration={self.max_split_duration_s}"
            )
        if self.flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, got {self.flush_interval_s}")


@dataclass
class TopicSpec:
    name: str
    """Topic name, e.g. /camera/image_raw."""
    msgtype: str
    """ROS 2 type in rosbag2 form, e.g. sensor_msgs/msg/Image."""
    qos: list[Qos] = field(default_factory=list)
    """Offered QoS profiles written to metadata (so `ros2 bag play` can match them)."""
    msgdef: str | None = None
    """Message definition text; None = from the typestore."""
    rihs01: str | None = None
    """Type hash; None = from the typestore."""

    def __post_init__(self) -> None:
        if not self.name.startswith("/"):
            raise ValueError(f"topic '{self.name}' must be absolute (start with '/')")
        if (self.msgdef is None or self.rihs01 is None) and (
            self.msgtype not in typestore().fielddefs
        ):
            raise BagError(
                f"{self.name}: message type '{self.msgtype}' is unknown to the {TYPESTORE.value} "
                "typestore; give its msgdef and rihs01, or use a standard type"
            )

    def definition(self) -> tuple[str, str]:
        if self.msgdef is not None and self.rihs01 is not None:
            return self.msgdef, self.rihs01
        msgdef, _ = typestore().generate_msgdef(self.msgtype, ros_version=2)
        return msgdef, typestore().hash_rihs01(self.msgtype)


def split_dir_name(bag_name: str, index: int) -> str:
    """Hidden sub-directory in which split `index` is written (moved up when closed)."""
    return f".{bag_name}_{index}"


def split_file_name(bag_name: str, index: int) -> str:
    return f"{bag_name}_{index}.mcap"


def merge_split_metadata(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One rosbag2 `rosbag2_bagfile_information` from the per-split ones (same topics each)."""
    if not infos:
        raise BagError("no split files to describe")
    merged = dict(infos[0])
    merged["relative_file_paths"] = [p for i in infos for p in i["relative_file_paths"]]
    merged["files"] = [f for i in infos for f in i["files"]]
    counted = [i for i in infos if i["message_count"]]
    start = min((i["starting_time"]["nanoseconds_since_epoch"] for i in counted), default=0)
    end = max(
        (
            i["starting_time"]["nanoseconds_since_epoch"] + i["duration"]["nanoseconds"]
            for i in counted
        ),
        default=0,
    )
    merged["starting_time"] = {"nanoseconds_since_epoch": start}
    merged["duration"] = {"nanoseconds": max(0, end - start)}
    merged["message_count"] = sum(i["message_count"] for i in infos)
    topics: dict[str, dict[str, Any]] = {}
    for info in infos:
        for entry in info["topics_with_message_count"]:
            name = entry["topic_metadata"]["name"]
            if name in topics:
                topics[name]["message_count"] += entry["message_count"]
            else:
                topics[name] = {
                    "topic_metadata": dict(entry["topic_metadata"]),
                    "message_count": entry["message_count"],
                }
    merged["topics_with_message_count"] = list(topics.values())
    return merged


def write_bag_metadata(bag: Path, info: dict[str, Any]) -> None:
    """Write metadata.yaml atomically (its presence is what marks a bag as closed)."""
    text = yaml.safe_dump({"rosbag2_bagfile_information": info}, sort_keys=False)
    atomic_write_bytes(bag / METADATA_NAME, text.encode())


class EpisodeBagWriter:
    """Writes one episode bag. Not thread-safe: one writer thread owns it."""

    def __init__(self, path: str | Path, topics: list[TopicSpec], config: BagWriterConfig):
        self.path = Path(path)
        self.name = self.path.name
        self.config = config
        self.topics = {t.name: t for t in topics}
        if len(self.topics) != len(topics):
            raise ValueError(f"duplicate topics in {[t.name for t in topics]}")
        if self.path.exists():
            raise BagError(f"{self.path} already exists; refusing to overwrite a recorded bag")
        self.path.mkdir(parents=True)
        self.counts = {t.name: 0 for t in topics}
        self.bytes_written = 0
        self.files: list[str] = []
        self._infos: list[dict[str, Any]] = []
        self._writer: Writer | None = None
        self._connections: dict[str, Any] = {}
        self._split_bytes = 0
        self._split_first_ns: int | None = None
        self._last_flush = time.monotonic()
        self._open_split()

    # -- public -----------------------------------------------------------------
    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Append one serialized message (log time = `timestamp_ns`)."""
        if self._writer is None:
            raise BagError(f"{self.path}: write after close")
        if self._should_split(timestamp_ns):
            self._close_split()
            self._open_split()
        conn = self._connections.get(topic)
        if conn is None:
            raise BagError(f"{self.path}: topic '{topic}' was not declared when the bag was opened")
        self._writer.write(conn, timestamp_ns, data)
        self.counts[topic] += 1
        self.bytes_written += len(data)
        self._split_bytes += len(data)
        if self._split_first_ns is None:
            self._split_first_ns = timestamp_ns
        if time.monotonic() - self._last_flush >= self.config.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Close the open MCAP chunk and hand it to the OS (survives a SIGKILL; not a power cut)."""
        storage = self._writer.storage if self._writer else None
        if storage is not None:
            # rosbags' McapWriter API: close_chunk() writes the in-memory chunk + its index.
            if storage.chunk.bio.tell():
                storage.close_chunk()
            storage.bio.flush()
        self._last_flush = time.monotonic()

    def close(self) -> dict[str, Any]:
        """Close the last split and write metadata.yaml; returns the merged metadata."""
        if self._writer is not None:
            self._close_split()
        info = merge_split_metadata(self._infos)
        write_bag_metadata(self.path, info)
        return info

    @property
    def split_index(self) -> int:
        return len(self.files)

    # -- splits -----------------------------------------------------------------
    def _should_split(self, timestamp_ns: int) -> bool:
        cfg = self.config
        if self._split_first_ns is None:
            return False
        if cfg.max_split_bytes and self._split_bytes >= cfg.max_split_bytes:
            return True
        span = (timestamp_ns - self._split_first_ns) / 1e9
        return bool(cfg.max_split_duration_s and span >= cfg.max_split_duration_s)

    def _open_split(self) -> None:
        sub = self.path / split_dir_name(self.name, self.split_index)
        writer = Writer(sub, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        self._connections = {}
        for spec in self.topics.values():
            msgdef, rihs01 = spec.definition()
            self._connections[spec.name] = writer.add_connection(
                spec.name, spec.msgtype, msgdef=msgdef, rihs01=rihs01, offered_qos_profiles=spec.qos
            )
        self._writer = writer
        self._split_bytes = 0
        self._split_first_ns = None
        # The schema/channel records sit in the first chunk: flush them now so even a
        # bag killed before its first flush tells a repair what its topics were.
        self.flush()

    def _close_split(self) -> None:
        writer, self._writer = self._writer, None
        assert writer is not None
        writer.close()
        sub = writer.path
        src = sub / f"{sub.name}.mcap"
        dst_name = split_file_name(self.name, len(self.files))
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        os.replace(src, self.path / dst_name)
        info = yaml.safe_load((sub / METADATA_NAME).read_text())["rosbag2_bagfile_information"]
        info["relative_file_paths"] = [dst_name]
        for entry in info["files"]:
            entry["path"] = dst_name
        shutil.rmtree(sub)
        fsync_dir(self.path)
        self._infos.append(info)
        self.files.append(dst_name)


def qos_to_metadata(qos: list[Qos]) -> list[dict[str, Any]]:
    """rosbag2 v9 metadata form of QoS profiles (for reports)."""
    return dump_qos_v9(qos)
