"""GRPO of the policy inside the world model (WMPO).

- config.py: GRPOConfig (paper defaults, presets)
- objective.py: advantages, dynamic sampling, the PPO-clip loss
- rollout.py: the imagined-rollout loop and the Protocols the models implement
- trainer.py: the training loop, checkpoint/resume, metrics
- adapters.py: the project's policy / world model / reward model as those Protocols
- cli.py: `wmpo train grpo` (add_arguments / run, re-exported here for wmpo_core.cli)
"""

from offline_trainer.grpo.cli import add_arguments, run

__all__ = ["add_arguments", "run"]
