"""Offline trainer: bag ingest, training stages, GRPO, cycle. No rclpy."""
