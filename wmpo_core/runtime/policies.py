"""Policies policy_node can run, and the one function that picks them: `load_policy`.

Spec strings (the node's `policy` parameter):
- 'scripted'            the embedded sim's scripted expert (needs the privileged sim
                        state in Observation.privileged; evaluation / plumbing only)
- 'scripted-markov'     a stateless Lift controller on the same privileged state
- 'random'              uniform random actions (plumbing and safety tests)
- a checkpoint path     handed to wmpo_core.policy.load_policy_checkpoint (the VLA)
"""

from __future__ import annotations

import importlib
import inspect
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from wmpo_core.errors import CheckpointError, WmpoError
from wmpo_core.interfaces import (
    DEFAULT_CHUNK_SIZE,
    EE_ACTION_DIM,
    EE_ACTION_NAMES,
    OSC_MAX_ROTATION_RAD,
    OSC_MAX_TRANSLATION_M,
)
from wmpo_core.policy_api import ChunkPolicy, Observation


class RandomPolicy:
    """Uniform actions in [-scale, scale] (gripper uniform in [-1, 1]); seeded."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, scale: float = 0.3, seed: int = 0):
        if chunk_size < 1 or not 0 <= scale <= 1:
            raise ValueError(f"need chunk_size >= 1 and 0 <= scale <= 1, got {chunk_size}, {scale}")
        self.action_names = EE_ACTION_NAMES
        self.chunk_size = chunk_size
        self.version = f"random-{scale:g}"
        self.scale = scale
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        a = self._rng.uniform(-self.scale, self.scale, (self.chunk_size, EE_ACTION_DIM))
        a[:, -1] = self._rng.uniform(-1, 1, self.chunk_size)
        return a.astype(np.float32)


class ScriptedPolicy:
    """The sim's scripted expert, emitting chunks.

    The expert is closed loop on privileged state, one action per state. For a chunk
    of K it is stepped K times on a predicted state: the end effector is advanced by
    `gain` x the commanded displacement (OSC_POSE reaches roughly that fraction of
    its target in one period; 0.35 measured: Lift 5/5 at K = 4 and 8, 0.8 fails).
    """

    def __init__(
        self,
        task: str = "Lift",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        noise: float = 0.0,
        seed: int = 0,
        gain: float = 0.35,
    ):
        sim = _import_sim()
        self._make = lambda: sim.make_expert(task, noise, seed)
        self.expert = self._make()
        self.action_names = EE_ACTION_NAMES
        self.chunk_size = chunk_size
        self.version = f"scripted-{task}"
        self.gain = gain

    def reset(self) -> None:
        self.expert = self._make()

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        if not obs.privileged:
            raise WmpoError(
                "scripted policy: no privileged sim state in the observation; set policy_node's "
                "use_privileged_state: true and run the sim (it publishes /wmpo/sim/state)"
            )
        state = dict(obs.privileged)
        out = np.zeros((self.chunk_size, EE_ACTION_DIM), dtype=np.float32)
        for k in range(self.chunk_size):
            a = np.asarray(self.expert.act(state), dtype=np.float64)
            out[k] = a
            state = self._predict(state, a)
        return out

    def _predict(self, state: dict[str, Any], a: np.ndarray) -> dict[str, Any]:
        return predict_state(state, a, self.gain)


def predict_state(state: dict[str, Any], a: np.ndarray, gain: float) -> dict[str, Any]:
    """The privileged state after action `a`, moving the end effector by gain x the command."""
    state = dict(state)
    if "eef_pos" in state:
        step = a[:3] * OSC_MAX_TRANSLATION_M * gain
        state["eef_pos"] = (np.asarray(state["eef_pos"], dtype=np.float64) + step).tolist()
    if "eef_quat" in state:
        from scipy.spatial.transform import Rotation  # comes with the sim (robosuite)

        turn = Rotation.from_rotvec(a[3:6] * OSC_MAX_ROTATION_RAD * gain)
        state["eef_quat"] = (turn * Rotation.from_quat(state["eef_quat"])).as_quat().tolist()
    return state


class MarkovLiftPolicy:
    """A Lift controller whose action depends on the observed state only (no phase counters).

    The sim's scripted expert counts steps per phase, so it assumes every action it planned
    is executed; chunk strategies that drop or blend actions (latency_aware,
    temporal_ensemble) desynchronize it. This one reads the phase off the state (fingers
    closed on the cube, cube lifted, gripper above the cube), like a learned policy would,
    so benchmarks compare strategies rather than the expert's bookkeeping.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, gain: float = 0.35):
        self.action_names = EE_ACTION_NAMES
        self.chunk_size = chunk_size
        self.version = "scripted-markov-Lift"
        self.gain = gain

    def reset(self) -> None:
        pass

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        if not obs.privileged or "objects" not in obs.privileged:
            raise WmpoError("scripted-markov policy: needs the privileged sim state (Lift)")
        state = dict(obs.privileged)
        out = np.zeros((self.chunk_size, EE_ACTION_DIM), dtype=np.float32)
        for k in range(self.chunk_size):
            out[k] = self.act(state)
            state = predict_state(state, out[k].astype(np.float64), self.gain)
        return out

    @staticmethod
    def act(state: dict[str, Any]) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        eef = np.asarray(state["eef_pos"], dtype=np.float64)
        cube = state["objects"]["cube"]
        pos = np.asarray(cube["pos"], dtype=np.float64)
        table = float(state["table_height"])
        width = float(state["gripper_qpos"][0] - state["gripper_qpos"][1])

        def yaw(q) -> float:
            x = Rotation.from_quat(q).apply([1.0, 0.0, 0.0])
            return float(np.arctan2(x[1], x[0]))

        def wrap(angle: float, period: float) -> float:
            return float((angle + period / 2) % period - period / 2)

        eef_yaw = yaw(state["eef_quat"])
        target_yaw = eef_yaw + wrap(yaw(cube["quat"]) - eef_yaw, np.pi / 2)  # cube: 90 deg sym.
        down = Rotation.from_euler("z", target_yaw) * Rotation.from_euler("x", np.pi)
        rot = (down * Rotation.from_quat(state["eef_quat"]).inv()).as_rotvec()
        err = pos - eef
        lifted = pos[2] > table + 0.04
        holding = width < 0.06 and np.linalg.norm(err) < 0.03
        if lifted or holding:
            target, grip = np.r_[pos[:2], table + 0.2], 1.0
        elif np.linalg.norm(err[:2]) < 0.01 and abs(err[2]) < 0.01:
            target, grip = pos, 1.0  # at the cube: close
        elif np.linalg.norm(err[:2]) < 0.012 and abs(wrap(eef_yaw - target_yaw, np.pi / 2)) < 0.1:
            target, grip = pos, -1.0  # above it, aligned: descend
        else:
            target, grip = pos + [0.0, 0.0, 0.08], -1.0  # hover above it
        a = np.empty(EE_ACTION_DIM)
        a[:3] = np.clip((target - eef) / OSC_MAX_TRANSLATION_M, -1.0, 1.0)
        a[3:6] = np.clip(rot / OSC_MAX_ROTATION_RAD, -1.0, 1.0)
        a[6] = grip
        return a


