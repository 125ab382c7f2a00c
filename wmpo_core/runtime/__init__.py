"""The robot runtime's decisions, free of ROS: safety filter, chunk scheduling,
policy loading and the episode lifecycle. The nodes in `wmpo_nodes` only wire
topics, parameters and timers to these classes (see docs/runtime.md)."""
