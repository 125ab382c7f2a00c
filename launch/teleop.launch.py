"""Demonstrations by teleoperation (behaviour-cloning data): teleop, episode, recorder (+ sim).

    ros2 launch wmpo_bringup teleop.launch.py use_sim:=false   # on a real arm

On a real arm start its drivers (camera, MoveIt Servo) first; teleop_node sends the
same twist + gripper commands the executor would.
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
                "use_sim",
                default_value="true",
                description="start the embedded sim arm (false on a real arm)",
            ),
            DeclareLaunchArgument(
                "task",
                default_value="Lift",
                description="task: the expert teleoperator's task and the one written into the episode events",
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
                parameters=[_cfg("sim.yaml")],
                output="screen",
                condition=IfCondition(LaunchConfiguration("use_sim")),
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_teleop_node",
                name="teleop",
                parameters=[_cfg("teleop.yaml"), {"task": LaunchConfiguration("task")}],
                output="screen",
            ),
            Node(
                package="wmpo_bringup",
                executable="wmpo_episode_node",
                name="episode_node",
                parameters=[
                    _cfg("episode.yaml"),
                    _cfg("teleop.yaml"),
                    {"task": LaunchConfiguration("task")},
                ],
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
