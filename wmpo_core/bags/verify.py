"""Health check and repair of episode bags, including bags left by a killed recorder.

A recorder killed with SIGKILL leaves: no metadata.yaml, a hidden split
sub-directory (writer.py) whose MCAP file has no summary and no footer, and
possibly a torn record at its end. `repair_bag` reads each MCAP file record by
record from the start (MCAP: magic, then `opcode u8 | length u64 | body`
records; messages live inside chunk records), keeps every message up to the
last complete record, rewrites the damaged file as a valid MCAP with rosbags,
and writes metadata.yaml. The original damaged file is kept as
`<file>.truncated` next to it, so a repair never deletes data.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.metadata import parse_qos
from rosbags.rosbag2.storage_mcap import decompress

from wmpo_core.bags.metadata import (
    STATUS_DISCARDED,
    STATUS_RECORDING,
    STATUS_REPAIRED,
    EpisodeSidecar,
    apply_event,
    read_sidecar,
    write_sidecar,
)
from wmpo_core.bags.reader import cdr_string
from wmpo_core.bags.writer import (
    METADATA_NAME,
    merge_split_metadata,
    split_file_name,
    typestore,
    write_bag_metadata,
)
from wmpo_core.errors import BagError
from wmpo_core.fileio import fsync_dir
from wmpo_core.interfaces import EPISODE_TOPIC

MAGIC = b"\x89MCAP0\r\n"
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = (
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
)
OP_DATA_END = 0x0F
_MAX_OPCODE = 0x0F


@dataclass
class McapScan:
    """What a sequential read of one MCAP file found."""

    path: Path
    complete: bool = False
    """Footer and trailing magic present: the writer closed the file."""
    problem: str = ""
    """Why reading stopped early ('' when the whole file was read)."""
    good_bytes: int = 0
    """Offset just past the last complete record (everything before it is usable)."""
    size: int = 0
    schemas: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    """id -> (name, encoding, definition)."""
    channels: dict[int, tuple[str, int, str, str]] = field(default_factory=dict)
    """id -> (topic, schema id, message encoding, offered_qos_profiles yaml)."""
    counts: dict[int, int] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())


OnMessage = Callable[[int, int, bytes], None]  # (channel id, log time ns, data)


class _Truncated(Exception):
    pass


def _read(bio: BinaryIO, n: int) -> bytes:
    data = bio.read(n)
    if len(data) != n:
        raise _Truncated(f"needed {n} bytes, {len(data)} left")
    return data


def _string(rec: BytesIO) -> str:
    (n,) = struct.unpack("<I", _read(rec, 4))
    return _read(rec, n).decode()


def _parse_channel_metadata(rec: BytesIO) -> dict[str, str]:
    (n,) = struct.unpack("<I", _read(rec, 4))
    sub = BytesIO(_read(rec, n))
    out = {}
    while sub.tell() < n:
        key = _string(sub)
        out[key] = _string(sub)
    return out


def _records(bio: BinaryIO, end: int | None = None):
    """Yield (opcode, body, offset_after) for each complete record; raise _Truncated when torn."""
    while True:
        pos = bio.tell()
        if end is not None and pos >= end:
            return
        op = bio.read(1)
        if not op:
            return
        if op[0] == MAGIC[0] and end is None:  # trailing magic after the footer
            rest = bio.read(len(MAGIC) - 1)
            bio.seek(pos)
            if op + rest == MAGIC:
                return
        if not 1 <= op[0] <= _MAX_OPCODE:
            raise _Truncated(f"unknown record opcode 0x{op[0]:02x} at offset {pos}")
        (length,) = struct.unpack("<Q", _read(bio, 8))
        body = _read(bio, length)
        yield op[0], body, bio.tell()


def scan_mcap(
    path: str | Path, on_message: OnMessage | None = None, scan: McapScan | None = None
) -> McapScan:
    """Read an MCAP file from the start, tolerating a torn end; messages go to `on_message`.

    Channels are filled in before the messages that use them arrive, so a caller
    passing its own `scan` can look channels up from inside `on_message`.
    """
    path = Path(path)
    scan = scan or McapScan(path=path)
    scan.size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            scan.problem = "not an MCAP file (bad leading magic)"
            return scan
        scan.good_bytes = len(MAGIC)
        try:
            for op, body, after in _records(f):
                if op == OP_CHUNK:
                    _scan_chunk(body, scan, on_message)
                elif op == OP_FOOTER:
                    tail = f.read(len(MAGIC))
                    scan.complete = tail == MAGIC
                    if not scan.complete:
                        scan.problem = "footer without trailing magic"
                else:
                    _scan_record(op, body, scan, on_message)
                scan.good_bytes = after
                if op == OP_FOOTER:
                    break
        except (_Truncated, ValueError, struct.error) as exc:
            scan.problem = f"torn record after offset {scan.good_bytes}: {exc}"
        if not scan.complete and not scan.problem:
            scan.problem = f"no footer: file ends at offset {scan.size} without an MCAP summary"
    return scan


def _scan_chunk(body: bytes, scan: McapScan, on_message: OnMessage | None) -> None:
    rec = BytesIO(body)
    _start, _end, size, crc = struct.unpack("<QQQI", _read(rec, 28))
    compression = _string(rec)
    (csize,) = struct.unpack("<Q", _read(rec, 8))
    try:
        raw = decompress(_read(rec, csize), compression, size, crc)
    except Exception as exc:  # the chunk is complete on disk but its content is damaged
        raise _Truncated(f"chunk content unreadable ({exc})") from None
    inner = BytesIO(raw)
    for op, inner_body, _ in _records(inner, end=len(raw)):
        _scan_record(op, inner_body, scan, on_message)


def _scan_record(op: int, body: bytes, scan: McapScan, on_message: OnMessage | None) -> None:
    rec = BytesIO(body)
    if op == OP_SCHEMA:
        (sid,) = struct.unpack("<H", _read(rec, 2))
        scan.schemas[sid] = (_string(rec), _string(rec), _string(rec))
    elif op == OP_CHANNEL:
        cid, sid = struct.unpack("<HH", _read(rec, 4))
        topic, encoding = _string(rec), _string(rec)
        meta = _parse_channel_metadata(rec)
        scan.channels[cid] = (topic, sid, encoding, meta.get("offered_qos_profiles", ""))
        scan.counts.setdefault(cid, 0)
    elif op == OP_MESSAGE:
        cid, _seq, log_time, _pub = struct.unpack("<HIQQ", _read(rec, 22))
        if cid not in scan.channels:
            raise _Truncated(f"message on undeclared channel {cid}")
        scan.counts[cid] = scan.counts.get(cid, 0) + 1
        scan.start_ns = log_time if scan.message_count == 1 else min(scan.start_ns, log_time)
        scan.end_ns = max(scan.end_ns, log_time)
        if on_message is not None:
            on_message(cid, log_time, body[22:])


# -- bag level ---------------------------------------------------------------------


@dataclass
class BagHealth:
    path: Path
    healthy: bool
    problems: list[str] = field(default_factory=list)
    repairable: bool = False
    """True when repair_bag can make it healthy (a torn end, missing metadata)."""
    discarded: bool = False

    def summary(self) -> str:
        if self.healthy:
            return "ok" if not self.discarded else "ok (discarded)"
        return ("repairable: " if self.repairable else "corrupt: ") + "; ".join(self.problems)


def storage_files(bag: Path) -> tuple[list[Path], list[Path]]:
    """(closed top-level .mcap files in split order, MCAP files in unfinished split dirs)."""
    closed = sorted(bag.glob("*.mcap"), key=_split_key)
    open_ = sorted(
        (
            f
            for d in bag.iterdir()
            if d.is_dir() and d.name.startswith(".")
            for f in d.glob("*.mcap")
        ),
        key=_split_key,
    )
    return closed, open_


def _split_key(p: Path) -> tuple[int, str]:
    stem = p.stem.lstrip(".")
    tail = stem.rsplit("_", 1)[-1]
    return (int(tail) if tail.isdigit() else -1, p.name)


def _has_footer(path: Path) -> bool:
    size = path.stat().st_size
    if size < 2 * len(MAGIC) + 9:
        return False
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        f.seek(-len(MAGIC), os.SEEK_END)
        return head == MAGIC and f.read() == MAGIC


def check_bag(bag: str | Path, deep: bool = False) -> BagHealth:
    """Is this bag closed and readable? `deep` reads every record and compares counts."""
    bag = Path(bag)
    if not bag.is_dir():
        return BagHealth(bag, False, [f"{bag} is not a bag directory"])
    problems: list[str] = []
    repairable = True
    closed, open_ = storage_files(bag)
    if open_:
        problems.append(
            f"unfinished split {open_[0].parent.name}/ (recorder did not close the bag)"
        )
    meta_path = bag / METADATA_NAME
    info: dict[str, Any] | None = None
    if not meta_path.is_file():
        problems.append("no metadata.yaml (recorder killed or still recording)")
    else:
        try:
            info = yaml.safe_load(meta_path.read_text())["rosbag2_bagfile_information"]
        except Exception as exc:
            problems.append(f"metadata.yaml unreadable ({type(exc).__name__})")
    if info is not None:
        for name in info.get("relative_file_paths", []):
            if not (bag / Path(name).name).is_file():
                problems.append(f"metadata.yaml lists {name}, which is missing")
                repairable = False
    if not closed and not open_:
        problems.append("no .mcap storage files")
        repairable = False
    for f in closed:
        if not _has_footer(f):
            problems.append(f"{f.name}: truncated MCAP (no footer)")
    if deep and info is not None and not problems:
        problems += _deep_check(bag, closed, info)
    sidecar = _safe_sidecar(bag, problems)
    if sidecar is not None and sidecar.status == STATUS_RECORDING and not problems:
        problems.append("sidecar says still recording, but the bag is closed")
    discarded = sidecar is not None and sidecar.status == STATUS_DISCARDED
    return BagHealth(bag, not problems, problems, repairable and bool(problems), discarded)


def _safe_sidecar(bag: Path, problems: list[str]) -> EpisodeSidecar | None:
    try:
        return read_sidecar(bag)
    except BagError as exc:
        problems.append(str(exc))
        return None


def _deep_check(bag: Path, files: list[Path], info: dict[str, Any]) -> list[str]:
    problems = []
    counts: dict[str, int] = {}
    for f in files:
        scan = scan_mcap(f)
        if not scan.complete:
            problems.append(f"{f.name}: {scan.problem}")
        for cid, n in scan.counts.items():
            topic = scan.channels[cid][0]
            counts[topic] = counts.get(topic, 0) + n
    for entry in info.get("topics_with_message_count", []):
        name = entry["topic_metadata"]["name"]
        if counts.get(name, 0) != entry["message_count"]:
            problems.append(
                f"{name}: metadata.yaml says {entry['message_count']} messages, "
                f"files hold {counts.get(name, 0)}"
            )
    return problems


@dataclass
class RepairReport:
    path: Path
    repaired: bool
    recovered: dict[str, int] = field(default_factory=dict)
    """topic -> messages in the repaired bag."""
    salvaged_files: list[str] = field(default_factory=list)
    lost_bytes: int = 0
    """Bytes after the last complete record (a torn chunk) that could not be read."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.repaired:
            return "nothing to repair"
        total = sum(self.recovered.values())
        return (
            f"repaired: {total} messages recovered from {len(self.salvaged_files)} damaged "
            f"file(s), {self.lost_bytes} torn bytes dropped"
        )


