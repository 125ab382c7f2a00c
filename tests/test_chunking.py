"""Chunk scheduling: which action plays at each tick, per strategy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmpo_core.runtime.chunking import (
    STRATEGIES,
    ChunkConfig,
    LatencyAwareScheduler,
    make_scheduler,
    request_lead_steps,
)

DT = 0.05


def chunk(values, dim: int = 2) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float64)[:, None], dim, axis=1)


def play(s, t0: float, n: int) -> list:
    return [s.next_action(t0 + k * DT) for k in range(n)]


def test_open_loop_plays_every_action_in_order_then_holds():
    s = make_scheduler(ChunkConfig("open_loop", DT))
    s.add_chunk(chunk([0, 1, 2, 3]), obs_stamp=0.0, now=0.2)
    s.add_chunk(chunk([10, 11]), obs_stamp=0.1, now=0.25)
    out = play(s, 0.3, 7)
    assert [o.action[0] for o in out[:6]] == [0, 1, 2, 3, 10, 11]
    assert out[6] is None


def test_temporal_ensemble_uses_act_weights():
    s = make_scheduler(ChunkConfig("temporal_ensemble", DT, ensemble_decay=0.5))
    s.add_chunk(chunk([0.0, 0.0, 0.0]), 0.0, 0.0)
    assert s.next_action(0.0).action[0] == 0.0
    s.add_chunk(chunk([1.0, 1.0, 1.0]), 0.05, 0.05)
    w = np.exp(-0.5 * np.arange(2))  # oldest first
    expected = (w[0] * 0.0 + w[1] * 1.0) / w.sum()
    assert s.next_action(0.05).action[0] == pytest.approx(expected)
    assert s.next_action(0.10).action[0] == pytest.approx(expected)
    assert s.next_action(0.15).action[0] == pytest.approx(1.0)  # the old chunk has ended
    assert s.next_action(0.20) is None


def test_latency_aware_skips_overtaken_actions_and_blends():
    s = LatencyAwareScheduler(ChunkConfig("latency_aware", DT, blend_steps=1))
    s.add_chunk(chunk(np.arange(8.0)), obs_stamp=0.0, now=0.0)
    assert [o.action[0] for o in play(s, 0.0, 3)] == [0, 1, 2]
    # Observation at 0.05, answer lands at 0.17: actions 0..1 of the new chunk are overtaken.
    s.add_chunk(chunk(100 + np.arange(8.0)), obs_stamp=0.05, now=0.17)
    nxt = s.next_action(0.15 + 0.05)  # tick at 0.20: due index round(0.15/0.05) = 3
    assert nxt.index == 3 and s.skipped_actions == 3
    assert nxt.action[0] == pytest.approx(0.5 * 3 + 0.5 * 103)  # one blend step, alpha 1/2
    assert s.next_action(0.25).action[0] == 104


def test_latency_aware_drops_a_fully_overtaken_or_older_chunk():
    s = LatencyAwareScheduler(ChunkConfig("latency_aware", DT))
    s.add_chunk(chunk([1.0, 2.0]), obs_stamp=1.0, now=1.0)
    s.next_action(1.0)
    s.add_chunk(chunk([5.0, 6.0]), obs_stamp=0.5, now=1.05)  # older observation
    s.add_chunk(chunk([7.0, 8.0]), obs_stamp=0.0, now=1.05)
    assert s.dropped_chunks == 2
    assert s.next_action(1.05).action[0] == 2.0


def test_time_going_backwards_is_refused():
    for name in STRATEGIES:
        s = make_scheduler(ChunkConfig(name, DT))
        s.next_action(1.0)
        with pytest.raises(ValueError, match="backwards"):
            s.next_action(0.9)


def test_request_lead_covers_the_latency():
    assert request_lead_steps(0.0, DT) == 1
    assert request_lead_steps(0.12, DT) == 4
    with pytest.raises(ValueError):
        ChunkConfig("bogus")


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "tick", "tick", "clear"]),
        st.floats(0.0, 0.2),  # time advance
        st.floats(0.0, 0.6),  # inference delay of an added chunk
        st.integers(1, 8),  # chunk length
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(STRATEGIES), ops, st.integers(0, 10_000))
def test_property_outputs_bounded_and_time_never_goes_backwards(strategy, seq, seed):
    rng = np.random.default_rng(seed)
    s = make_scheduler(ChunkConfig(strategy, DT, blend_steps=2))
    now, lo, hi = 0.0, np.inf, -np.inf
    played: dict[int, int] = {}
    last_chunk = -1
    stamps: dict[int, float] = {}
    for op, advance, delay, length in seq:
        now += advance
        if op == "add":
            actions = rng.uniform(-1, 1, (length, 3))
            lo, hi = min(lo, actions.min()), max(hi, actions.max())
            stamp = max(0.0, now - delay)
            cid = s.add_chunk(actions, stamp, now)
            stamps[cid] = stamp
        elif op == "clear":
            s.clear()
        else:
            out = s.next_action(now)
            if out is None:
                continue
            # Every output is a convex combination of actions the policy sent.
            assert np.all(out.action >= lo - 1e-9) and np.all(out.action <= hi + 1e-9)
            first_of_chunk = out.chunk_id not in played
            # Within a chunk actions play in increasing order (nothing replayed).
            assert out.index > played.get(out.chunk_id, -1)
            played[out.chunk_id] = out.index
            if strategy != "temporal_ensemble":
                # A chunk never plays after a newer one has started.
                assert out.chunk_id >= last_chunk
                last_chunk = out.chunk_id
            if strategy == "latency_aware" and first_of_chunk:
                # A new chunk starts at the action due now: what the delay overtook is skipped.
                assert stamps[out.chunk_id] + out.index * DT >= now - DT / 2 - 1e-9
