"""Which arm commands the sim accepts: the driver-side check a real Servo arm would make.

Pure logic (no rclpy) so the sim node stays thin and the rules are unit-testable.
A command is refused, and the arm holds still, when it has NaN/Inf, names the
wrong frame, or is stale (older than `timeout_s` by the arm's clock: wall time
in 'wall' mode, sim time in 'lockstep').
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wmpo_core.commands import twist_to_ee_action
from wmpo_core.interfaces import BASE_FRAME, EE_ACTION_DIM

REASONS = ("non_finite", "wrong_frame", "stale", "future")


@dataclass
class TwistCommand:
    stamp_s: float
    """header.stamp in seconds."""
    frame_id: str
    """header.frame_id."""
    linear: tuple[float, float, float]
    """m/s."""
    angular: tuple[float, float, float]
    """rad/s."""


@dataclass
class CommandGate:
    rate_hz: float
    """Control rate that turns twist velocities into per-step normalized deltas."""
    timeout_s: float = 0.5
    """A twist older than this (arm clock) is stale; also how long a good twist is reused."""
    frame_id: str = BASE_FRAME
    """The only frame the arm accepts twists in."""
    future_tolerance_s: float = 0.5
    """Stamps this far ahead of the arm clock are refused (a clock mix-up, e.g. wall vs sim)."""
    rejected: Counter = field(default_factory=Counter)
    """Refusals so far, by reason (REASONS)."""

    def __post_init__(self) -> None:
        if self.rate_hz <= 0 or self.timeout_s <= 0:
            raise ValueError(
                f"CommandGate needs rate_hz > 0 and timeout_s > 0, got {self.rate_hz}, {self.timeout_s}"
            )

    def check(
        self, cmd: TwistCommand, now_s: float, gripper: float
    ) -> tuple[np.ndarray | None, str]:
        """(normalized 7-D action, '') for a good twist, else (None, 'reason: detail')."""
        values = np.array([*cmd.linear, *cmd.angular, cmd.stamp_s], dtype=np.float64)
        if not np.isfinite(values).all():
            return self._refuse("non_finite", f"NaN/Inf in twist {values[:6].tolist()}")
        if cmd.frame_id != self.frame_id:
            return self._refuse(
                "wrong_frame", f"header.frame_id '{cmd.frame_id}', expected '{self.frame_id}'"
            )
        age = now_s - cmd.stamp_s
        if age > self.timeout_s:
            return self._refuse(
                "stale",
                f"stamp {cmd.stamp_s:.3f} s is {age:.3f} s old (timeout {self.timeout_s} s)",
            )
        if -age > self.future_tolerance_s:
            return self._refuse(
                "future", f"stamp {cmd.stamp_s:.3f} s is {-age:.3f} s ahead of the arm clock"
            )
        action = twist_to_ee_action(cmd.linear, cmd.angular, gripper, self.rate_hz)
        return np.clip(action, -1.0, 1.0), ""

    def fresh(self, stamp_s: float, now_s: float) -> bool:
        """Whether an accepted twist stamped `stamp_s` may still drive the arm at `now_s`."""
        return now_s - stamp_s <= self.timeout_s

    def _refuse(self, reason: str, detail: str) -> tuple[None, str]:
        self.rejected[reason] += 1
        return None, f"{reason}: {detail}"


def hold(gripper: float) -> np.ndarray:
    """The zero-motion action (keep the gripper where it was commanded)."""
    action = np.zeros(EE_ACTION_DIM)
    action[6] = float(np.clip(gripper, -1.0, 1.0))
    return action
