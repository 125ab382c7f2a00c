"""`SimArm`: robosuite 1.5.2 Panda + OSC_POSE behind a small, ROS-free API.

The arm takes the policy's action space directly (interfaces.EE_ACTION_NAMES:
normalized OSC_POSE deltas in [-1, 1] + gripper -1 open / +1 closed) and
returns upright RGB frames, joint positions and the end-effector pose. The
privileged object poses (`privileged_state`) are for scripted experts and
evaluation only, never for learning.

Speed decisions (measured, see docs/sim.md):
- One robosuite model per `SimArm`, no hard resets: robosuite's default hard
  reset rebuilds the model and the render context each episode (seconds).
  Resets stay reproducible because `reset(seed)` re-seeds `env.rng` and the
  placement sampler's rng (robosuite 1.5 keeps them across resets otherwise).
- MSAA off (`offsamples = 0`): halves the software renderer's cost per frame.
- Frames are rendered only when `render=True`; state-only mode is ~10x faster.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import DEFAULT_CONTROL_RATE_HZ, DEFAULT_IMAGE_SIZE, EE_ACTION_DIM
from wmpo_core.sim.tasks import task_spec

# Names a real Panda driver (franka_ros2) publishes, in the order of joint_positions.
JOINT_NAMES = [f"panda_joint{i}" for i in range(1, 8)] + [
    "panda_finger_joint1",
    "panda_finger_joint2",
]
CAMERAS = ("agentview", "frontview", "birdview", "sideview", "robot0_robotview")

# Chatter robosuite logs on every import / make (no private macro file, optional
# robosuite_models / mink not installed, the BASIC composite config naming parts a
# Panda lacks): true and irrelevant here. Other robosuite warnings still show.
_QUIET = (
    "private macro",
    "macro file",
    "setup_macros.py",
    "robosuite_models",
    "mink-based",
    "Loading controller configuration",
    "but the robot does not have this component",
)


class _QuietStartup(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not any(q in msg for q in _QUIET)


def _import_robosuite():
    """Import robosuite headless and quiet (MUJOCO_GL must be set before the first import)."""
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(f, _QuietStartup) for f in logger.filters):
        logger.addFilter(_QuietStartup())
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    return robosuite, load_composite_controller_config


@dataclass
class SimConfig:
    task: str = "Lift"
    """One of interfaces.TASKS."""
    image_size: int = DEFAULT_IMAGE_SIZE
    """Square camera frame side in pixels."""
    camera: str = "agentview"
    """robosuite camera name (the fixed third-person view by default)."""
    render: bool = True
    """Render a camera frame each step; False = state-only (experts, benchmarks), image None."""
    control_freq: float = DEFAULT_CONTROL_RATE_HZ
    """Control steps per simulated second (robosuite control_freq)."""
    horizon: int | None = None
    """Episode step limit; None = the task's default (tasks.py)."""
    msaa: bool = False
    """Multisample anti-aliasing; off by default because it doubles software render time."""

    def __post_init__(self) -> None:
        spec = task_spec(self.task)  # raises on unknown task
        if self.horizon is None:
            self.horizon = spec.horizon
        if not 16 <= self.image_size <= 480:
            raise WmpoError(f"SimConfig.image_size must be in [16, 480], got {self.image_size}")
        if self.camera not in CAMERAS:
            raise WmpoError(f"SimConfig.camera '{self.camera}' unknown; choose one of {CAMERAS}")
        if not 1.0 <= self.control_freq <= 500.0:
            raise WmpoError(
                f"SimConfig.control_freq must be in [1, 500] Hz, got {self.control_freq}"
            )
        if self.horizon < 1:
            raise WmpoError(f"SimConfig.horizon must be >= 1, got {self.horizon}")


@dataclass
class SimObservation:
    image: np.ndarray | None
    """uint8 [H, W, 3] RGB, upright; None when the arm was made with render=False."""
    joint_names: list[str]
    """7 arm joints + 2 finger joints (JOINT_NAMES)."""
    joint_positions: np.ndarray
    """float64 [9], rad for arm joints, m for fingers (robosuite signs: finger 2 is negative)."""
    eef_pos: np.ndarray
    """float64 [3], grip site position in the world frame (m); the arm base is axis-aligned."""
    eef_quat: np.ndarray
    """float64 [4], grip site orientation, quaternion x, y, z, w."""
    step: int
    """Control steps since the last reset."""


