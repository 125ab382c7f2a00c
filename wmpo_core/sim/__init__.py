"""The embedded simulated arm: robosuite Panda + OSC_POSE behind a small ROS-free API.

`SimArm` (arm.py) is what the sim node, the scripted experts' CLI and
`wmpo collect` drive; `make_expert` (experts.py) returns a scripted expert per
task. Importing this package does not import robosuite: `SimArm` does, on construction.
"""

from wmpo_core.sim.arm import SimArm, SimConfig, SimObservation
from wmpo_core.sim.experts import PERTURBATIONS, make_expert
from wmpo_core.sim.tasks import TASK_SPECS, TaskSpec, task_spec

__all__ = [
    "PERTURBATIONS",
    "TASK_SPECS",
    "SimArm",
    "SimConfig",
    "SimObservation",
    "TaskSpec",
    "make_expert",
    "task_spec",
]
