"""Training objectives as pure tensor functions: the SFT loss and the GRPO family (registered by name)."""

from lit3drft.algorithms.config import GRPOConfig
from lit3drft.algorithms.grpo import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_AGGREGATIONS,
    REWARD_SCALINGS,
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    grpo_loss,
    k3_kl,
    log_importance_weights,
    zero_variance_groups,
)
from lit3drft.algorithms.sft import answer_only_cross_entropy

__all__ = [
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_AGGREGATIONS",
    "REWARD_SCALINGS",
    "GRPOConfig",
    "aggregate_loss",
    "answer_only_cross_entropy",
    "clipped_policy_loss",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "log_importance_weights",
    "zero_variance_groups",
]
