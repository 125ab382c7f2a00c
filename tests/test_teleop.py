"""Teleop mappings: deadman, axes, signs, scale, deadzone, gripper buttons, keyboard."""

from __future__ import annotations

import numpy as np
import pytest

from wmpo_core.commands import ee_action_to_twist, twist_to_ee_action
from wmpo_core.teleop import JoyMapping, JoyTeleop, KeyboardTeleop

AXES = [0.0] * 8
DEADMAN = 4


def buttons(*pressed: int) -> list[int]:
    b = [0] * 12
    for i in pressed:
        b[i] = 1
    return b


def test_deadman_released_means_no_motion():
    joy = JoyTeleop(JoyMapping())
    axes = [1.0, -1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    a = joy.action(axes, buttons())
    assert np.all(a[:6] == 0.0) and a[6] == -1.0
    held = joy.action(axes, buttons(DEADMAN))
    assert np.count_nonzero(held[:6]) > 0


def test_axes_signs_and_scale_map_to_dimensions():
    m = JoyMapping(
        axes=[2, 0, 1, -1, -1, 3],
        signs=[1, -1, 1, 1, 1, -1],
        scale=0.4,
        rotation_scale=0.2,
        deadzone=0.0,
    )
    joy = JoyTeleop(m)
    a = joy.action([0.5, 1.0, -0.25, 1.0], buttons(DEADMAN))
    np.testing.assert_allclose(a[:6], [-0.25 * 0.4, -0.5 * 0.4, 1.0 * 0.4, 0, 0, -0.2])


def test_deadzone_and_rescale():
    joy = JoyTeleop(JoyMapping(axes=[0, -1, -1, -1, -1, -1], scale=1.0, deadzone=0.2))
    assert joy.action([0.15], buttons(DEADMAN))[0] == 0.0
    assert joy.action([0.6], buttons(DEADMAN))[0] == pytest.approx(0.5)
    assert joy.action([-1.0], buttons(DEADMAN))[0] == pytest.approx(-1.0)


def test_gripper_buttons_latch_even_without_deadman():
    joy = JoyTeleop(JoyMapping())
    assert joy.action(AXES, buttons(0))[6] == 1.0  # close
    assert joy.action(AXES, buttons())[6] == 1.0  # stays closed (a held cube is not dropped)
    assert joy.action(AXES, buttons(1))[6] == -1.0


def test_no_deadman_configured_moves_freely():
    joy = JoyTeleop(JoyMapping(deadman_button=-1, deadzone=0.0, scale=1.0))
    assert joy.action([0.0, 0.7], buttons())[0] == pytest.approx(0.7)


def test_joy_action_survives_the_twist_round_trip():
    joy = JoyTeleop(JoyMapping(deadzone=0.0))
    a = joy.action([0.3, -0.6, 0, 0, 0.9, 0, 0, 0], buttons(DEADMAN, 0))
    lin, ang, grip = ee_action_to_twist(a, 20.0)
    np.testing.assert_allclose(twist_to_ee_action(lin, ang, grip, 20.0), a)


@pytest.mark.parametrize(
    "kw", [{"axes": [0, 1]}, {"scale": 0.0}, {"scale": 1.5}, {"deadzone": 1.0}]
)
def test_bad_mapping_fails_at_construction(kw):
    with pytest.raises(ValueError):
        JoyMapping(**kw)


def test_keyboard_moves_one_step_and_toggles_gripper():
    kb = KeyboardTeleop(scale=0.5)
    a, cmd = kb.key("w")
    assert cmd is None and a[0] == 0.5 and a[6] == -1.0
    a, _ = kb.key("F")
    assert a[2] == -0.5
    a, _ = kb.key(" ")
    assert np.all(a[:6] == 0) and a[6] == 1.0
    assert kb.key("d")[0][6] == 1.0  # gripper state persists
    assert kb.key("y") == (None, "label_success")
    assert kb.key("x") == (None, "discard")
    assert kb.key("?") == (None, None)
