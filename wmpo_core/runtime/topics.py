"""Runtime-only topic and service names (the shared ones live in wmpo_core.interfaces)."""

from __future__ import annotations

# The executor asks policy_node for the next chunk (std_msgs/Header, stamp = request time).
CHUNK_REQUEST_TOPIC = "/wmpo/chunk_request"
ESTOP_RESET_SERVICE = "/wmpo/estop_reset"  # std_srvs/Trigger: leave the halted state
# Privileged sim state (std_msgs/String JSON): eef pose for the sim's workspace check.
SIM_STATE_TOPIC = "/wmpo/sim/state"
# Episode control: Trigger services plus a JSON command topic (std_srvs has no string service).
EPISODE_COMMAND_TOPIC = "/wmpo/episode/command"
EPISODE_START_SERVICE = "/wmpo/episode/start"
EPISODE_STOP_SERVICE = "/wmpo/episode/stop"
EPISODE_RESET_SERVICE = "/wmpo/episode/reset"
EPISODE_LABEL_SUCCESS_SERVICE = "/wmpo/episode/label_success"
EPISODE_LABEL_FAILURE_SERVICE = "/wmpo/episode/label_failure"
