"""Names and conventions shared by the robot, the trainer and the tests.

One place for topic names, action-space layout and frame ids, so nodes, bag
ingest and the CLI cannot drift apart. Pure constants: no ROS imports.
"""

from __future__ import annotations

# --- topics -----------------------------------------------------------------
CAMERA_TOPIC = "/camera/image_raw"
WRIST_CAMERA_TOPIC = "/wrist_camera/image_raw"
JOINT_STATES_TOPIC = "/joint_states"
INSTRUCTION_TOPIC = "/wmpo/instruction"
ACTION_CHUNK_TOPIC = "/wmpo/action_chunk"
# End-effector delta command, MoveIt Servo convention (geometry_msgs/TwistStamped).
TWIST_COMMAND_TOPIC = "/servo_node/delta_twist_cmds"
# Gripper command (std_msgs/Float64): -1 = open, +1 = closed (robosuite convention).
GRIPPER_COMMAND_TOPIC = "/gripper/command"
# Joint-space command to a ros2_control JointTrajectoryController.
JOINT_TRAJECTORY_TOPIC = "/joint_trajectory_controller/joint_trajectory"
ESTOP_TOPIC = "/wmpo/estop"
EPISODE_TOPIC = "/wmpo/episode"
POLICY_VERSION_TOPIC = "/wmpo/policy_version"
DIAGNOSTICS_TOPIC = "/diagnostics"
SIM_SUCCESS_TOPIC = "/wmpo/sim/success"  # privileged: evaluation only, never learning
CLOCK_TOPIC = "/clock"

# --- services ----------------------------------------------------------------
SIM_RESET_SERVICE = "/wmpo/sim/reset"  # std_srvs/Trigger

# --- frames ------------------------------------------------------------------
BASE_FRAME = "base_link"  # frame of EE-delta twists

# --- action space ------------------------------------------------------------
# 7-D end-effector delta as the policy sees it: normalized robosuite OSC_POSE
# input in [-1, 1] (xyz translation, axis-angle rotation, gripper).
EE_ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
EE_ACTION_DIM = len(EE_ACTION_NAMES)
# robosuite OSC_POSE default output limits: a normalized 1.0 moves 0.05 m or 0.5 rad
# per control step. Twists carry velocities, so v = a * limit * control_rate.
OSC_MAX_TRANSLATION_M = 0.05
OSC_MAX_ROTATION_RAD = 0.5
DEFAULT_CONTROL_RATE_HZ = 20.0

# A camera name a policy may read after its real cameras: the main camera's frame at the
# episode's first step, before the arm covers the objects (PolicyConfig.cameras).
EPISODE_START = "episode_start"

# --- defaults ------------------------------------------------------------------
DEFAULT_IMAGE_SIZE = 128
DEFAULT_CHUNK_SIZE = 8  # K, as in WMPO / OpenVLA-OFT
TASKS = ("Lift", "Stack", "NutAssemblySquare")
TASK_INSTRUCTIONS = {
    "Lift": "lift the red cube",
    "Stack": "stack the red cube on the green cube",
    "NutAssemblySquare": "put the square nut on the square peg",
}