def _mat_to_quat_xyzw(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (x, y, z, w) with w >= 0."""
    from scipy.spatial.transform import Rotation

    q = Rotation.from_matrix(np.asarray(m, dtype=np.float64).reshape(3, 3)).as_quat()
    return q if q[3] >= 0 else -q


def _wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    return np.array([q[1], q[2], q[3], q[0]], dtype=np.float64)


class SimArm:
    """One robosuite environment; reset(seed) / step(action) / success() / close()."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.spec = task_spec(self.config.task)
        self.horizon: int = int(self.config.horizon)
        self.dt = 1.0 / self.config.control_freq
        suite, load_controller = _import_robosuite()
        self.env = suite.make(
            self.config.task,
            robots="Panda",
            controller_configs=load_controller(controller="BASIC", robot="Panda"),
            has_renderer=False,
            has_offscreen_renderer=self.config.render,
            use_camera_obs=False,  # frames come from `_render`, at our size, only when needed
            control_freq=self.config.control_freq,
            horizon=self.horizon,
            ignore_done=True,  # the caller owns the horizon; robosuite must not stop stepping
            hard_reset=False,
            reward_shaping=False,
            seed=0,  # model construction draws sizes (Lift's cube) from env.rng: fix them
        )
        self._robot = self.env.robots[0]
        if self.config.render and not self.config.msaa:
            self._disable_msaa()
        self._step = 0
        self._seed: int | None = None

    # -- episode ----------------------------------------------------------------
    def reset(self, seed: int) -> SimObservation:
        """Reset to the initial state drawn from `seed` (same seed -> same state, bit for bit)."""
        self._seed = int(seed)
        rng = np.random.default_rng(self._seed)
        self.env.rng = rng
        self._seed_sampler(getattr(self.env, "placement_initializer", None), rng)
        self.env.reset()
        self._step = 0
        return self.observe()

    def step(self, action: np.ndarray) -> SimObservation:
        """Apply one normalized 7-D EE-delta action (clipped to [-1, 1]) for one control period."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (EE_ACTION_DIM,):
            raise ValueError(
                f"SimArm.step: expected action shape ({EE_ACTION_DIM},), got {a.shape}"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"SimArm.step: action has NaN/Inf: {a.tolist()}")
        if self._seed is None:
            raise RuntimeError("SimArm.step called before reset(seed)")
        self.env.step(np.clip(a, -1.0, 1.0))
        self._step += 1
        return self.observe()

    def observe(self) -> SimObservation:
        """The current observation (renders a frame when render=True)."""
        pos, quat = self._eef_pose()
        return SimObservation(
            image=self._render() if self.config.render else None,
            joint_names=list(JOINT_NAMES),
            joint_positions=self._joint_positions(),
            eef_pos=pos,
            eef_quat=quat,
            step=self._step,
        )

    def success(self) -> bool:
        """The task's privileged success flag (evaluation / labelling only)."""
        return bool(self.env._check_success())

    @property
    def step_count(self) -> int:
        return self._step

    @property
    def seed(self) -> int | None:
        return self._seed

    def privileged_state(self) -> dict:
        """Poses the scripted experts need, as JSON-serializable plain lists / floats.

        Keys: task, step, eef_pos [3], eef_quat [4] (x, y, z, w), joint_positions [9]
        (JOINT_NAMES order), gripper_qpos [2],
        table_height, success, objects {name: {pos, quat[, half_size]}}, and for
        NutAssemblySquare: handle [3] (the nut's handle site) and peg [3] (its peg's base).
        """
        env = self.env
        data = env.sim.data
        pos, quat = self._eef_pose()
        objects = {}
        for name, body_id, half in self._object_bodies():
            entry = {
                "pos": [float(v) for v in data.body_xpos[body_id]],
                "quat": _wxyz_to_xyzw(data.body_xquat[body_id]).tolist(),
            }
            if half is not None:
                entry["half_size"] = [float(v) for v in half]
            objects[name] = entry
        state = {
            "task": self.config.task,
            "step": self._step,
            "eef_pos": pos.tolist(),
            "eef_quat": quat.tolist(),
            "joint_positions": [float(v) for v in self._joint_positions()],
            "gripper_qpos": [float(v) for v in self._joint_positions()[7:]],
            "table_height": float(env.model.mujoco_arena.table_offset[2]),
            "success": self.success(),
            "objects": objects,
        }
        if self.config.task == "NutAssemblySquare":
            nut_id = env.nut_id
            state["handle"] = [float(v) for v in data.site_xpos[env.object_site_ids[nut_id]]]
            peg_body = env.peg1_body_id if nut_id == 0 else env.peg2_body_id
            state["peg"] = [float(v) for v in data.body_xpos[peg_body]]
        return state

    def close(self) -> None:
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            env.close()

    def __enter__(self) -> SimArm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------
    def _disable_msaa(self) -> None:
        # The render context exists already (made in suite.make); rebuild its buffers.
        ctx = self.env.sim._render_context_offscreen
        self.env.sim.model.vis.quality.offsamples = 0
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()

    @staticmethod
    def _seed_sampler(sampler, rng: np.random.Generator) -> None:
        # SequentialCompositeSampler (Stack, NutAssembly) holds sub-samplers with their own rng.
        if sampler is None:
            return
        sampler.rng = rng
        for sub in getattr(sampler, "samplers", {}).values():
            SimArm._seed_sampler(sub, rng)

    def _render(self) -> np.ndarray:
        s = self.config.image_size
        # GL contexts are per thread: a ROS executor may call from a thread other than the
        # one that made the context, and OSMesa then renders black. Re-binding is cheap.
        self.env.sim._render_context_offscreen.gl_ctx.make_current()
        img = self.env.sim.render(width=s, height=s, camera_name=self.config.camera)
        # MuJoCo renders bottom-up (OpenGL convention): flip to upright.
        return np.ascontiguousarray(img[::-1])

    def _joint_positions(self) -> np.ndarray:
        qpos = self.env.sim.data.qpos
        arm = qpos[self._robot._ref_joint_pos_indexes]
        fingers = qpos[self._robot._ref_gripper_joint_pos_indexes["right"]]
        return np.concatenate([arm, fingers]).astype(np.float64)

    def _eef_pose(self) -> tuple[np.ndarray, np.ndarray]:
        site = self._robot.eef_site_id["right"]
        data = self.env.sim.data
        pos = np.array(data.site_xpos[site], dtype=np.float64)
        return pos, _mat_to_quat_xyzw(data.site_xmat[site])

    def _object_bodies(self) -> list[tuple[str, int, np.ndarray | None]]:
        env = self.env
        task = self.config.task
        if task == "Lift":
            return [("cube", env.cube_body_id, np.asarray(env.cube.size))]
        if task == "Stack":
            return [
                ("cubeA", env.cubeA_body_id, np.asarray(env.cubeA.size)),
                ("cubeB", env.cubeB_body_id, np.asarray(env.cubeB.size)),
            ]
        nut = env.nuts[env.nut_id]
        return [("nut", env.obj_body_id[nut.name], None)]
