"""The last gate before the arm: every command the executor sends passes through here.

The filter never trusts the policy. Per control period it takes the scheduled
action (or None when the queue is empty) and returns a command that is finite,
inside per-dimension bounds, no further than `max_step` from the previous
command, inside the workspace box (EE-delta arms) or joint limits (joint arms),
and a *hold* whenever something is wrong (stale chunk, empty queue, non-finite
values, e-stop). Every intervention is counted by reason so /diagnostics shows it.

Hold semantics (docs/runtime.md):
- EE-delta arms: zero translation/rotation, the last gripper command kept. Stopping
  is always allowed, so a hold is exempt from the step limit; the command after a
  hold ramps up from zero under the step limit again.
- Joint arms: the last commanded joint positions (no motion), so the step limit
  holds for every command.

E-stop latches: once `estop()` is called every command is a hold until
`reset_estop()`; the executor also drops its queue.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wmpo_core.interfaces import EE_ACTION_DIM, OSC_MAX_TRANSLATION_M

ARM_TYPES = ("ee_delta", "joint")

# Reasons an intervention is counted under (the /diagnostics keys).
NONFINITE = "nonfinite"
CLAMPED = "clamped"
STEP_LIMITED = "step_limited"
WORKSPACE = "workspace"
STALE_CHUNK = "stale_chunk"
QUEUE_EMPTY = "queue_empty"
ESTOP = "estop"
NO_EE_POSE = "no_ee_pose"
WRONG_SHAPE = "wrong_shape"
REASONS = (
    NONFINITE,
    CLAMPED,
    STEP_LIMITED,
    WORKSPACE,
    STALE_CHUNK,
    QUEUE_EMPTY,
    ESTOP,
    NO_EE_POSE,
    WRONG_SHAPE,
)


@dataclass
class SafetyConfig:
    arm_type: str = "ee_delta"
    """'ee_delta': normalized 7-D OSC deltas (xyz, axis-angle, gripper);
    'joint': absolute joint position targets (last dim may be a gripper)."""
    lower: tuple[float, ...] = (-1.0,) * EE_ACTION_DIM
    """Per-dimension lower bound of a command (joint arms: the lower joint limits)."""
    upper: tuple[float, ...] = (1.0,) * EE_ACTION_DIM
    """Per-dimension upper bound of a command (joint arms: the upper joint limits)."""
    max_step: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 2.0)
    """Largest change of each dimension between two consecutive commands. The
    gripper may jump open<->closed (2.0); motion dims ramp over >= 2 periods."""
    workspace_low: tuple[float, float, float] | None = None
    """EE arms: lower corner (m, base frame) of the box the end effector must stay in."""
    workspace_high: tuple[float, float, float] | None = None
    """EE arms: upper corner of the workspace box."""
    chunk_timeout_s: float = 1.0
    """An action computed from an observation older than this is not executed (hold)."""
    hold_without_pose: bool = True
    """EE arms with a workspace: hold when the current EE pose is unknown or stale."""

    def __post_init__(self) -> None:
        if self.arm_type not in ARM_TYPES:
            raise ValueError(f"arm_type must be one of {ARM_TYPES}, got '{self.arm_type}'")
        self.lower = tuple(float(v) for v in self.lower)
        self.upper = tuple(float(v) for v in self.upper)
        self.max_step = tuple(float(v) for v in self.max_step)
        n = len(self.lower)
        if len(self.upper) != n or len(self.max_step) != n or n == 0:
            raise ValueError(
                f"lower/upper/max_step need one value per dimension, got lengths "
                f"{len(self.lower)}/{len(self.upper)}/{len(self.max_step)}"
            )
        if self.arm_type == "ee_delta" and n != EE_ACTION_DIM:
            raise ValueError(f"ee_delta arms have {EE_ACTION_DIM} dims, got bounds for {n}")
        bad = [i for i in range(n) if not self.lower[i] <= self.upper[i]]
        if bad:
            raise ValueError(f"lower > upper in dims {bad}: {self.lower} vs {self.upper}")
        if any(not s > 0 for s in self.max_step):
            raise ValueError(f"max_step must be > 0 in every dim, got {self.max_step}")
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("set both workspace_low and workspace_high, or neither")
        if self.workspace_low is not None:
            if self.arm_type != "ee_delta":
                raise ValueError("the workspace box applies to ee_delta arms only")
            lo, hi = np.asarray(self.workspace_low), np.asarray(self.workspace_high)
            if lo.shape != (3,) or hi.shape != (3,) or np.any(lo >= hi):
                raise ValueError(f"workspace box needs 3-D low < high, got {lo} / {hi}")
        if not self.chunk_timeout_s > 0:
            raise ValueError(f"chunk_timeout_s must be > 0, got {self.chunk_timeout_s}")

    @property
    def dim(self) -> int:
        return len(self.lower)


@dataclass
class SafeCommand:
    command: np.ndarray
    """The command to send (float64 [dim])."""
    hold: bool
    """True when the command is a hold (no motion)."""
    reasons: tuple[str, ...] = ()
    """Interventions applied to this command (empty when passed through unchanged)."""


@dataclass
class SafetyFilter:
    config: SafetyConfig
    initial: np.ndarray | None = None
    """Joint arms: the measured joint positions to hold at before the first command."""
    counts: Counter = field(default_factory=Counter)
    halted: bool = False
    _last: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.initial is not None:
            self._last = self._clip(np.asarray(self.initial, dtype=np.float64))

    # --- e-stop ------------------------------------------------------------
    def estop(self) -> None:
        """Latch the halted state (idempotent)."""
        if not self.halted:
            self.counts[ESTOP] += 1
        self.halted = True

    def reset_estop(self) -> None:
        self.halted = False

    # --- the filter --------------------------------------------------------
    def set_measured(self, position: np.ndarray) -> None:
        """Joint arms: seed the hold position from the measured joints before any command."""
        if self._last is None:
            self._last = self._clip(np.asarray(position, dtype=np.float64))

    def hold_command(self) -> np.ndarray | None:
        """What a hold sends now, or None (joint arm with no known position: send nothing)."""
        if self.config.arm_type == "ee_delta":
            cmd = np.zeros(self.config.dim)
            cmd[-1] = self._last[-1] if self._last is not None else self.config.lower[-1]
            return cmd
        return None if self._last is None else self._last.copy()

    def filter(
        self,
        action: np.ndarray | None,
        *,
        now: float,
        action_stamp: float | None = None,
        ee_pos: np.ndarray | None = None,
    ) -> SafeCommand | None:
        """One control period: the scheduled action -> a safe command (None: send nothing)."""
        reason = self._hold_reason(action, now, action_stamp)
        if reason is not None:
            return self._hold(reason)
        a = np.asarray(action, dtype=np.float64)
        reasons: list[str] = []
        lo, hi = np.asarray(self.config.lower), np.asarray(self.config.upper)
        clipped = np.clip(a, lo, hi)
        if np.any(clipped != a):
            reasons.append(CLAMPED)
        a = clipped
        if self.config.workspace_low is not None:
            if ee_pos is None or not np.all(np.isfinite(ee_pos)):
                if self.config.hold_without_pose:
                    return self._hold(NO_EE_POSE)
            else:
                a, hit = self._keep_in_workspace(a, np.asarray(ee_pos, dtype=np.float64))
                if hit:
                    reasons.append(WORKSPACE)
        prev = self._last
        if prev is not None:
            step = np.asarray(self.config.max_step)
            limited = np.clip(a, prev - step, prev + step)
            if np.any(limited != a):
                reasons.append(STEP_LIMITED)
            # Bounds again: a limited step from a previous in-bounds command stays in bounds,
            # this only guards against float round-off.
            a = np.clip(limited, lo, hi)
        for r in reasons:
            self.counts[r] += 1
        self._last = a.copy()
        return SafeCommand(a, hold=False, reasons=tuple(reasons))

    # --- helpers -------------------------------------------------------------
    def _hold_reason(
        self, action: np.ndarray | None, now: float, action_stamp: float | None
    ) -> str | None:
        if self.halted:
            return ESTOP
        if action is None:
            return QUEUE_EMPTY
        a = np.asarray(action)
        if a.shape != (self.config.dim,):
            return WRONG_SHAPE
        if not np.all(np.isfinite(a.astype(np.float64))):
            return NONFINITE
        if action_stamp is not None and now - action_stamp > self.config.chunk_timeout_s:
            return STALE_CHUNK
        return None

    def idle(self) -> SafeCommand | None:
        """A hold that is no intervention (between episodes): same command, not counted."""
        cmd = self.hold_command()
        if cmd is None:
            return None
        if self.config.arm_type == "ee_delta":
            self._last = cmd.copy()
        return SafeCommand(cmd, hold=True, reasons=())

    def _hold(self, reason: str) -> SafeCommand | None:
        # E-stop is counted once per activation (in estop()), not once per held period.
        if reason != ESTOP:
            self.counts[reason] += 1
        cmd = self.hold_command()
        if cmd is None:
            return None
        if self.config.arm_type == "ee_delta":
            self._last = cmd.copy()
        return SafeCommand(cmd, hold=True, reasons=(reason,))

    def _keep_in_workspace(self, a: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, bool]:
        # A normalized 1.0 moves at most OSC_MAX_TRANSLATION_M in one period: zero every axis
        # whose full displacement would leave the box, but always allow moving back inside.
        lo = np.asarray(self.config.workspace_low)
        hi = np.asarray(self.config.workspace_high)
        target = pos + a[:3] * OSC_MAX_TRANSLATION_M
        out_high = (target > hi) & (a[:3] > 0)
        out_low = (target < lo) & (a[:3] < 0)
        blocked = out_high | out_low
        if not np.any(blocked):
            return a, False
        a = a.copy()
        a[:3][blocked] = 0.0
        return a, True

    def _clip(self, a: np.ndarray) -> np.ndarray:
        return np.clip(a, np.asarray(self.config.lower), np.asarray(self.config.upper))

    def snapshot(self) -> dict[str, int]:
        """Intervention counts by reason (every reason present, zeros included)."""
        return {r: int(self.counts.get(r, 0)) for r in REASONS}
