"""The policy on a real arm: policy, executor, episode, recorder.

Start the arm's own drivers first (camera, ros2_control or MoveIt Servo, a node that
publishes the end-effector pose), then:

    ros2 launch wmpo_bringup robot.launch.py policy:=/path/to/registry/current

Edit launch/config/robot.yaml for the arm (docs/runtime.md, "Running on a real arm").
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
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "policy",
                default_value="",
                description="policy checkpoint directory (required on a robot)",
            ),
            DeclareLaunchArgument(
                "chunk_strategy",
                default_value="latency_aware",
                description="open_loop | temporal_ensemble | latency_aware",
            ),
            DeclareLaunchArgument(
                "record",
                default_value="true",
                description="record every episode to a rosbag2 directory",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_policy_node",
                name="policy_node",
                parameters=[
                    _cfg("policy.yaml"),
                    _cfg("robot.yaml"),
                    {"policy": LaunchConfiguration("policy")},
                ],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_executor_node",
                name="executor_node",
                parameters=[
                    _cfg("executor.yaml"),
                    _cfg("robot.yaml"),
                    {"chunk_strategy": LaunchConfiguration("chunk_strategy")},
                ],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_episode_node",
                name="episode_node",
                parameters=[_cfg("episode.yaml"), _cfg("robot.yaml")],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_recorder_node",
                name="recorder",
                parameters=[_cfg("recorder.yaml"), _cfg("robot.yaml")],
                output="screen",
                condition=IfCondition(LaunchConfiguration("record")),
            ),
        ]
    )
