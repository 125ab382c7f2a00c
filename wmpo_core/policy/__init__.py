"""The VLA chunk policy: configuration, modeling, processing, checkpoints.

See docs/policy.md. `load_policy_checkpoint(path)` is the entry point the
runtime (policy_node) uses; training lives in offline_trainer/train_policy.py.
"""

from wmpo_core.policy.checkpoint_policy import (
    VLAChunkPolicy,
    load_policy,
    load_policy_checkpoint,
    policy_version,
    save_policy_checkpoint,
)
from wmpo_core.policy.configuration_policy import PolicyConfig, preset_config
from wmpo_core.policy.modeling_policy import (
    PolicyBatch,
    VLAPolicyModel,
    chunk_log_prob,
    sample_tokens,
    token_log_probs,
)
from wmpo_core.policy.processing_policy import (
    ActionTokenizer,
    NormalizationStats,
    PolicyProcessor,
    augment_images,
    hash_instruction,
)

__all__ = [
    "ActionTokenizer",
    "NormalizationStats",
    "PolicyBatch",
    "PolicyConfig",
    "PolicyProcessor",
    "VLAChunkPolicy",
    "VLAPolicyModel",
    "augment_images",
    "chunk_log_prob",
    "hash_instruction",
    "load_policy",
    "load_policy_checkpoint",
    "policy_version",
    "preset_config",
    "sample_tokens",
    "save_policy_checkpoint",
    "token_log_probs",
]
