"""SimArm over the real robosuite: seeding, frames, action semantics, privileged state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wmpo_core.errors import WmpoError
from wmpo_core.sim.arm import JOINT_NAMES, SimArm, SimConfig

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def arm():
    with SimArm(SimConfig(task="Lift", image_size=64)) as a:
        yield a


def _act(**kw) -> np.ndarray:
    a = np.zeros(7)
    names = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
    for k, v in kw.items():
        a[names.index(k)] = v
    return a


def test_config_rejects_bad_values_with_the_fix():
    with pytest.raises(WmpoError, match="unknown sim task 'Lfit'; choose one of Lift"):
        SimConfig(task="Lfit")
    with pytest.raises(WmpoError, match="image_size"):
        SimConfig(image_size=4)
    with pytest.raises(WmpoError, match="camera"):
        SimConfig(camera="nope")
    assert SimConfig(task="Stack").horizon == 300  # per-task default from tasks.py


def test_observation_layout(arm):
    obs = arm.reset(0)
    assert obs.image.shape == (64, 64, 3) and obs.image.dtype == np.uint8
    assert obs.joint_names == JOINT_NAMES and len(JOINT_NAMES) == 9
    assert obs.joint_positions.shape == (9,) and obs.joint_positions.dtype == np.float64
    assert obs.eef_pos.shape == (3,) and obs.eef_quat.shape == (4,) and obs.step == 0
    assert np.linalg.norm(obs.eef_quat) == pytest.approx(1.0)


def test_image_is_upright(arm):
    # agentview looks at the robot across the table: the dark background and the robot
    # are at the top of an upright frame, the bright table top fills the bottom.
    img = arm.reset(0).image.astype(float).mean(axis=2)
    assert img[-16:].mean() > img[:16].mean() + 40, "frame looks upside down"


def test_same_seed_same_state_different_seed_different_state(arm):
    def rollout(seed):
        obs = arm.reset(seed)
        first = (obs.image.copy(), arm.privileged_state())
        for _ in range(5):
            obs = arm.step(_act(dx=0.5, dz=-0.3, gripper=1.0))
        return first, obs

    (img_a, state_a), end_a = rollout(7)
    rollout(8)  # something in between must not leak into the next reset
    (img_b, state_b), end_b = rollout(7)
    assert state_a == state_b
    np.testing.assert_array_equal(img_a, img_b)
    np.testing.assert_array_equal(end_a.image, end_b.image)
    np.testing.assert_array_equal(end_a.joint_positions, end_b.joint_positions)
    arm.reset(8)
    other = arm.privileged_state()["objects"]["cube"]["pos"]
    assert np.abs(np.subtract(other, state_a["objects"]["cube"]["pos"])).max() > 1e-3


def test_actions_move_the_arm_as_named(arm):
    start = arm.reset(0)
    for _ in range(10):
        obs = arm.step(_act(dz=0.5, gripper=-1.0))
    assert obs.eef_pos[2] - start.eef_pos[2] > 0.05  # +dz is up
    assert abs(obs.eef_pos[0] - start.eef_pos[0]) < 0.01
    open_width = obs.joint_positions[7]
    for _ in range(10):
        obs = arm.step(_act(gripper=1.0))
    assert obs.joint_positions[7] < open_width - 0.02  # +1 closes the fingers
    assert obs.step == 20


def test_out_of_range_actions_are_clipped(arm):
    arm.reset(3)
    a = arm.step(_act(dx=5.0, gripper=9.0))
    arm.reset(3)
    b = arm.step(_act(dx=1.0, gripper=1.0))
    np.testing.assert_array_equal(a.joint_positions, b.joint_positions)


@pytest.mark.parametrize(
    "bad", [np.full(7, np.nan), np.r_[np.zeros(6), np.inf], np.zeros(6)], ids=["nan", "inf", "6-D"]
)
def test_bad_actions_raise(arm, bad):
    arm.reset(0)
    with pytest.raises(ValueError, match="SimArm.step"):
        arm.step(bad)
    assert arm.step_count == 0


def test_privileged_state_is_plain_json_with_task_objects():
    with SimArm(SimConfig(task="NutAssemblySquare", render=False)) as sq:
        obs = sq.reset(1)
        assert obs.image is None  # state-only mode
        state = sq.privileged_state()
        assert json.loads(json.dumps(state)) == state
        assert set(state["objects"]) == {"nut"}
        assert len(state["handle"]) == len(state["peg"]) == 3
        assert state["success"] is False and state["task"] == "NutAssemblySquare"
        assert len(state["joint_positions"]) == 9
