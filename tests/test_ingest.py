"""`wmpo ingest`: bags -> episode store, with exact expected actions on bags of known timing."""

from __future__ import annotations

import os
import shutil

import fsspec
import numpy as np
import pytest
from test_bags import expected_action, write_episode_bag

from wmpo_core.bags.episode import IngestConfig, align_actions, load_episode
from wmpo_core.cli import main as wmpo_main
from wmpo_core.store import EpisodeStore


def test_alignment_exact_actions_and_gaps(tmp_path):
    bag = write_episode_bag(tmp_path / "ep", n=12, dt_ms=50, offset_ms=5, missing=(3, 9))
    meta, frames, actions = load_episode(bag, IngestConfig(image_size=16, tolerance_ms=20))
    assert frames.shape == (12, 16, 16, 3) and frames.dtype == np.uint8
    assert [int(f[0, 0, 0]) for f in frames] == [10 * i for i in range(12)]
    align = meta.extra["alignment"]
    assert align["gap_frames"] == [3, 9] and align["n_gaps"] == 2
    assert align["action_source"] == "twist" and align["max_offset_ms"] == pytest.approx(5.0)
    for i in range(12):
        if i in (3, 9):  # a gap: no motion, the gripper holds its last command
            assert np.allclose(actions[i, :6], 0.0)
            assert actions[i, 6] == expected_action(i - 1)[6]
        else:
            np.testing.assert_allclose(actions[i], expected_action(i), atol=1e-6)
    assert meta.success is True and meta.task == "Lift" and meta.kind == "demonstration"
    assert meta.instruction == "lift the red cube" and meta.fps == pytest.approx(20.0)


def test_tolerance_decides_what_is_a_gap(tmp_path):
    bag = write_episode_bag(tmp_path / "ep", n=6, dt_ms=100, offset_ms=30)
    meta, _, _ = load_episode(bag, IngestConfig(image_size=16, tolerance_ms=20))
    assert meta.extra["alignment"]["n_gaps"] == 6
    meta, _, actions = load_episode(bag, IngestConfig(image_size=16, tolerance_ms=40))
    assert meta.extra["alignment"]["n_gaps"] == 0
    np.testing.assert_allclose(actions[5], expected_action(5), atol=1e-6)


def test_align_nearest_command_picks_closest():
    frames = np.array([0, 100, 200], dtype=np.int64)
    cmds = np.array([-10, 95, 130, 260], dtype=np.int64)
    motion = np.arange(24, dtype=float).reshape(4, 6)
    a = align_actions(frames, cmds, motion, np.array([0]), np.array([1.0]), tolerance_ns=50)
    np.testing.assert_array_equal(a.actions[:, 0], [0, 6, 0])  # frame 200: nearest 260 > 50
    assert a.gap_frames == [2] and (a.actions[:, 6] == 1.0).all()


def test_next_match_is_causal(tmp_path):
    # Commands lag their frames by 40 ms of a 50 ms period: 'nearest' pairs frame i with
    # the command of frame i-1 (10 ms before it); 'next' pairs it with its own.
    bag = write_episode_bag(tmp_path / "ep", n=8, dt_ms=50, offset_ms=40)
    _, _, nearest = load_episode(bag, IngestConfig(image_size=16, tolerance_ms=45))
    np.testing.assert_allclose(nearest[3], expected_action(2), atol=1e-6)
    meta, _, nxt = load_episode(bag, IngestConfig(image_size=16, tolerance_ms=45, match="next"))
    for i in range(8):
        np.testing.assert_allclose(nxt[i], expected_action(i), atol=1e-6)
    assert meta.extra["alignment"]["match"] == "next"


