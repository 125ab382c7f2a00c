"""Conversions between the policy's normalized EE-delta actions and arm commands.

The policy acts in robosuite's normalized OSC_POSE space ([-1, 1] per dim,
gripper -1 open / +1 closed). A real arm under MoveIt Servo takes velocities,
so a normalized translation a moves a * 0.05 m in one control period:
v = a * 0.05 m * rate. The embedded sim inverts the same formula, so a twist
means the same thing to the sim as to a Servo-driven arm.
"""

from __future__ import annotations

import numpy as np

from wmpo_core.interfaces import EE_ACTION_DIM, OSC_MAX_ROTATION_RAD, OSC_MAX_TRANSLATION_M


def ee_action_to_twist(action: np.ndarray, rate_hz: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Normalized 7-D action -> (linear m/s [3], angular rad/s [3], gripper in [-1, 1])."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != (EE_ACTION_DIM,):
        raise ValueError(f"expected a {EE_ACTION_DIM}-D EE action, got shape {a.shape}")
    linear = a[:3] * OSC_MAX_TRANSLATION_M * rate_hz
    angular = a[3:6] * OSC_MAX_ROTATION_RAD * rate_hz
    return linear, angular, float(a[6])


def twist_to_ee_action(
    linear: np.ndarray, angular: np.ndarray, gripper: float, rate_hz: float
) -> np.ndarray:
    """Inverse of `ee_action_to_twist` (values are not clipped here; the safety filter does)."""
    a = np.empty(EE_ACTION_DIM, dtype=np.float64)
    a[:3] = np.asarray(linear, dtype=np.float64) / (OSC_MAX_TRANSLATION_M * rate_hz)
    a[3:6] = np.asarray(angular, dtype=np.float64) / (OSC_MAX_ROTATION_RAD * rate_hz)
    a[6] = gripper
    return a