def repair_bag(bag: str | Path) -> RepairReport:
    """Make a bag left by a killed recorder valid again, keeping every complete record."""
    bag = Path(bag)
    health = check_bag(bag)
    if health.healthy:
        return RepairReport(bag, False)
    if not health.repairable:
        raise BagError(f"{bag}: cannot repair ({'; '.join(health.problems)})")
    sidecar = _safe_sidecar(bag, []) or EpisodeSidecar(id=bag.name)
    closed, open_ = storage_files(bag)
    report = RepairReport(bag, True)
    infos: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for f in [*closed, *open_]:
        index = len(infos)
        final_name = split_file_name(bag.name, index)
        if f in closed and _has_footer(f):
            scan = scan_mcap(f)
            if scan.complete:
                if f.name != final_name:
                    os.replace(f, bag / final_name)
                infos.append(_info_from_scan(scan, final_name, sidecar))
                continue
        info, scan = _salvage(f, bag, final_name, sidecar, events)
        report.salvaged_files.append(str(f.relative_to(bag)))
        report.lost_bytes += scan.size - scan.good_bytes
        report.notes.append(f"{f.relative_to(bag)}: {scan.problem}")
        if info is not None:
            infos.append(info)
    for d in bag.iterdir():
        if d.is_dir() and d.name.startswith("."):
            shutil.rmtree(d)
    if not infos:
        raise BagError(f"{bag}: no complete record found; nothing could be recovered")
    merged = merge_split_metadata(infos)
    write_bag_metadata(bag, merged)
    fsync_dir(bag)
    for entry in merged["topics_with_message_count"]:
        report.recovered[entry["topic_metadata"]["name"]] = entry["message_count"]
    _update_sidecar(bag, sidecar, merged, report, events)
    return report


