"""Thin rclpy nodes over wmpo_core."""