def test_ingest_cli_incremental_corrupt_and_fsspec(tmp_path, capsys):
    bags = tmp_path / "bags"
    for i, label in enumerate(["success", "failure", "success"]):
        write_episode_bag(bags / f"ep{i}", n=5 + i, label=label)
    bad = write_episode_bag(bags / "ep_bad", n=4)
    mcap = next(bad.glob("*.mcap"))
    os.truncate(mcap, mcap.stat().st_size - 50)
    store_dir = tmp_path / "store"
    rc = wmpo_main(["ingest", str(bags), "--out", str(store_dir), "--image-size", "16"])
    captured = capsys.readouterr()
    assert rc == 1, "a corrupt bag must fail the run (after the others are in)"
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "ep_bad" in errors[0] and "verify --repair" in errors[0]
    assert "ingested 3 episode(s), 18 frames" in captured.out and "frames/s" in captured.out
    store = EpisodeStore(store_dir)
    assert store.ids() == ["ep0", "ep1", "ep2"]
    ep1 = store.load("ep1")
    assert ep1.meta.success is False and ep1.frames.shape == (6, 16, 16, 3)
    assert ep1.meta.source == str(bags / "ep1") and len(ep1.meta.source_hash) == 64
    np.testing.assert_allclose(ep1.actions[2], expected_action(2), atol=1e-6)

    # Incremental: nothing new the second time.
    shutil.rmtree(bad)
    assert wmpo_main(["ingest", str(bags), "--out", str(store_dir), "--image-size", "16"]) == 0
    out = capsys.readouterr()
    assert "ingested 0 episode(s)" in out.out and out.err.count("already ingested") == 3

    # A remote (fsspec) bag: copied to a temp dir, ingested, provenance keeps the URL.
    remote = write_episode_bag(tmp_path / "remote" / "ep9", n=4, eid="ep9")
    fs = fsspec.filesystem("memory")
    for f in remote.iterdir():
        fs.pipe(f"/robot1/ep9/{f.name}", f.read_bytes())
    assert (
        wmpo_main(["ingest", "memory://robot1", "--out", str(store_dir), "--image-size", "16"]) == 0
    )
    capsys.readouterr()
    meta = EpisodeStore(store_dir).meta("ep9")
    assert meta.source == "memory://robot1/ep9" and meta.n_frames == 4


def test_discarded_bag_is_skipped(tmp_path, capsys):
    bag = write_episode_bag(tmp_path / "bags" / "d", n=3)
    from wmpo_core.bags.metadata import read_sidecar, write_sidecar

    side = read_sidecar(bag)
    side.status = "discarded"
    write_sidecar(bag, side)
    assert wmpo_main(["ingest", str(tmp_path / "bags"), "--out", str(tmp_path / "s")]) == 0
    assert "discarded" in capsys.readouterr().err
    assert len(EpisodeStore(tmp_path / "s")) == 0


def test_actions_from_executed_chunks_when_no_arm_commands(tmp_path):
    """A bag with action chunks only: each point at header.stamp + time_from_start; a newer
    chunk replaces the rest of the older one; frames are matched on their header stamps."""
    from test_bags import T0, TS, cdr, header, image_msg

    from wmpo_core.bags.writer import BagWriterConfig, EpisodeBagWriter, TopicSpec
    from wmpo_core.interfaces import ACTION_CHUNK_TOPIC, CAMERA_TOPIC

    Point = TS.types["trajectory_msgs/msg/JointTrajectoryPoint"]
    Duration = TS.types["builtin_interfaces/msg/Duration"]
    dt = 50_000_000
    w = EpisodeBagWriter(
        tmp_path / "ep",
        [
            TopicSpec(CAMERA_TOPIC, "sensor_msgs/msg/Image"),
            TopicSpec(ACTION_CHUNK_TOPIC, "trajectory_msgs/msg/JointTrajectory"),
        ],
        BagWriterConfig(),
    )

    def chunk(start_frame: int, values: list[float]) -> bytes:
        pts = [
            Point(
                positions=np.array([v, 0, 0, 0, 0, 0, 1.0]),
                velocities=np.array([], dtype=np.float64),
                accelerations=np.array([], dtype=np.float64),
                effort=np.array([], dtype=np.float64),
                time_from_start=Duration(sec=0, nanosec=k * dt),
            )
            for k, v in enumerate(values)
        ]
        return cdr(
            "trajectory_msgs/msg/JointTrajectory",
            header=header(T0 + start_frame * dt),
            joint_names=["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"],
            points=pts,
        )

    for i in range(8):
        t = T0 + i * dt
        # Frames' bag log time is 30 ms late (transport); alignment must use header stamps.
        w.write(CAMERA_TOPIC, t + 30_000_000, image_msg(t, value=i))
    w.write(ACTION_CHUNK_TOPIC, T0 + 1, chunk(0, [0.1, 0.2, 0.3, 0.4]))
    w.write(ACTION_CHUNK_TOPIC, T0 + 2 * dt + 1, chunk(2, [0.5, 0.6, 0.7, 0.8]))
    w.close()
    meta, _, actions = load_episode(tmp_path / "ep", IngestConfig(image_size=16, tolerance_ms=10))
    assert meta.extra["alignment"]["action_source"] == "chunk"
    np.testing.assert_allclose(actions[:6, 0], [0.1, 0.2, 0.5, 0.6, 0.7, 0.8])
    assert meta.extra["alignment"]["gap_frames"] == [6, 7]
    assert (actions[:6, 6] == 1.0).all()
