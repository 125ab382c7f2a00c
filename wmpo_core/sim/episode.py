"""One scripted-expert episode straight through `SimArm` (no ROS): the loop that
`wmpo sim expert`, `wmpo collect` and the benchmarks share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wmpo_core.sim.arm import SimArm
from wmpo_core.sim.experts import ScriptedExpert

EXTRA_STEPS_AFTER_SUCCESS = 8
"""Steps recorded after the success flag rises, so a success's last frames show the
result (the cube held up, the nut on the peg), not the instant it happened. The flag
must stay up through them: if it falls (the cube is dropped) the episode goes on."""


@dataclass
class SuccessWatch:
    """When an episode may end on the sim's success flag: the flag must rise and then stay
    up for `extra_steps` more steps (a dropped cube is not a success)."""

    extra_steps: int = EXTRA_STEPS_AFTER_SUCCESS
    success_step: int | None = None
    """Step count at which the flag rose and has stayed up since, or None."""

    def update(self, flag: bool, steps: int) -> bool:
        """The flag after `steps` steps; True once the success has held long enough."""
        if not flag:
            self.success_step = None  # lost it again (e.g. dropped): keep going
        elif self.success_step is None:
            self.success_step = steps
        return self.success_step is not None and steps >= self.success_step + self.extra_steps


@dataclass
class ExpertEpisode:
    seed: int
    success: bool
    """The privileged success flag at the end of the episode (after the extra steps)."""
    success_step: int | None
    """Step at which the flag rose (and then stayed up to the end), or None."""
    frames: np.ndarray | None
    """uint8 [T, H, W, 3]: frame t is observed before action t; None when render=False."""
    actions: np.ndarray
    """float32 [T, 7]: the action applied after frame t."""
    perturbation: str | None

    @property
    def length(self) -> int:
        return len(self.actions)


def run_expert_episode(
    arm: SimArm,
    expert: ScriptedExpert,
    seed: int,
    extra_steps: int = EXTRA_STEPS_AFTER_SUCCESS,
    horizon: int | None = None,
    stop_when_done: bool = True,
) -> ExpertEpisode:
    """Reset `arm` to `seed`, let `expert` act until success + `extra_steps` or the horizon.

    With `stop_when_done`, a failing episode also ends once the expert is `done` (sat in
    its final phase without success), instead of idling to the horizon.
    """
    horizon = arm.horizon if horizon is None else horizon
    obs = arm.reset(seed)
    expert.reset()
    frames, actions = [], []
    watch = SuccessWatch(extra_steps)
    state = arm.privileged_state()
    for t in range(horizon):
        action = expert.act(state)
        if obs.image is not None:
            frames.append(obs.image)
        actions.append(action)
        obs = arm.step(action)
        state = arm.privileged_state()
        if watch.update(bool(state["success"]), t + 1):
            break
        if watch.success_step is None and stop_when_done and expert.done:
            break
    return ExpertEpisode(
        seed=seed,
        success=bool(state["success"]),
        success_step=watch.success_step,
        frames=np.stack(frames) if frames else None,
        actions=np.asarray(actions, dtype=np.float32),
        perturbation=expert.perturbation,
    )
