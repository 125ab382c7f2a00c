"""Per-task constants of the embedded sim (robosuite environments behind `SimArm`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wmpo_core.errors import WmpoError
from wmpo_core.interfaces import TASK_INSTRUCTIONS, TASKS


@dataclass(frozen=True)
class TaskSpec:
    name: str
    """Task name as in interfaces.TASKS (also the robosuite environment name)."""
    horizon: int
    """Episode length limit in control steps (20 Hz), sized for ~2x the scripted expert's time."""
    objects: tuple[str, ...]
    """Names of the objects whose poses `SimArm.privileged_state()` reports."""
    instruction: str = ""
    """Language instruction given to the policy."""
    env_kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for robosuite.make."""


TASK_SPECS: dict[str, TaskSpec] = {
    # Lift: the expert succeeds in ~60-80 steps; 200 leaves room for slower policies.
    "Lift": TaskSpec("Lift", horizon=200, objects=("cube",), instruction=TASK_INSTRUCTIONS["Lift"]),
    # Stack: pick cubeA (red) and place it on cubeB (green); expert ~130 steps.
    "Stack": TaskSpec(
        "Stack", horizon=300, objects=("cubeA", "cubeB"), instruction=TASK_INSTRUCTIONS["Stack"]
    ),
    # Square: grasp the nut's handle, carry it over the peg, drop it; expert ~200 steps.
    "NutAssemblySquare": TaskSpec(
        "NutAssemblySquare",
        horizon=400,
        objects=("nut",),
        instruction=TASK_INSTRUCTIONS["NutAssemblySquare"],
    ),
}
assert set(TASK_SPECS) == set(TASKS), "every task in interfaces.TASKS needs a TaskSpec"


def task_spec(name: str) -> TaskSpec:
    """The TaskSpec for `name`, or a WmpoError naming the valid tasks."""
    spec = TASK_SPECS.get(name)
    if spec is None:
        raise WmpoError(f"unknown sim task '{name}'; choose one of {', '.join(TASKS)}")
    return spec
