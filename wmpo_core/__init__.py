"""wmpo core: pure Python + torch. Never imports rclpy."""
