"""The episode state machine and its JSON event schema."""

from __future__ import annotations

import json

import pytest

from wmpo_core.runtime.episode import (
    EpisodeError,
    EpisodeTracker,
    parse_command,
    parse_event,
)


def test_start_stop_label_reset_round_trip():
    t = EpisodeTracker(task="Lift", seed=3, max_duration_s=10)
    t.policy_version = "v7"
    start = t.start("lift the red cube", now=100.0)
    assert start.event == "start" and start.start_stamp == 100.0 and start.label is None
    again = parse_event(start.to_json())
    assert again == start and json.loads(start.to_json())["schema"] == 1
    events = t.label_episode("success", "operator", now=104.0)  # running: stops first
    assert [e.event for e in events] == ["stop", "label"]
    assert events[1].label == "success" and events[1].labelled_by == "operator"
    assert events[1].stop_stamp == 104.0 and events[1].policy_version == "v7"
    assert events[1].episode_id == start.episode_id and events[1].seed == 3
    relabel = t.label_episode("failure", "reviewer", now=110.0)  # the last label wins
    assert [e.event for e in relabel] == ["label"] and relabel[0].label == "failure"
    assert t.reset(now=111.0).event == "reset" and t.state == "idle"


def test_timeout_stops_a_running_episode_once():
    t = EpisodeTracker(max_duration_s=5)
    t.start("x", now=0.0)
    assert t.check_timeout(4.9) is None
    ev = t.check_timeout(5.0)
    assert ev.event == "stop" and ev.reason == "timeout"
    assert t.check_timeout(6.0) is None


def test_illegal_transitions_say_what_to_do():
    t = EpisodeTracker()
    with pytest.raises(EpisodeError, match="no running episode"):
        t.stop(0.0)
    with pytest.raises(EpisodeError, match="no episode to label"):
        t.label_episode("success", "op", 0.0)
    t.start("x", 0.0)
    with pytest.raises(EpisodeError, match="stop it first"):
        t.start("y", 1.0)
    with pytest.raises(EpisodeError, match="label must be"):
        t.label_episode("great", "op", 1.0)
    with pytest.raises(EpisodeError, match="non-empty instruction"):
        EpisodeTracker().start("  ", 0.0)


def test_episode_ids_are_unique():
    t = EpisodeTracker()
    ids = set()
    for k in range(5):
        ids.add(t.start("x", k).episode_id)
        t.stop(k + 0.5)
    assert len(ids) == 5


def test_parse_rejects_foreign_json_and_commands():
    with pytest.raises(EpisodeError, match="schema"):
        parse_event('{"event": "start"}')
    with pytest.raises(EpisodeError, match="not JSON"):
        parse_event("start")
    assert parse_command('{"command": "start", "instruction": "go"}') == (
        "start",
        {"instruction": "go"},
    )
    with pytest.raises(EpisodeError, match="expected"):
        parse_command('{"command": "explode"}')


def test_episode_start_frame_is_the_first_main_frame_until_the_next_start():
    """The runtime, not the policy, keeps the first frame: a policy swapped in mid-episode
    still sees the episode's real first frame, and a new episode replaces it."""
    import numpy as np

    from wmpo_core.interfaces import EPISODE_START
    from wmpo_core.runtime.episode import EpisodeStartFrame

    first = EpisodeStartFrame("camera")
    a, b, c = (np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3))
    assert first.add_to({"wrist_camera": a}) == {"wrist_camera": a}  # no main frame yet
    assert first.add_to({"camera": a})[EPISODE_START] is a
    later = first.add_to({"camera": b, "wrist_camera": c})
    assert later[EPISODE_START] is a and later["camera"] is b and later["wrist_camera"] is c
    first.reset()  # the next episode starts
    assert first.add_to({"camera": c})[EPISODE_START] is c
