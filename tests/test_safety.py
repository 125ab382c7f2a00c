"""The safety filter: what reaches the arm, for any input the policy could send."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wmpo_core.runtime.safety import (
    CLAMPED,
    ESTOP,
    NO_EE_POSE,
    NONFINITE,
    QUEUE_EMPTY,
    STALE_CHUNK,
    STEP_LIMITED,
    WORKSPACE,
    SafetyConfig,
    SafetyFilter,
)

BOX = dict(workspace_low=(-0.3, -0.3, 0.8), workspace_high=(0.3, 0.3, 1.3))
MAX_STEP = np.array([0.5] * 6 + [2.0])


def ee_filter(**kw) -> SafetyFilter:
    return SafetyFilter(SafetyConfig(**kw))


def test_passes_a_small_action_unchanged():
    f = ee_filter()
    a = np.array([0.1, -0.2, 0.3, 0.0, 0.1, 0.0, -1.0])
    out = f.filter(a, now=1.0, action_stamp=0.9)
    assert not out.hold and out.reasons == ()
    np.testing.assert_allclose(out.command, a)


def test_nan_is_dropped_and_counted_as_a_hold_that_keeps_the_gripper():
    f = ee_filter()
    f.filter(np.array([0, 0, 0, 0, 0, 0, 1.0]), now=0.0)  # gripper closed
    out = f.filter(np.array([np.nan, 0, 0, 0, 0, 0, -1.0]), now=0.05)
    assert out.hold and out.reasons == (NONFINITE,)
    np.testing.assert_array_equal(out.command, [0, 0, 0, 0, 0, 0, 1.0])
    assert f.snapshot()[NONFINITE] == 1


def test_huge_action_is_clamped_then_step_limited():
    f = ee_filter()
    f.filter(np.zeros(7), now=0.0)
    out = f.filter(np.array([1e9, -1e9, 0, 0, 0, 0, 1e9]), now=0.05)
    assert set(out.reasons) == {CLAMPED, STEP_LIMITED}
    np.testing.assert_allclose(out.command, [0.5, -0.5, 0, 0, 0, 0, 1.0])
    assert f.snapshot()[CLAMPED] == 1 and f.snapshot()[STEP_LIMITED] == 1


def test_idle_hold_is_not_counted():
    f = ee_filter()
    f.filter(np.array([0, 0, 0.2, 0, 0, 0, 1.0]), now=0.0)
    out = f.idle()
    assert out.hold and out.reasons == ()
    np.testing.assert_array_equal(out.command, [0, 0, 0, 0, 0, 0, 1.0])
    assert sum(f.snapshot().values()) == 0


def test_stale_chunk_and_empty_queue_hold():
    f = ee_filter(chunk_timeout_s=0.5)
    assert f.filter(np.zeros(7), now=10.0, action_stamp=9.0).reasons == (STALE_CHUNK,)
    assert f.filter(None, now=10.0).reasons == (QUEUE_EMPTY,)


def test_workspace_blocks_motion_out_of_the_box_but_allows_moving_back():
    f = ee_filter(**BOX, max_step=(2.0,) * 7)
    at_top = np.array([0.0, 0.0, 1.29])
    out = f.filter(np.array([0.2, 0, 1.0, 0, 0, 0, 0]), now=0, ee_pos=at_top)
    assert WORKSPACE in out.reasons
    assert out.command[2] == 0.0 and out.command[0] == pytest.approx(0.2)
    back = f.filter(np.array([0, 0, -1.0, 0, 0, 0, 0]), now=0.05, ee_pos=at_top)
    assert WORKSPACE not in back.reasons and back.command[2] == -1.0


def test_unknown_pose_with_a_workspace_holds():
    f = ee_filter(**BOX)
    assert f.filter(np.zeros(7), now=0, ee_pos=None).reasons == (NO_EE_POSE,)


def test_estop_latches_until_reset():
    f = ee_filter()
    f.estop()
    for t in range(5):
        out = f.filter(np.full(7, 0.3), now=t)
        assert out.hold and out.reasons == (ESTOP,) and not np.any(out.command[:6])
    assert f.snapshot()[ESTOP] == 1  # counted per activation, not per held period
    f.reset_estop()
    assert not f.filter(np.full(7, 0.3), now=6).hold


def test_joint_arm_holds_last_position_and_respects_limits():
    cfg = SafetyConfig(arm_type="joint", lower=(-1.0, -2.0), upper=(1.0, 2.0), max_step=(0.1, 0.1))
    f = SafetyFilter(cfg)
    assert f.filter(None, now=0) is None  # nothing measured, nothing commanded: send nothing
    f.set_measured(np.array([0.5, 5.0]))  # out-of-limit measurement is clipped for holding
    out = f.filter(np.array([3.0, 1.95]), now=0.05)
    np.testing.assert_allclose(out.command, [0.6, 1.95])
    hold = f.filter(None, now=0.1)
    np.testing.assert_allclose(hold.command, [0.6, 1.95])


def test_config_rejects_inconsistent_bounds():
    with pytest.raises(ValueError, match="lower > upper"):
        SafetyConfig(lower=(1.0,) * 7, upper=(0.0,) * 7)
    with pytest.raises(ValueError, match="both workspace"):
        SafetyConfig(workspace_low=(0, 0, 0))
    with pytest.raises(ValueError, match="max_step"):
        SafetyConfig(max_step=(0.0,) * 7)


finite = st.floats(-1e6, 1e6, allow_nan=False)
anything = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")))
actions = st.one_of(st.none(), st.lists(anything, min_size=7, max_size=7).map(np.array))
positions = st.one_of(st.none(), st.lists(st.floats(-2, 3), min_size=3, max_size=3).map(np.array))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(actions, positions, st.booleans()), min_size=1, max_size=40))
def test_property_ee_output_always_finite_bounded_and_step_limited(seq):
    f = ee_filter(**BOX)
    lo, hi = np.array(f.config.lower), np.array(f.config.upper)
    prev = None
    for k, (a, pos, estop) in enumerate(seq):
        if estop and k % 7 == 3:
            f.estop()
        out = f.filter(a, now=0.05 * k, action_stamp=0.05 * k, ee_pos=pos)
        c = out.command
        assert np.all(np.isfinite(c)) and np.all(c >= lo) and np.all(c <= hi)
        if out.hold:
            assert not np.any(c[:6])  # a hold never moves the arm
        elif prev is not None:
            assert np.all(np.abs(c - prev) <= MAX_STEP + 1e-12)
        if pos is not None and not out.hold:
            # never pushes further out of the box than one period of motion would allow
            target = pos + c[:3] * 0.05
            outside_hi = (target > np.array(BOX["workspace_high"])) & (c[:3] > 0)
            outside_lo = (target < np.array(BOX["workspace_low"])) & (c[:3] < 0)
            assert not np.any(outside_hi | outside_lo)
        prev = c


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.lists(anything, min_size=3, max_size=3).map(np.array)),
        min_size=1,
        max_size=40,
    )
)
def test_property_joint_output_inside_limits_and_never_jumps(seq):
    cfg = SafetyConfig(
        arm_type="joint", lower=(-1.0, -2.0, 0.0), upper=(1.0, 2.0, 0.04), max_step=(0.1, 0.2, 0.01)
    )
    f = SafetyFilter(cfg, initial=np.zeros(3))
    prev = np.zeros(3)
    for k, a in enumerate(seq):
        c = f.filter(a, now=0.05 * k).command
        assert np.all(c >= cfg.lower) and np.all(c <= cfg.upper)
        assert np.all(np.abs(c - prev) <= np.array(cfg.max_step) + 1e-12)
        prev = c
