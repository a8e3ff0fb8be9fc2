"""Drive TRL 1.16's own GRPOTrainer code on hand-made tensors, without building a trainer.

``GRPOTrainer._compute_loss`` and ``_generate_and_score_completions`` are called unbound on a SimpleNamespace that
holds only the attributes they read; the model forward, the generator and the reward functions are replaced by
stubs returning the tensors under test. Nothing of TRL's maths is copied here.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch
from torch import Tensor

try:  # TRL is a dev dependency (pyproject: dev): the cross-check fails rather than skips without it
    from trl.trainer import grpo_trainer as trl_grpo
except ImportError as err:
    raise ImportError(f"the TRL cross-check needs trl (pip install -e '.[dev]'): {err}") from err
GRPOTrainer = trl_grpo.GRPOTrainer


def _accelerator() -> SimpleNamespace:
    return SimpleNamespace(
        device=torch.device("cpu"),
        num_processes=1,
        process_index=0,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
    )


def trl_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str,
    beta: float,
    epsilon: float,
    epsilon_high: float | None,
    importance_sampling_level: str,
    max_completion_length: int,
    num_items_in_batch: float,
    accumulation_steps: int = 1,
) -> Tensor:
    """TRL's training loss for one micro-batch, as one of ``accumulation_steps`` equal micro-batches of a
    generation batch (``steps_per_generation == gradient_accumulation_steps``, one process)."""
    n, t = mask.shape
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=importance_sampling_level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=accumulation_steps,
        max_completion_length=max_completion_length,
        accelerator=_accelerator(),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=accumulation_steps),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "num_items_in_batch": torch.tensor(float(num_items_in_batch)),
    }
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    return GRPOTrainer._compute_loss(trainer, None, inputs)


def trl_advantages(rewards: Tensor, num_generations: int, scale_rewards: str) -> Tensor:
    """TRL's advantages for a (B*G,) reward vector: one reward function of weight 1, group-contiguous rows."""
    n = rewards.numel()
    generated = (
        [[1] for _ in range(n)],  # prompt ids
        [[2, 3] for _ in range(n)],  # completion ids
        None,  # tool mask
        ["c"] * n,  # completions
        None,  # sampling log-probs
        {},  # extra fields
        None,  # images
        None,  # tool images
    )
    trainer = SimpleNamespace(
        accelerator=_accelerator(),
        model=SimpleNamespace(training=True, is_gradient_checkpointing=False),
        environment_factories=None,
        environments=None,
        tools=None,
        _generate=lambda prompts: generated,
        _tokenizer=SimpleNamespace(pad_token_id=0),
        pad_to_multiple_of=None,
        mask_truncated_completions=False,
        args=SimpleNamespace(
            per_device_train_batch_size=n,
            steps_per_generation=1,
            gradient_accumulation_steps=1,
            gradient_checkpointing_kwargs=None,
        ),
        num_iterations=1,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        beta=0.0,
        _calculate_rewards=lambda *a: rewards.unsqueeze(1),
        num_generations=num_generations,
        multi_objective_aggregation="sum_then_normalize",
        reward_weights=torch.ones(1, dtype=rewards.dtype),
        scale_rewards=scale_rewards,
        reward_func_names=["r"],
        _metrics=defaultdict(lambda: defaultdict(list)),
        _logs={
            "prompt": [],
            "completion": [],
            "rewards": defaultdict(list),
            "advantages": [],
            "extra": defaultdict(list),
        },
        _pending_extra_logs={},
        _pending_metrics={},
        log_multimodal=False,
    )
    inputs = [{"prompt": "p"} for _ in range(n)]
    return GRPOTrainer._generate_and_score_completions(trainer, inputs)["advantages"]
