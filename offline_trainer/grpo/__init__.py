"""GRPO of the policy inside the world model (WMPO). `wmpo train grpo` lives in cli.py."""
