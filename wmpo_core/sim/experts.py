"""Scripted experts: phase state machines over privileged poses, acting in OSC_POSE.

Each expert reads `SimArm.privileged_state()` (a plain JSON-able dict, so the
same expert can act inside a ROS node from the `/wmpo/sim/state` topic) and
returns the policy's 7-D action (interfaces.EE_ACTION_NAMES). Translation is
the position error / 0.05 m clipped to [-1, 1] (one normalized unit moves the
OSC goal 0.05 m); rotation is the orientation error fed back as a world-frame
axis-angle / 0.5 rad. The gripper points down; its yaw is aligned with the
object (a cube is 90-degree symmetric, the nut's handle 180-degree).

Perturbations (`perturbation=`) make off-expert data for world-model training:
the world model must learn what *wrong* actions do, not only the expert's
(ENVIRONMENT.md: a model trained only on expert data imagines a lift after a
sideways miss). Each is drawn once per episode from the expert's rng:

- ``lateral_offset``: approach and grasp 3-6 cm beside the object in a random
  horizontal direction; the arm closes on air (or the object's edge) and lifts.
- ``no_grasp``: the gripper never closes; the arm goes through the motions.
- ``drop``: the gripper opens 1-3 steps into the lift and stays open (the object
  slips out during the lift; later and a Lift would already count as a success).
- ``stall``: at a random step in [5, 60], the arm holds still (zero motion) for
  10-40 steps, then resumes; mostly still a success, just slower.
- ``noise_burst``: at a random step in [5, 60], 10-25 steps of uniformly random
  actions in [-1, 1] (gripper included), then the expert resumes from where the
  arm ended up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import (
    EE_ACTION_DIM,
    OSC_MAX_ROTATION_RAD,
    OSC_MAX_TRANSLATION_M,
    TASKS,
)

PERTURBATIONS = ("lateral_offset", "no_grasp", "drop", "stall", "noise_burst")
OPEN, CLOSED = -1.0, 1.0
# The grip site's z axis points down in a top-down grasp; its x axis is the finger
# (closing) axis (measured in robosuite 1.5.2's Panda gripper).
_R_DOWN = Rotation.from_euler("x", np.pi)


def _yaw_of(q_xyzw) -> float:
    x = Rotation.from_quat(q_xyzw).apply([1.0, 0.0, 0.0])
    return float(np.arctan2(x[1], x[0]))


def _wrap(angle: float, period: float) -> float:
    """Angle into [-period/2, period/2)."""
    return float((angle + period / 2) % period - period / 2)


def _move(target, eef, gain: float = 1.0) -> np.ndarray:
    err = np.asarray(target, dtype=np.float64) - np.asarray(eef, dtype=np.float64)
    return np.clip(gain * err / OSC_MAX_TRANSLATION_M, -1.0, 1.0)


def _turn(target_yaw: float, eef_quat) -> np.ndarray:
    target = Rotation.from_euler("z", target_yaw) * _R_DOWN
    err = (target * Rotation.from_quat(eef_quat).inv()).as_rotvec()
    return np.clip(err / OSC_MAX_ROTATION_RAD, -1.0, 1.0)


@dataclass
class _Perturb:
    kind: str | None
    offset: np.ndarray  # lateral_offset: xy offset of approach/grasp (m)
    start: int  # stall / noise_burst: first step; drop: steps into lift
    length: int  # stall / noise_burst: number of steps


class ScriptedExpert:
    """Base class: phases, noise and perturbations; subclasses implement `_plan`."""

    task = ""
    final_phase = ""
    """The phase the expert ends in (holding the result, or retreated)."""
    DONE_AFTER = 25
    """Steps in the final phase after which the expert has nothing left to try (`done`)."""

    def __init__(
        self, noise: float = 0.0, seed: int | None = None, perturbation: str | None = None
    ):
        if noise < 0 or not np.isfinite(noise):
            raise WmpoError(f"expert noise must be a finite sigma >= 0, got {noise}")
        if perturbation is not None and perturbation not in PERTURBATIONS:
            raise WmpoError(
                f"unknown perturbation '{perturbation}'; choose one of {', '.join(PERTURBATIONS)}"
            )
        self.noise = float(noise)
        self.perturbation = perturbation
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (optionally re-seeding noise and perturbation draws)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.phase = "approach"
        self.phase_steps = 0
        self.t = 0
        self.yaw: float | None = None
        self.memory: dict = {}
        angle = self.rng.uniform(0, 2 * np.pi)
        self.perturb = _Perturb(
            kind=self.perturbation,
            offset=self.rng.uniform(0.03, 0.06) * np.array([np.cos(angle), np.sin(angle), 0.0]),
            start=int(self.rng.integers(5, 61))
            if self.perturbation != "drop"
            else int(self.rng.integers(1, 4)),
            length=int(self.rng.integers(10, 41))
            if self.perturbation == "stall"
            else int(self.rng.integers(10, 26)),
        )

    def act(self, state: dict) -> np.ndarray:
        """The action for `state` (SimArm.privileged_state()): float64 [7] in [-1, 1]."""
        p = self.perturb
        in_segment = p.kind in ("stall", "noise_burst") and p.start <= self.t < p.start + p.length
        if in_segment and p.kind == "stall":
            action = np.zeros(EE_ACTION_DIM)
            action[6] = self.memory.get("last_gripper", OPEN)
        elif in_segment:
            action = self.rng.uniform(-1.0, 1.0, EE_ACTION_DIM)
        else:
            action = self._plan(state)
            self.memory["last_gripper"] = action[6]
        self.t += 1
        self.phase_steps += 1
        if self.noise > 0:
            action = action + self.rng.normal(0.0, self.noise, EE_ACTION_DIM)
        return np.clip(action, -1.0, 1.0)

    @property
    def done(self) -> bool:
        """True once the expert has sat in its final phase for DONE_AFTER steps: an episode
        that has not succeeded by then will not (a failed grasp, a dropped object)."""
        return self.phase == self.final_phase and self.phase_steps >= self.DONE_AFTER

    # -- helpers for subclasses -------------------------------------------------
    def _goto(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0

    def _gripper(self, want: float) -> float:
        """Apply gripper perturbations (never close / open during the lift)."""
        if self.perturb.kind == "no_grasp":
            return OPEN
        if self.perturb.kind == "drop" and self.memory.get("lift_steps", 0) >= self.perturb.start:
            return OPEN
        return want

    def _offset(self) -> np.ndarray:
        return self.perturb.offset if self.perturb.kind == "lateral_offset" else np.zeros(3)

    def _action(self, target, yaw: float, gripper: float, state: dict, gain=1.0) -> np.ndarray:
        a = np.empty(EE_ACTION_DIM)
        a[:3] = _move(target, state["eef_pos"], gain)
        a[3:6] = _turn(yaw, state["eef_quat"])
        a[6] = self._gripper(gripper)
        return a

    def _pick(self, state: dict, grasp_pos, grasp_yaw: float, hover: float = 0.08):
        """Shared approach -> descend -> close phases. Returns an action, or None once grasped."""
        eef = np.asarray(state["eef_pos"])
        if self.yaw is None:
            self.yaw = grasp_yaw
        grasp = np.asarray(grasp_pos, dtype=np.float64) + self._offset()
        if self.phase == "approach":
            target = grasp + [0.0, 0.0, hover]
            yaw_err = abs(_wrap(_yaw_of(state["eef_quat"]) - self.yaw, 2 * np.pi))
            close = np.linalg.norm((target - eef)[:2]) < 0.01 and abs(target[2] - eef[2]) < 0.02
            if (close and yaw_err < 0.1) or self.phase_steps > 60:
                self._goto("descend")
            return self._action(target, self.yaw, OPEN, state)
        if self.phase == "descend":
            if np.linalg.norm(grasp - eef) < 0.008 or self.phase_steps > 30:
                self._goto("close")
            return self._action(grasp, self.yaw, OPEN, state)
        if self.phase == "close":
            if self.phase_steps >= 8:  # fingers take ~6 steps to close on a 4 cm cube
                self._goto("lift")
                self.memory["grasp_xy"] = grasp[:2].copy()
            return self._action(grasp, self.yaw, CLOSED, state)
        return None

    def _plan(self, state: dict) -> np.ndarray:
        raise NotImplementedError


class LiftExpert(ScriptedExpert):
    """Grasp the cube from above, lift it 15 cm."""

    task = "Lift"
    final_phase = "lift"

    def _plan(self, state: dict) -> np.ndarray:
        cube = state["objects"]["cube"]
        if self.yaw is None:
            eef_yaw = _yaw_of(state["eef_quat"])
            self.yaw = eef_yaw + _wrap(_yaw_of(cube["quat"]) - eef_yaw, np.pi / 2)
        action = self._pick(state, cube["pos"], self.yaw)
        if action is not None:
            return action
        self.memory["lift_steps"] = self.memory.get("lift_steps", 0) + 1
        target = np.r_[self.memory["grasp_xy"], state["table_height"] + 0.2]
        return self._action(target, self.yaw, CLOSED, state)


class StackExpert(ScriptedExpert):
    """Grasp cubeA, carry it above cubeB, lower it onto cubeB, release, retreat."""

    task = "Stack"
    final_phase = "retreat"

    @staticmethod
    def _grasp_yaw(state: dict) -> float:
        """Of the cube's two grip directions, the one whose fingers do not land on cubeB:
        open fingers reach 4 cm either side, and the cubes can start that close."""
        a, b = state["objects"]["cubeA"], state["objects"]["cubeB"]
        eef_yaw = _yaw_of(state["eef_quat"])
        base = eef_yaw + _wrap(_yaw_of(a["quat"]) - eef_yaw, np.pi / 2)
        ab = np.subtract(b["pos"], a["pos"])[:2]
        ab = ab / max(np.linalg.norm(ab), 1e-6)

        def score(yaw: float) -> float:  # finger axis along A->B is bad; big turns mildly so
            along = abs(np.cos(yaw) * ab[0] + np.sin(yaw) * ab[1])
            return along + 0.1 * abs(yaw - eef_yaw)

        return min((base, base + np.pi / 2, base - np.pi / 2), key=score)

    def _plan(self, state: dict) -> np.ndarray:
        a, b = state["objects"]["cubeA"], state["objects"]["cubeB"]
        if self.yaw is None:
            self.yaw = self._grasp_yaw(state)
        action = self._pick(state, a["pos"], self.yaw)
        if action is not None:
            return action
        eef = np.asarray(state["eef_pos"])
        pa, pb = np.asarray(a["pos"]), np.asarray(b["pos"])
        # Where the eef must be for cubeA to sit just on cubeB (the grasp keeps the offset).
        stack_z = pb[2] + b["half_size"][2] + a["half_size"][2] + 0.005
        over = pb + (eef - pa)
        carry_z = stack_z + (eef[2] - pa[2]) + 0.05
        if self.phase == "lift":
            self.memory["lift_steps"] = self.memory.get("lift_steps", 0) + 1
            if eef[2] > carry_z - 0.01 or self.phase_steps > 40:
                self._goto("carry")
            return self._action(np.r_[eef[:2], carry_z], self.yaw, CLOSED, state)
        if self.phase == "carry":
            self.memory["lift_steps"] = self.memory.get("lift_steps", 0) + 1
            if np.linalg.norm((pa - pb)[:2]) < 0.006 or self.phase_steps > 80:
                self._goto("lower")
            return self._action(np.r_[over[:2], carry_z], self.yaw, CLOSED, state)
        if self.phase == "lower":
            target = np.r_[over[:2], eef[2] + (stack_z - pa[2])]
            if pa[2] - stack_z < 0.004 or self.phase_steps > 40:
                self._goto("release")
            return self._action(target, self.yaw, CLOSED, state)
        if self.phase == "release":
            if self.phase_steps >= 8:
                self._goto("retreat")
            return self._action(eef, self.yaw, OPEN, state)
        # retreat: straight up, open, so the stack check sees cubeA resting on cubeB
        target = np.r_[eef[:2], stack_z + 0.12]
        return self._action(target, self.yaw, OPEN, state)


class SquareExpert(ScriptedExpert):
    """Grasp the square nut by its handle, turn the handle toward the robot while carrying it
    above the peg (the peg sits near the arm's reach limit), drop it over the peg, retreat."""

    task = "NutAssemblySquare"
    final_phase = "retreat"
    # Joint 7 (the wrist) turns opposite to the grip yaw; keep it inside its +-2.9 rad limits.
    Q7_LIMIT = 2.6

    def _choose_yaws(self, state: dict) -> None:
        nut = state["objects"]["nut"]
        d = np.asarray(state["handle"]) - np.asarray(nut["pos"])
        phi = float(np.arctan2(d[1], d[0])) % (2 * np.pi)
        # Carry with the handle pointing back toward the robot (within 90 degrees of -x):
        # with it pointing away, the grip would have to reach 5 cm past the peg.
        lo, hi = np.pi / 2, 3 * np.pi / 2
        self.memory["turn"] = float(np.clip(phi, lo, hi) - phi)
        eef_yaw = _yaw_of(state["eef_quat"])
        q7 = state["joint_positions"][6]
        # The fingers (grip x axis) close across the handle, along the nut's y axis; that
        # grip yaw is 180-degree symmetric: pick the one that keeps the wrist centred.
        # The rotation feedback turns the short way round (|delta| <= pi): predict the wrist
        # from that delta, not from the raw angle difference.
        delta = _wrap(_yaw_of(nut["quat"]) + np.pi / 2 - eef_yaw, np.pi)
        candidates = [eef_yaw + delta, eef_yaw + _wrap(delta + np.pi, 2 * np.pi)]

        def wrist_excursion(yaw: float) -> float:
            at_grasp = q7 - _wrap(yaw - eef_yaw, 2 * np.pi)
            return max(abs(at_grasp), abs(at_grasp - self.memory["turn"]))

        # Prefer the smaller turn to the grasp: for big turns the OSC spreads the yaw over
        # joints 5-7 and can park joint 6 on its limit (seen: a carry that never arrives).
        feasible = [y for y in candidates if wrist_excursion(y) < self.Q7_LIMIT]
        if feasible:
            self.yaw = min(feasible, key=lambda y: abs(_wrap(y - eef_yaw, 2 * np.pi)))
        else:
            self.yaw = min(candidates, key=wrist_excursion)

    @staticmethod
    def _grasp_point(state: dict) -> np.ndarray:
        """Middle of the handle's exposed part: the handle site (5.4 cm from the centre) is
        only 1 cm from the ring, where a finger lands on the ring and the grasp slips."""
        nut, handle = np.asarray(state["objects"]["nut"]["pos"]), np.asarray(state["handle"])
        d = (handle - nut)[:2]
        d = d / max(np.linalg.norm(d), 1e-6)
        return np.r_[nut[:2] + 0.064 * d, handle[2] + 0.005]

    def _plan(self, state: dict) -> np.ndarray:
        if self.yaw is None:
            self._choose_yaws(state)
        action = self._pick(state, self._grasp_point(state), self.yaw)
        if action is not None:
            return action
        eef = np.asarray(state["eef_pos"])
        nut = state["objects"]["nut"]
        pn, peg = np.asarray(nut["pos"]), np.asarray(state["peg"])
        table = state["table_height"]
        # Peg top is 0.1 m above its body origin; carry the nut 5 cm above it.
        carry_z = peg[2] + 0.1 + 0.05 + (eef[2] - pn[2])
        over = peg[:2] + (eef - pn)[:2]
        carry_yaw = self.yaw + self.memory["turn"]
        if self.phase == "lift":
            self.memory["lift_steps"] = self.memory.get("lift_steps", 0) + 1
            if eef[2] > carry_z - 0.01 or self.phase_steps > 50:
                self._goto("carry")
            # Turn only once clear of the table, so the nut does not scrape it.
            yaw = carry_yaw if eef[2] > table + 0.08 else self.yaw
            # Hold the grasp's xy while turning: a moving target lets the wrist turn drag
            # the arm back toward its base (seen as 20 cm drift and then a stuck carry).
            return self._action(np.r_[self.memory["grasp_xy"], carry_z], yaw, CLOSED, state)
        xy_err = float(np.linalg.norm((pn - peg)[:2]))
        if self.phase == "carry":
            self.memory["lift_steps"] = self.memory.get("lift_steps", 0) + 1
            turned = abs(_wrap(_yaw_of(state["eef_quat"]) - carry_yaw, 2 * np.pi)) < 0.1
            # The nut hangs from its handle and swings: wait until it stays aligned.
            self.memory["aligned"] = self.memory.get("aligned", 0) + 1 if xy_err < 0.004 else 0
            if (self.memory["aligned"] >= 4 and turned) or self.phase_steps > 120:
                self._goto("lower")
                self.memory["lower_z"] = [pn[2]]
            return self._action(np.r_[over, carry_z], carry_yaw, CLOSED, state)
        if self.phase == "lower":
            # The hole clears the peg by ~6 mm a side: descend only while aligned.
            dz = -0.02 if xy_err < 0.005 else 0.0
            target = np.r_[over, eef[2] + dz]
            history = self.memory["lower_z"]
            history.append(pn[2])
            stuck = len(history) > 12 and history[-12] - pn[2] < 0.002 and pn[2] > table + 0.08
            if pn[2] < table + 0.06 or self.phase_steps > 80:
                self._goto("release")
            elif stuck and self.memory.get("retries", 0) < 2:  # caught on the peg top: retry
                self.memory["retries"] = self.memory.get("retries", 0) + 1
                self._goto("carry")
            return self._action(target, carry_yaw, CLOSED, state)
        if self.phase == "release":
            if self.phase_steps >= 6:
                self._goto("retreat")
            return self._action(eef, carry_yaw, OPEN, state)
        target = np.r_[eef[:2], table + 0.25]
        return self._action(target, carry_yaw, OPEN, state)


_EXPERTS = {cls.task: cls for cls in (LiftExpert, StackExpert, SquareExpert)}
assert set(_EXPERTS) == set(TASKS)


def make_expert(
    task: str, noise: float = 0.0, seed: int | None = None, perturbation: str | None = None
) -> ScriptedExpert:
    """A scripted expert for `task` with Gaussian action noise `noise` (sigma, normalized units)."""
    cls = _EXPERTS.get(task)
    if cls is None:
        raise WmpoError(f"no scripted expert for task '{task}'; choose one of {', '.join(TASKS)}")
    return cls(noise=noise, seed=seed, perturbation=perturbation)
