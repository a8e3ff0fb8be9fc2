"""GRPO hyper-parameters: one flat dataclass, a docstring under every field (litgpt style).

Names follow TRL's ``GRPOConfig`` where the concept is the same, so a TRL recipe reads across.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from lit3drft.models.config import SAMPLING

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ImportanceSamplingLevel = Literal["token", "sequence"]
DynamicSampling = Literal["off", "skip", "resample"]


@dataclass
class GRPOConfig:
    """Group Relative Policy Optimization on verifiable rewards (3D-RFT stage 2)."""

    num_generations: int = 8
    """G: completions sampled per prompt; advantages are computed within each group of G."""
    scale_rewards: ScaleRewards = "group"
    """Advantage scaling: `group` divides by the group's reward std (GRPO), `batch` by the std over the whole
    rollout batch, `none` only centres on the group mean (Dr. GRPO)."""
    loss_type: LossType = "dapo"
    """How per-token losses become one scalar (see `lit3drft.algorithms.grpo.LOSS_AGGREGATIONS`): `grpo`
    per-sequence mean then mean over sequences; `bnpo` token mean per micro-batch; `dapo` token mean over the
    whole rollout batch (the paper's "averaged over all completion tokens of the batch"; TRL's default);
    `dr_grpo` token sum over (sequences x max_new_tokens)."""
    epsilon: float = 0.2
    """Lower clip range: the ratio pi_theta/pi_old is clipped below at 1 - epsilon. With ``num_iterations: 1`` the
    ratio is exactly 1 and the clip never acts (as in TRL): varying epsilon then changes nothing."""
    epsilon_high: float | None = None
    """Upper clip range (DAPO clip-higher, e.g. 0.28): clip above at 1 + epsilon_high; None means epsilon. A no-op
    with ``num_iterations: 1``, like ``epsilon``."""
    importance_sampling_level: ImportanceSamplingLevel = "token"
    """`token`: one ratio per token (GRPO); `sequence`: one length-normalised ratio per completion (GSPO)."""
    beta: float = 0.04
    """KL coefficient to the frozen reference (k3 estimator). 0 skips the reference forward pass entirely
    (the paper uses 0 for LoRA spatial-reasoning runs)."""
    num_iterations: int = 1
    """mu: optimisation passes over each rollout batch. With 1 the policy is on-policy and the ratio is exactly 1."""
    temperature: float = SAMPLING.temperature
    """Sampling temperature for the G rollouts (log-probs are computed at the same temperature)."""
    top_p: float = SAMPLING.top_p
    """Nucleus sampling threshold for rollouts; 1.0 disables it."""
    top_k: int | None = SAMPLING.top_k
    """Top-k sampling for rollouts; None disables it."""
    max_new_tokens: int = SAMPLING.max_new_tokens
    """Maximum completion length; also the fixed denominator of the `dr_grpo` loss."""
    mask_truncated_completions: bool = False
    """Drop completions that hit max_new_tokens without EOS from the loss (DAPO overlong filtering)."""
    dynamic_sampling: DynamicSampling = "off"
    """Groups whose rewards have zero variance carry no signal: `off` keeps them (advantage 0); `skip` drops them
    from the update (no refill; a step whose batch has no group with variance makes no update); `resample`
    (DAPO's dynamic sampling) drops them and draws further batches of B prompts, up to `max_generation_batches`
    batches a step, until B groups with variance are found (the first B are used). The fraction and the batches
    drawn are logged. The stage's `max_steps` counts optimiser updates in every mode, on one process or many."""
    max_generation_batches: int = 3
    """`resample`: the most batches of B prompts sampled for one update (the data loader hands a step this many
    batches of prompts; the unused ones are dropped, so the data order and `--resume` stay exact)."""
    micro_batch_size: int = 8
    """Completions per forward/backward chunk ("loss backward chunking"): memory independent of B*G. The prompt
    runs once per distinct prompt of a chunk, so a multiple of num_generations (whole groups) wastes least."""
    merge_adapter_for_sampling: bool = True
    """LoRA: sample the G completions with the adapter folded into the base weights (restored exactly after;
    one transient copy of the adapted weights). Same policy up to float rounding, fewer ops per token. No
    effect under QLoRA or full fine-tuning."""

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 for group advantages, got {self.num_generations}")
        if self.epsilon < 0 or (self.epsilon_high is not None and self.epsilon_high < 0):
            raise ValueError("epsilon and epsilon_high must be non-negative")
        if self.num_iterations < 1 or self.micro_batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_iterations, micro_batch_size and max_new_tokens must be >= 1")
        if self.max_generation_batches < 1:
            raise ValueError(f"grpo.max_generation_batches must be >= 1, got {self.max_generation_batches}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        # bad sampling settings fail here, naming the key (else: NaN probabilities or an obscure multinomial error)
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"grpo.temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"grpo.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"grpo.top_k must be >= 1 or null (off), got {self.top_k}")

    @property
    def clip_high(self) -> float:
        """The effective upper clip range: epsilon_high, or epsilon when unset."""
        return self.epsilon if self.epsilon_high is None else self.epsilon_high