def _hash_for(topic: str, msgtype: str, sidecar: EpisodeSidecar) -> str:
    known = sidecar.topics.get(topic, {}).get("rihs01")
    if known:
        return known
    if msgtype in typestore().fielddefs:
        return typestore().hash_rihs01(msgtype)
    raise BagError(
        f"{topic}: type {msgtype} is not in the typestore and the sidecar has no hash for it"
    )


def _info_from_scan(scan: McapScan, file_name: str, sidecar: EpisodeSidecar) -> dict[str, Any]:
    """rosbag2 bagfile information for one intact file, from a scan of it."""
    topics = []
    for cid, (topic, sid, encoding, qos_yaml) in sorted(scan.channels.items()):
        msgtype = scan.schemas[sid][0]
        topics.append(
            {
                "topic_metadata": {
                    "name": topic,
                    "type": msgtype,
                    "serialization_format": encoding,
                    "offered_qos_profiles": yaml.safe_load(qos_yaml) if qos_yaml else [],
                    "type_description_hash": _hash_for(topic, msgtype, sidecar),
                },
                "message_count": scan.counts.get(cid, 0),
            }
        )
    n = scan.message_count
    timing = {
        "starting_time": {"nanoseconds_since_epoch": scan.start_ns if n else 0},
        "duration": {"nanoseconds": scan.end_ns - scan.start_ns if n else 0},
    }
    return {
        "version": 9,
        "storage_identifier": "mcap",
        "relative_file_paths": [file_name],
        **timing,
        "message_count": n,
        "topics_with_message_count": topics,
        "compression_format": "",
        "compression_mode": "",
        "files": [{"path": file_name, **timing, "message_count": n}],
        "custom_data": None,
        "ros_distro": "rosbags",
    }