class DelayedPolicy:
    """Wraps a policy and adds a fixed inference delay (benchmarks and tests only)."""

    def __init__(self, inner: ChunkPolicy, delay_s: float):
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.inner = inner
        self.delay_s = delay_s
        self.action_names = inner.action_names
        self.chunk_size = inner.chunk_size
        self.version = inner.version

    def reset(self) -> None:
        self.inner.reset()

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        t0 = time.monotonic()
        out = self.inner.predict_chunk(obs)
        rest = self.delay_s - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)
        return out


def _import_sim():
    try:
        return importlib.import_module("wmpo_core.sim.experts")
    except ModuleNotFoundError as exc:
        raise WmpoError(
            f"policy 'scripted' needs the embedded sim (wmpo_core.sim.experts): {exc}. Run `make setup`."
        ) from None


def load_policy(
    spec: str,
    *,
    task: str = "Lift",
    chunk_size: int = 0,
    seed: int = 0,
    noise: float = 0.0,
    device: str = "cpu",
    delay_s: float = 0.0,
    temperature: float = 0.0,
) -> ChunkPolicy:
    """A policy from its spec string ('scripted', 'random' or a checkpoint directory).

    chunk_size 0 keeps each policy's own default; delay_s > 0 wraps it in DelayedPolicy.
    temperature 0 decodes a checkpoint greedily; > 0 samples its action tokens at that
    temperature from a generator seeded with `seed` (restarted by `reset`).
    """
    spec = spec.strip()
    if not (math.isfinite(temperature) and temperature >= 0):
        raise WmpoError(f"policy temperature must be a finite value >= 0, got {temperature}")
    if temperature > 0 and spec in ("scripted", "scripted-markov", "random"):
        raise WmpoError(
            f"policy temperature {temperature:g} applies to checkpoint policies only, not "
            f"'{spec}' (set temperature:=0.0)"
        )
    if spec == "scripted-markov":
        policy = MarkovLiftPolicy(chunk_size or DEFAULT_CHUNK_SIZE)
    elif spec == "scripted":
        policy = ScriptedPolicy(task, chunk_size or DEFAULT_CHUNK_SIZE, noise=noise, seed=seed)
    elif spec == "random":
        policy = RandomPolicy(chunk_size or DEFAULT_CHUNK_SIZE, seed=seed)
    else:
        policy = _load_checkpoint(spec, device, temperature, seed)
    if not isinstance(policy, ChunkPolicy):
        raise WmpoError(f"policy '{spec}': {type(policy).__name__} does not implement ChunkPolicy")
    return DelayedPolicy(policy, delay_s) if delay_s > 0 else policy


def _load_checkpoint(spec: str, device: str, temperature: float, seed: int) -> ChunkPolicy:
    path = Path(spec).expanduser()
    if not spec or not path.exists():
        raise CheckpointError(
            f"policy '{spec}': not 'scripted', 'random' or an existing checkpoint directory "
            "(set the policy parameter, e.g. -p policy_node:policy:=scripted)"
        )
    try:
        module = importlib.import_module("wmpo_core.policy")
    except ModuleNotFoundError as exc:
        raise WmpoError(
            f"policy '{spec}': checkpoint policies need wmpo_core.policy ({exc})"
        ) from None
    loader = getattr(module, "load_policy_checkpoint", None)
    if loader is None:
        raise WmpoError(
            f"policy '{spec}': wmpo_core.policy has no load_policy_checkpoint() in this build"
        )
    accepted = inspect.signature(loader).parameters
    kwargs = {"device": device} if "device" in accepted else {}
    if temperature > 0:
        kwargs |= {"temperature": temperature, "seed": seed}
    return loader(path, **kwargs)
