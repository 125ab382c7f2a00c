"""The policy driving the embedded robosuite arm: sim, policy, executor, episode, recorder.

    ros2 launch wmpo_bringup sim.launch.py policy:=scripted chunk_strategy:=latency_aware

The same graph without ROS launch: `wmpo launch sim` (wmpo_nodes/graphs.py lists both;
tests/test_launch.py keeps them in agreement).
"""

import os

from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")


def _cfg(name):
    return os.path.join(CONFIG, name)


def generate_launch_description():
    task = LaunchConfiguration("task")
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "task",
                default_value="Lift",
                description="sim task: Lift | Stack | NutAssemblySquare",
            ),
            DeclareLaunchArgument(
                "policy",
                default_value="scripted",
                description="'scripted', 'random' or a policy checkpoint directory",
            ),
            DeclareLaunchArgument(
                "chunk_strategy",
                default_value="open_loop",
                description="open_loop | temporal_ensemble | latency_aware",
            ),
            DeclareLaunchArgument(
                "record",
                default_value="true",
                description="record every episode to a rosbag2 directory",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_sim_node",
                name="sim_node",
                parameters=[_cfg("sim.yaml"), {"task": task}],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_policy_node",
                name="policy_node",
                parameters=[
                    _cfg("policy.yaml"),
                    _cfg("sim.yaml"),
                    {"task": task, "policy": LaunchConfiguration("policy")},
                ],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_executor_node",
                name="executor_node",
                parameters=[
                    _cfg("executor.yaml"),
                    _cfg("sim.yaml"),
                    {"chunk_strategy": LaunchConfiguration("chunk_strategy")},
                ],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_episode_node",
                name="episode_node",
                parameters=[_cfg("episode.yaml"), _cfg("sim.yaml"), {"task": task}],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_recorder_node",
                name="recorder",
                parameters=[_cfg("recorder.yaml")],
                output="screen",
                condition=IfCondition(LaunchConfiguration("record")),
            ),
        ]
    )
