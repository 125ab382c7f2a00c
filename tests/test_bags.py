"""Episode bags: writer (splits), reader, sidecar, crash repair, the disk guard, `wmpo bags`.

Real files, real rosbags reader; the recorder core runs its real writer thread.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from wmpo_core.bags.metadata import (
    STATUS_COMPLETE,
    STATUS_DISK_FULL,
    STATUS_RECORDING,
    STATUS_REPAIRED,
    EpisodeSidecar,
    read_sidecar,
    write_sidecar,
)
from wmpo_core.bags.reader import bag_info, cdr_string, deserialize, iter_messages
from wmpo_core.bags.recorder import EpisodeRecorder, RecordedTopic, RecorderConfig
from wmpo_core.bags.verify import check_bag, repair_bag, scan_mcap, storage_files
from wmpo_core.bags.writer import BagWriterConfig, EpisodeBagWriter, TopicSpec, typestore
from wmpo_core.cli import main as wmpo_main
from wmpo_core.commands import ee_action_to_twist
from wmpo_core.interfaces import (
    CAMERA_TOPIC,
    EPISODE_TOPIC,
    GRIPPER_COMMAND_TOPIC,
    INSTRUCTION_TOPIC,
    TWIST_COMMAND_TOPIC,
)

TS = typestore()
T0 = 1_700_000_000_000_000_000  # ns; any fixed wall-clock-like origin


def cdr(msgtype: str, **fields) -> bytes:
    return bytes(TS.serialize_cdr(TS.types[msgtype](**fields), msgtype))


def string_msg(text: str) -> bytes:
    return cdr("std_msgs/msg/String", data=text)


def header(ns: int, frame: str = ""):
    Time = TS.types["builtin_interfaces/msg/Time"]
    Header = TS.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame)


def image_msg(ns: int, value: int, size: int = 32) -> bytes:
    data = np.full(size * size * 3, value, dtype=np.uint8)
    return cdr(
        "sensor_msgs/msg/Image",
        header=header(ns, "camera"),
        height=size,
        width=size,
        encoding="rgb8",
        is_bigendian=0,
        step=size * 3,
        data=data,
    )


def twist_msg(ns: int, action: np.ndarray, rate_hz: float = 20.0) -> bytes:
    lin, ang, _ = ee_action_to_twist(action, rate_hz)
    V3 = TS.types["geometry_msgs/msg/Vector3"]
    Twist = TS.types["geometry_msgs/msg/Twist"]
    return cdr(
        "geometry_msgs/msg/TwistStamped",
        header=header(ns, "base_link"),
        twist=Twist(linear=V3(*map(float, lin)), angular=V3(*map(float, ang))),
    )


def event(kind: str, eid: str, **extra) -> dict:
    body = {"schema": 1, "event": kind, "episode_id": eid, "instruction": "lift the red cube"}
    body |= {"policy_version": "", "task": "Lift", "seed": 3, "label": None, "stamp": time.time()}
    return body | extra


EPISODE_TOPICS = [
    TopicSpec(CAMERA_TOPIC, "sensor_msgs/msg/Image"),
    TopicSpec(TWIST_COMMAND_TOPIC, "geometry_msgs/msg/TwistStamped"),
    TopicSpec(GRIPPER_COMMAND_TOPIC, "std_msgs/msg/Float64"),
    TopicSpec(INSTRUCTION_TOPIC, "std_msgs/msg/String"),
    TopicSpec(EPISODE_TOPIC, "std_msgs/msg/String"),
]


def expected_action(i: int) -> np.ndarray:
    """The known action commanded after frame i in write_episode_bag."""
    a = np.zeros(7)
    a[0], a[1], a[2] = 0.1 * (i % 5) - 0.2, -0.05 * (i % 3), 0.02 * i
    a[5] = 0.1 if i % 2 else -0.1
    a[6] = 1.0 if i >= 4 else -1.0
    return a


def write_episode_bag(
    path: Path,
    n: int = 10,
    dt_ms: int = 50,
    offset_ms: int = 5,
    missing: tuple[int, ...] = (),
    label: str = "success",
    eid: str | None = None,
) -> Path:
    """A bag with known timestamps: frame i at T0 + i*dt, its command at + offset_ms
    (none for frames in `missing`); the gripper is sent only when it changes."""
    eid = eid or path.name
    w = EpisodeBagWriter(path, EPISODE_TOPICS, BagWriterConfig())
    start = event("start", eid)
    w.write(EPISODE_TOPIC, T0 - 10**6, string_msg(json.dumps(start)))
    w.write(INSTRUCTION_TOPIC, T0 - 10**6, string_msg("lift the red cube"))
    last_grip = None
    for i in range(n):
        t = T0 + i * dt_ms * 10**6
        w.write(CAMERA_TOPIC, t, image_msg(t, value=10 * i))
        if i in missing:
            continue
        a = expected_action(i)
        tc = t + offset_ms * 10**6
        w.write(TWIST_COMMAND_TOPIC, tc, twist_msg(tc, a))
        if a[6] != last_grip:
            w.write(GRIPPER_COMMAND_TOPIC, tc, cdr("std_msgs/msg/Float64", data=float(a[6])))
            last_grip = a[6]
    end = T0 + n * dt_ms * 10**6
    stop = event("stop", eid)
    lab = event("label", eid, label=label, labelled_by="operator")
    w.write(EPISODE_TOPIC, end, string_msg(json.dumps(stop)))
    w.write(EPISODE_TOPIC, end + 1, string_msg(json.dumps(lab)))
    w.close()
    side = EpisodeSidecar(id=eid, task="Lift", instruction="lift the red cube", label=label)
    side.labelled_by, side.kind, side.status, side.source = (
        "operator",
        "demonstration",
        "complete",
        "sim",
    )
    side.files = list(w.files)
    write_sidecar(path, side)
    return path


# -- writer / reader ------------------------------------------------------------------


def test_split_bag_reads_back_every_message_in_order(tmp_path):
    payloads = [f"msg {i} " + "x" * 300 for i in range(200)]
    w = EpisodeBagWriter(
        tmp_path / "ep",
        [TopicSpec("/a", "std_msgs/msg/String")],
        BagWriterConfig(max_split_bytes=8000),
    )
    for i, text in enumerate(payloads):
        w.write("/a", T0 + i, string_msg(text))
    w.close()
    assert len(w.files) >= 5, "expected the size limit to split the bag"
    assert sorted(p.name for p in (tmp_path / "ep").glob("*.mcap")) == sorted(w.files)
    assert not [d for d in (tmp_path / "ep").iterdir() if d.is_dir()], "split dirs left behind"
    got = [cdr_string(m.data) for m in iter_messages(tmp_path / "ep")]
    assert got == payloads
    info = bag_info(tmp_path / "ep")
    assert info.message_count == 200 and info.topics["/a"] == ("std_msgs/msg/String", 200)
    assert check_bag(tmp_path / "ep", deep=True).healthy


def test_duration_split(tmp_path):
    w = EpisodeBagWriter(
        tmp_path / "ep",
        [TopicSpec("/a", "std_msgs/msg/String")],
        BagWriterConfig(max_split_duration_s=1.0),
    )
    for i in range(50):  # 5 s of messages at 10 Hz
        w.write("/a", T0 + i * 10**8, string_msg(str(i)))
    w.close()
    assert len(w.files) == 5
    assert [int(cdr_string(m.data)) for m in iter_messages(tmp_path / "ep")] == list(range(50))


def test_episode_bag_decodes_with_rosbags(tmp_path):
    bag = write_episode_bag(tmp_path / "ep1", n=6)
    frames = [deserialize(m) for m in iter_messages(bag, [CAMERA_TOPIC])]
    assert [int(f.data[0]) for f in frames] == [0, 10, 20, 30, 40, 50]
    assert frames[0].encoding == "rgb8" and frames[0].width == 32


# -- crash repair ----------------------------------------------------------------------


def _write_until_killed_layout(bag: Path, n_flushed: int, n_unflushed: int) -> EpisodeBagWriter:
    """The on-disk state a SIGKILL leaves: flushed messages on disk, the rest only in memory."""
    w = EpisodeBagWriter(bag, [TopicSpec("/a", "std_msgs/msg/String")], BagWriterConfig())
    write_sidecar(bag, EpisodeSidecar(id=bag.name, status=STATUS_RECORDING))
    for i in range(n_flushed):
        w.write("/a", T0 + i, string_msg(f"m{i}"))
    w.flush()
    for i in range(n_flushed, n_flushed + n_unflushed):
        w.write("/a", T0 + i, string_msg(f"m{i}"))
    w._writer.storage.bio.flush()  # the OS has what was written; the open chunk is in memory
    return w  # never closed, like a killed process


def test_repair_of_unclosed_bag_recovers_flushed_messages(tmp_path, capsys):
    bag = tmp_path / "killed"
    _write_until_killed_layout(bag, n_flushed=37, n_unflushed=5)
    health = check_bag(bag)
    assert not health.healthy and health.repairable
    assert any("metadata.yaml" in p for p in health.problems)
    # `wmpo bags verify` says so in one line per bag and fails.
    assert wmpo_main(["bags", "verify", str(bag)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "repairable" in out[0]
    assert wmpo_main(["bags", "verify", "--repair", str(bag)]) == 0
    out = capsys.readouterr().out
    assert "37 messages recovered" in out
    assert check_bag(bag, deep=True).healthy
    assert [cdr_string(m.data) for m in iter_messages(bag)] == [f"m{i}" for i in range(37)]
    side = read_sidecar(bag)
    assert side.status == STATUS_REPAIRED and side.topics["/a"]["count"] == 37
    assert (bag / "killed_0.mcap.truncated").is_file(), "the damaged original must be kept"


def test_repair_of_torn_tail_keeps_every_complete_record(tmp_path):
    bag = tmp_path / "torn"
    w = EpisodeBagWriter(
        bag, [TopicSpec("/a", "std_msgs/msg/String")], BagWriterConfig(flush_interval_s=1e9)
    )
    chunk_ends = []
    for i in range(30):
        w.write("/a", T0 + i, string_msg(f"m{i}"))
        if i % 10 == 9:
            w.flush()  # a chunk of 10 messages
            chunk_ends.append(w._writer.storage.bio.tell())
    w._writer.storage.bio.flush()
    f = next(bag.glob(".torn_0/*.mcap"))
    os.truncate(f, chunk_ends[1] + 100)  # tear the third chunk record
    scan = scan_mcap(f)
    assert not scan.complete and "torn" in scan.problem
    assert scan.message_count == 20
    report = repair_bag(bag)
    assert report.recovered == {"/a": 20} and report.lost_bytes > 0
    assert [cdr_string(m.data) for m in iter_messages(bag)] == [f"m{i}" for i in range(20)]


def test_corrupt_bag_is_one_line_error(tmp_path, capsys):
    good = write_episode_bag(tmp_path / "good", n=3)
    bad = write_episode_bag(tmp_path / "bad", n=3)
    mcap = next(bad.glob("*.mcap"))
    os.truncate(mcap, mcap.stat().st_size // 2)  # a closed bag damaged later (disk, copy)
    assert wmpo_main(["bags", "verify", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{bad}: repairable: bad_0.mcap: truncated MCAP (no footer)", f"{good}: ok"]
    assert wmpo_main(["bags", "info", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wmpo bags: error:") and "verify" in err[0]


def test_bags_ls_table(tmp_path, capsys):
    write_episode_bag(tmp_path / "a", n=4, label="success")
    write_episode_bag(tmp_path / "b", n=7, label="failure")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "c_0.mcap").write_bytes(b"\x89MCAP0\r\n garbage")
    assert wmpo_main(["bags", "ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "ID",
        "TASK",
        "DURATION",
        "FRAMES",
        "LABEL",
        "POLICY",
        "SIZE",
        "HEALTH",
    ]
    rows = {line.split()[0]: line.split() for line in out[1:4]}
    assert rows["a"][1:6] == ["Lift", "0.2s", "4", "success", "(demo)"]
    assert rows["b"][3:5] == ["7", "failure"] and rows["b"][-1] == "ok"
    assert rows["c"][-1] == "REPAIRABLE"
    assert "1 unhealthy" in out[-1]


# -- recorder core: events, latched topics, disk guard ------------------------------------


def _recorder(tmp_path, **kw) -> EpisodeRecorder:
    topics = [
        RecordedTopic("/a", "std_msgs/msg/String", "reliable", seq="json:n"),
        RecordedTopic(INSTRUCTION_TOPIC, "std_msgs/msg/String", "latched"),
    ]
    cfg = RecorderConfig(str(tmp_path / "bags"), topics, min_free_bytes=0, **kw)
    return EpisodeRecorder(cfg)


def test_recorder_core_episode_cycle(tmp_path):
    rec = _recorder(tmp_path, postroll_s=0.0)  # closes on the stop: the label amends it
    try:
        rec.submit(INSTRUCTION_TOPIC, string_msg("lift the red cube"), time.time_ns())
        rec.submit("/a", string_msg('{"n": 0}'), time.time_ns())  # before start: not recorded
        rec.submit_event(string_msg(json.dumps(event("start", "e1"))), time.time_ns())
        for n in [1, 2, 3, 6, 7]:  # 4 and 5 never arrive: a gap of 2
            rec.submit("/a", string_msg(json.dumps({"n": n})), time.time_ns())
        assert rec.wait_idle()  # the middleware reports losses while recording
        rec.count_lost("/a", 3)
        rec.submit_event(string_msg(json.dumps(event("stop", "e1"))), time.time_ns())
        rec.submit_event(
            string_msg(json.dumps(event("label", "e1", label="failure", labelled_by="operator"))),
            time.time_ns(),
        )
        assert rec.wait_idle()
    finally:
        rec.close()
    bag = tmp_path / "bags" / "e1"
    side = read_sidecar(bag)
    assert side.status == STATUS_COMPLETE and side.label == "failure"  # label after close
    assert side.seq_gaps == {"/a": 2} and side.lost == {"/a": 3} and side.total_lost == 5
    assert side.topics["/a"]["count"] == 5 and side.task == "Lift" and side.seed == 3
    topics = [m.topic for m in iter_messages(bag)]
    assert topics.count(INSTRUCTION_TOPIC) == 1, "latched instruction must start the bag"
    assert topics.count(EPISODE_TOPIC) == 2  # start + stop (the label came after close)


@pytest.mark.parametrize("clock", ["wall", "sim"])
def test_commands_that_overtake_the_start_event_are_recorded(tmp_path, clock):
    """Different topics arrive in any order: the first commands of an episode can reach
    the recorder before its start event. Those received after the event's stamp belong to
    the episode; earlier ones do not. A sim-time stamp cannot be compared: no pre-roll."""
    rec = _recorder(tmp_path)
    try:
        rec.submit("/a", string_msg('{"n": 0}'), time.time_ns())  # before the episode began
        start = event("start", "e1")  # published now...
        if clock == "sim":
            start["stamp"] = 12.3
        time.sleep(0.01)
        for n in (1, 2):  # ...overtaken by the first two commands
            rec.submit("/a", string_msg(json.dumps({"n": n})), time.time_ns())
        rec.submit_event(string_msg(json.dumps(start)), time.time_ns())
        rec.submit("/a", string_msg('{"n": 3}'), time.time_ns())
        rec.submit_event(string_msg(json.dumps(event("stop", "e1"))), time.time_ns())
        assert rec.wait_idle()
    finally:
        rec.close()
    bag = tmp_path / "bags" / "e1"
    got = [json.loads(cdr_string(m.data))["n"] for m in iter_messages(bag) if m.topic == "/a"]
    assert sorted(got) == ([1, 2, 3] if clock == "wall" else [3])
    assert read_sidecar(bag).topics["/a"]["count"] == len(got)


@pytest.mark.parametrize("postroll_s", [0.3, 0.0])
def test_commands_delivered_after_the_stop_event_are_recorded(tmp_path, postroll_s):
    """The last commands of an episode can be handed over after its stop event (a backlog
    on the command topic, the stop on another). Those sent before the stop's stamp belong
    to the episode; one sent after it belongs to the next episode, which starts at once."""
    rec = _recorder(tmp_path, postroll_s=postroll_s)
    try:
        rec.submit_event(string_msg(json.dumps(event("start", "e1"))), time.time_ns())
        rec.submit("/a", string_msg('{"n": 1}'), time.time_ns())
        sent_late = time.time_ns()  # published before the stop...
        time.sleep(0.01)
        stop = event("stop", "e1")
        time.sleep(0.01)
        start2 = event("start", "e2")
        time.sleep(0.01)
        sent_next = time.time_ns()  # ...and one published after the next start
        rec.submit_event(string_msg(json.dumps(stop)), time.time_ns())
        rec.submit("/a", string_msg('{"n": 2}'), time.time_ns(), sent_ns=sent_late)
        rec.submit("/a", string_msg('{"n": 3}'), time.time_ns(), sent_ns=sent_next)
        rec.submit_event(string_msg(json.dumps(start2)), time.time_ns())
        rec.submit_event(string_msg(json.dumps(event("stop", "e2"))), time.time_ns())
        assert rec.wait_idle()
        first = tmp_path / "bags" / "e1"
        assert rec.bags_closed[0] == first, "the next start must close the stopped bag"
    finally:
        rec.close()

    def numbers(bag):
        return [json.loads(cdr_string(m.data))["n"] for m in iter_messages(bag) if m.topic == "/a"]

    assert numbers(first) == ([1, 2] if postroll_s else [1])
    assert read_sidecar(first).status == STATUS_COMPLETE
    assert numbers(tmp_path / "bags" / "e2") == [3]


@pytest.mark.parametrize("name", ["preroll_s", "postroll_s"])
@pytest.mark.parametrize("value", [-0.5, 60.0, float("nan")])
def test_a_pre_or_postroll_outside_its_range_is_refused(tmp_path, name, value):
    topics = [RecordedTopic("/a", "std_msgs/msg/String")]
    with pytest.raises(ValueError, match=rf"{name} must be in \[0, 60\) seconds"):
        RecorderConfig(str(tmp_path / "bags"), topics, **{name: value})


def test_disk_guard_stops_cleanly_and_says_so(tmp_path):
    logs: list[tuple[str, str]] = []
    topics = [RecordedTopic("/a", "std_msgs/msg/String")]
    cfg = RecorderConfig(
        str(tmp_path / "bags"), topics, min_free_bytes=0, disk_check_interval_s=0.05
    )
    rec = EpisodeRecorder(cfg, log=lambda level, text: logs.append((level, text)))
    try:
        rec.submit_event(string_msg(json.dumps(event("start", "e2"))), time.time_ns())
        for i in range(20):
            rec.submit("/a", string_msg(str(i)), time.time_ns())
        assert rec.wait_idle()
        # The disk "fills": the threshold is now above the free space.
        cfg.min_free_bytes = shutil.disk_usage(tmp_path).free + 10**12
        deadline = time.monotonic() + 5
        while rec.status()["state"] != "disk_full" and time.monotonic() < deadline:
            time.sleep(0.02)
        status = rec.status()
        assert status["state"] == "disk_full" and "disk guard" in status["last_error"]
        rec.submit("/a", string_msg("late"), time.time_ns())
        rec.submit_event(string_msg(json.dumps(event("start", "e3"))), time.time_ns())
        assert rec.wait_idle()
    finally:
        rec.close()
    bag = tmp_path / "bags" / "e2"
    assert check_bag(bag, deep=True).healthy, "the guard must leave a valid, closed bag"
    side = read_sidecar(bag)
    assert side.status == STATUS_DISK_FULL and "min_free_bytes" in side.stop_reason
    assert [cdr_string(m.data) for m in iter_messages(bag, ["/a"])] == [str(i) for i in range(20)]
    assert not (tmp_path / "bags" / "e3").exists(), "no new episode while the disk is full"
    assert any(level == "error" and "not recording episode 'e3'" in t for level, t in logs)


def test_discard_marks_or_deletes(tmp_path):
    for action in ("mark", "delete"):
        rec = _recorder(tmp_path / action, discard_action=action)
        try:
            rec.submit_event(string_msg(json.dumps(event("start", "d1"))), time.time_ns())
            rec.submit("/a", string_msg('{"n": 1}'), time.time_ns())
            discard = event("label", "d1", label="discard", labelled_by="operator")
            rec.submit_event(string_msg(json.dumps(discard)), time.time_ns())
            assert rec.wait_idle()
        finally:
            rec.close()
        bag = tmp_path / action / "bags" / "d1"
        if action == "mark":
            assert read_sidecar(bag).status == "discarded" and check_bag(bag).discarded
        else:
            assert not bag.exists()


def test_storage_files_orders_splits_numerically(tmp_path):
    for i in (0, 1, 2, 10, 11):
        (tmp_path / f"ep_{i}.mcap").write_bytes(b"")
    closed, open_ = storage_files(tmp_path)
    assert [p.name for p in closed] == [f"ep_{i}.mcap" for i in (0, 1, 2, 10, 11)]
    assert open_ == []


@pytest.mark.parametrize("bad", [b"", b"not an mcap at all"])
def test_scan_rejects_non_mcap(tmp_path, bad):
    f = tmp_path / "x.mcap"
    f.write_bytes(bad)
    scan = scan_mcap(f)
    assert not scan.complete and scan.message_count == 0 and scan.problem