def _salvage(
    src: Path, bag: Path, final_name: str, sidecar: EpisodeSidecar, events: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, McapScan]:
    """Rewrite every complete message of a damaged file into a valid MCAP named `final_name`."""
    tmp = bag / f".repair_{final_name[:-5]}"
    if tmp.exists():
        shutil.rmtree(tmp)
    writer = Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    conns: dict[int, Any] = {}
    scan = McapScan(path=src)

    def connect(cid: int) -> Any:
        topic, sid, encoding, qos_yaml = scan.channels[cid]
        name, _enc, definition = scan.schemas[sid]
        conns[cid] = writer.add_connection(
            topic,
            name,
            msgdef=definition,
            rihs01=_hash_for(topic, name, sidecar),
            serialization_format=encoding,
            offered_qos_profiles=parse_qos(qos_yaml) if qos_yaml else [],
        )
        return conns[cid]

    def on_message(cid: int, log_time: int, data: bytes) -> None:
        conn = conns.get(cid) or connect(cid)
        writer.write(conn, log_time, data)
        if conn.topic == EPISODE_TOPIC:
            events.append(_decode_event(data))

    scan_mcap(src, on_message, scan)
    for cid in scan.channels:
        if cid not in conns:
            connect(cid)
    if not scan.channels:
        writer.abort()
        shutil.rmtree(tmp)
        _keep_original(src, bag)
        return None, scan
    writer.close()
    _keep_original(src, bag)
    os.replace(tmp / f"{tmp.name}.mcap", bag / final_name)
    info = yaml.safe_load((tmp / METADATA_NAME).read_text())["rosbag2_bagfile_information"]
    shutil.rmtree(tmp)
    info["relative_file_paths"] = [final_name]
    for entry in info["files"]:
        entry["path"] = final_name
    return info, scan


def _keep_original(src: Path, bag: Path) -> None:
    os.replace(src, bag / f"{src.name.lstrip('.')}.truncated")


def _decode_event(data: bytes) -> dict[str, Any]:
    try:
        return json.loads(cdr_string(data))
    except (ValueError, BagError):
        return {"event": "unparseable"}


def _update_sidecar(
    bag: Path,
    sidecar: EpisodeSidecar,
    merged: dict[str, Any],
    report: RepairReport,
    events: list[dict[str, Any]],
) -> None:
    if not sidecar.events and events:
        sidecar.events = events
        for event in events:
            apply_event(sidecar, event)
    previous = sidecar.status
    sidecar.status = STATUS_REPAIRED if previous != STATUS_DISCARDED else previous
    sidecar.stop_reason = sidecar.stop_reason or "recorder did not close the bag (crash / SIGKILL)"
    sidecar.files = list(merged["relative_file_paths"])
    for entry in merged["topics_with_message_count"]:
        meta = entry["topic_metadata"]
        sidecar.topics[meta["name"]] = {
            "type": meta["type"],
            "rihs01": meta["type_description_hash"],
            "count": entry["message_count"],
        }
    sidecar.extra["repair"] = {
        "at_ns": time.time_ns(),
        "status_before": previous,
        "salvaged_files": report.salvaged_files,
        "lost_bytes": report.lost_bytes,
        "notes": report.notes,
    }
    write_sidecar(bag, sidecar)
