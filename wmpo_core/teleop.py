"""Teleoperation mappings: a gamepad / 3D mouse (sensor_msgs/Joy fields) or a keyboard
-> the policy's normalized 7-D EE-delta action (wmpo_core.interfaces.EE_ACTION_NAMES).

The node (wmpo_nodes/teleop_node.py) turns the action into a TwistStamped + gripper
command with wmpo_core.commands.ee_action_to_twist, the same conversion the
policy's actions go through, so a demonstration and a rollout mean the same
thing in a bag.

Safety: with a deadman button configured, nothing moves unless it is held;
releasing it sends zero velocity (the gripper keeps its last command, so a held
object is not dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wmpo_core.interfaces import EE_ACTION_DIM

GRIPPER_OPEN, GRIPPER_CLOSED = -1.0, 1.0


@dataclass
class JoyMapping:
    axes: list[int] = field(default_factory=lambda: [1, 0, 4, -1, -1, 3])
    """Joy axis index for dx, dy, dz, droll, dpitch, dyaw (-1 = not mapped). The default
    is an Xbox-style pad: left stick x/y, right stick vertical = z, right stick horizontal = yaw."""
    signs: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    """Per-dimension sign (flip an axis that moves the wrong way)."""
    scale: float = 0.5
    """Full stick deflection -> this normalized action (1.0 = the OSC limit per control step)."""
    rotation_scale: float = 0.5
    """Same for the rotation dimensions."""
    deadzone: float = 0.1
    """Stick values with |v| below this are zero (sticks rarely rest at exactly 0)."""
    deadman_button: int = 4
    """Button that must be held for motion (-1 = no deadman; only for a 3D mouse on a desk)."""
    gripper_close_button: int = 0
    """Button that closes the gripper (-1 = none)."""
    gripper_open_button: int = 1
    """Button that opens the gripper (-1 = none)."""

    def __post_init__(self) -> None:
        if len(self.axes) != 6 or len(self.signs) != 6:
            raise ValueError(
                f"axes and signs need 6 entries (dx dy dz droll dpitch dyaw), "
                f"got {len(self.axes)} and {len(self.signs)}"
            )
        if not 0.0 < self.scale <= 1.0 or not 0.0 < self.rotation_scale <= 1.0:
            raise ValueError(
                f"scale ({self.scale}) and rotation_scale ({self.rotation_scale}) must be in (0, 1]"
            )
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {self.deadzone}")


class JoyTeleop:
    """Stateful (the gripper command persists between messages)."""

    def __init__(self, mapping: JoyMapping):
        self.mapping = mapping
        self.gripper = GRIPPER_OPEN

    def deadman_held(self, buttons: Sequence[int]) -> bool:
        b = self.mapping.deadman_button
        return b < 0 or (b < len(buttons) and bool(buttons[b]))

    def action(self, axes: Sequence[float], buttons: Sequence[int]) -> np.ndarray:
        """One Joy message -> normalized 7-D action (motion zero unless the deadman is held)."""
        m = self.mapping
        if self._pressed(buttons, m.gripper_close_button):
            self.gripper = GRIPPER_CLOSED
        elif self._pressed(buttons, m.gripper_open_button):
            self.gripper = GRIPPER_OPEN
        out = np.zeros(EE_ACTION_DIM, dtype=np.float64)
        out[6] = self.gripper
        if not self.deadman_held(buttons):
            return out
        for dim, (axis, sign) in enumerate(zip(m.axes, m.signs, strict=True)):
            if 0 <= axis < len(axes):
                v = float(axes[axis])
                if abs(v) < m.deadzone:
                    continue
                # Rescale so motion starts from 0 at the deadzone edge, not with a jump.
                v = np.sign(v) * (abs(v) - m.deadzone) / (1.0 - m.deadzone)
                out[dim] = sign * v * (m.scale if dim < 3 else m.rotation_scale)
        out[:6] = np.clip(out[:6], -1.0, 1.0)
        return out

    @staticmethod
    def _pressed(buttons: Sequence[int], index: int) -> bool:
        return 0 <= index < len(buttons) and bool(buttons[index])


# Keyboard: one key press = one control step of motion in that direction.
KEYMAP: dict[str, tuple[int, float]] = {
    "w": (0, 1.0),  # +x (away from the robot base)
    "s": (0, -1.0),
    "a": (1, 1.0),  # +y (left)
    "d": (1, -1.0),
    "r": (2, 1.0),  # up
    "f": (2, -1.0),
    "q": (5, 1.0),  # yaw
    "e": (5, -1.0),
}
# Keys that are commands, not motion (the node maps them to episode commands).
KEY_COMMANDS = {
    " ": "toggle_gripper",
    "y": "label_success",
    "n": "label_failure",
    "x": "discard",
    "b": "start",
    "p": "stop",
}


class KeyboardTeleop:
    def __init__(self, scale: float = 0.5):
        if not 0.0 < scale <= 1.0:
            raise ValueError(f"keyboard scale must be in (0, 1], got {scale}")
        self.scale = scale
        self.gripper = GRIPPER_OPEN

    def key(self, ch: str) -> tuple[np.ndarray | None, str | None]:
        """A key -> (action to send or None, command name or None). Unknown keys do nothing."""
        ch = ch.lower()
        command = KEY_COMMANDS.get(ch)
        if command == "toggle_gripper":
            self.gripper = GRIPPER_CLOSED if self.gripper == GRIPPER_OPEN else GRIPPER_OPEN
            return self._zero(), None
        if command is not None:
            return None, command
        if ch not in KEYMAP:
            return None, None
        out = self._zero()
        dim, sign = KEYMAP[ch]
        out[dim] = sign * self.scale
        return out, None

    def _zero(self) -> np.ndarray:
        out = np.zeros(EE_ACTION_DIM, dtype=np.float64)
        out[6] = self.gripper
        return out
