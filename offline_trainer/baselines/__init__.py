"""Table 1's baselines at the same real budget P as WMPO (docs/baselines.md).

- online_grpo.py: GRPO with real sim rollouts (`wmpo train grpo-online`), every episode
  paid from P; the objective and update are offline_trainer.grpo's.
- dpo.py: offline DPO on success/failure pairs of P real base-policy rollouts
  (`wmpo train dpo`), the base policy frozen as the reference.
"""
