"""GRPO maths as pure tensor functions, each variant registered by name (verl ``core_algos`` style).

Shapes: ``N = B*G`` completions in the rollout batch, rows ordered group-contiguous (the G completions of
prompt 0, then those of prompt 1, ...); ``n`` rows in one micro-batch; ``T`` padded completion length.
Everything here was checked against TRL 1.16 ``GRPOTrainer`` (``trl/trainer/grpo_trainer.py``:
``_generate_and_score_completions`` for advantages, ``_compute_loss`` for the loss) in
``tests/algorithms/test_grpo_vs_trl.py``. A new variant is a new function plus a registry name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit3drft.algorithms.config import GRPOConfig

ADVANTAGE_EPS = 1e-4
"""Added to the reward std before dividing, as TRL does (keeps zero-variance groups finite)."""


def _lookup(registry: dict[str, Callable], name: str, what: str) -> Callable:
    if name not in registry:
        raise ValueError(f"Unknown {what} {name!r}; valid names: {sorted(registry)}")
    return registry[name]


# ----------------------------------------------------------------------------------------------- advantages
def _group_std(rewards: Tensor, group_size: int) -> Tensor:
    # (N,) -> (N,): unbiased std of each row's group, repeated over the group
    if group_size == 1:
        return torch.zeros_like(rewards)
    return rewards.view(-1, group_size).std(dim=1, unbiased=True).repeat_interleave(group_size)


def _batch_std(rewards: Tensor, group_size: int) -> Tensor:
    # (N,) -> (N,): unbiased std over the whole rollout batch
    if rewards.numel() == 1:
        return torch.zeros_like(rewards)
    return rewards.std(unbiased=True).expand_as(rewards)


REWARD_SCALINGS: dict[str, Callable[[Tensor, int], Tensor] | None] = {
    "group": _group_std,  # GRPO (DeepSeekMath)
    "batch": _batch_std,  # "REINFORCE++"-style batch normalisation
    "none": None,  # Dr. GRPO: centre only, no division
}


def group_advantages(rewards: Tensor, group_size: int, scale_rewards: str = "group") -> Tensor:
    """Group-relative advantages ``(R_i - mean_G R) / (std R + 1e-4)``, the baseline always per group.

    Args:
        rewards: (N,) total reward per completion, N = B*G, group-contiguous rows.
        group_size: G.
        scale_rewards: name in ``REWARD_SCALINGS``: ``group`` | ``batch`` | ``none``.

    Returns:
        (N,) advantages, same dtype as ``rewards``. A group whose rewards are all equal gets exactly 0.

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)
        tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
        >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2, scale_rewards="none")
        tensor([ 0.5000, -0.5000,  0.0000,  0.0000])
    """
    scale = _lookup(REWARD_SCALINGS, scale_rewards, "scale_rewards")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B*G,) with G={group_size} dividing it, got shape {tuple(rewards.shape)}")
    mean = rewards.view(-1, group_size).mean(dim=1).repeat_interleave(group_size)  # (N,)
    advantages = rewards - mean
    if scale is not None:
        advantages = advantages / (scale(rewards, group_size) + ADVANTAGE_EPS)
    # A group of equal rewards has mean != reward by float rounding (0.1 * 3 / 3); divided by 1e-4 that residue
    # becomes a spurious signal (~1e-4 in float32). TRL keeps it; we zero it so such groups give exactly no update.
    flat = zero_variance_groups(rewards, group_size).repeat_interleave(group_size)  # (N,)
    return advantages.masked_fill(flat, 0.0)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups carry no learning signal (all G rewards equal), for dynamic sampling and logging.

    Args:
        rewards: (N,) rewards, group-contiguous.
        group_size: G.

    Returns:
        (B,) bool, True where the group's reward std is zero.

    Example:
        >>> zero_variance_groups(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)
        tensor([False,  True])
    """
    grouped = rewards.view(-1, group_size)  # (B, G)
    return (grouped == grouped[:, :1]).all(dim=1)


def component_variance_groups(values: Tensor, scored: Tensor, group_size: int) -> tuple[int, int]:
    """For one reward component (e.g. ``grounding/iou``): ``(groups where every completion is scored by it, those of
    them where it has no variance)``. The total reward of a group can vary through another term (format, frame)
    while its IoU term is flat: this tells whether the metric itself gives a signal.

    Args:
        values: (N,) the component's value per completion, group-contiguous.
        scored: (N,) bool, where the component applies (its task's completions).
        group_size: G.

    Example:
        >>> component_variance_groups(torch.tensor([0.0, 0.5, 0.0, 0.0, 1.0, 1.0]),
        ...                           torch.tensor([True, True, True, True, False, False]), group_size=2)
        (2, 1)
    """
    scored_groups = scored.view(-1, group_size).all(dim=1)
    flat = zero_variance_groups(values.float(), group_size) & scored_groups
    return int(scored_groups.sum()), int(flat.sum())


# ------------------------------------------------------------------------------------- importance weights
def token_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """Per-token log importance ratio ``log pi_theta - log pi_old``: (n, T) -> (n, T). ``mask`` is unused."""
    return logp - old_logp


def sequence_log_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO's length-normalised sequence log ratio ``mean_t (log pi_theta - log pi_old)``: (n, T) -> (n, 1).

    Gradients still flow to every token (GSPO-token form), as in TRL.
    """
    return ((logp - old_logp) * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)


IMPORTANCE_SAMPLING_LEVELS: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "token": token_log_ratio,
    "sequence": sequence_log_ratio,
}


def log_importance_weights(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """Log importance weights at ``level`` (``token``: (n, T); ``sequence``: (n, 1)).

    Example:
        >>> logp, old = torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[-1.5, -1.0, 0.0]])
        >>> log_importance_weights(logp, old, torch.tensor([[1.0, 1.0, 0.0]]), "sequence")
        tensor([[-0.2500]])
    """
    return _lookup(IMPORTANCE_SAMPLING_LEVELS, level, "importance_sampling_level")(logp, old_logp, mask)


# ------------------------------------------------------------------------------------------- policy loss
def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    importance_sampling_level: str = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate ``-min(r A, clip(r, 1-eps, 1+eps_high) A)`` per token (PPO / DAPO / GSPO).

    Args:
        logp: (n, T) log-probs of the sampled tokens under the current policy (with grad).
        old_logp: (n, T) log-probs under the sampling policy (no grad).
        advantages: (n,) one advantage per completion.
        mask: (n, T) 1 on completion tokens that count, 0 on padding.
        epsilon: lower clip range.
        epsilon_high: upper clip range (DAPO clip-higher); None means ``epsilon``.
        importance_sampling_level: ``token`` or ``sequence`` (GSPO).

    Returns:
        ``(per_token_loss (n, T), stats)``; stats hold detached token means over ``mask`` of
        ``clip_ratio/low`` (ratio below 1-eps with A<0), ``clip_ratio/high`` (above 1+eps_high with A>0),
        ``clip_ratio/region`` (either) and ``ratio/mean``.

    Example:
        >>> logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratio 1.5 and 0.5 against old_logp = 0
        >>> loss, stats = clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2))
        >>> loss  # 1.5 clipped to 1.2; 0.5 is unclipped because min() keeps the pessimistic term
        tensor([[-1.2000, -0.5000]])
        >>> stats["clip_ratio/high"].item(), stats["clip_ratio/low"].item()
        (0.5, 0.0)
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.to(logp.dtype)
    ratio = torch.exp(log_importance_weights(logp, old_logp, mask, importance_sampling_level))  # (n, T) | (n, 1)
    adv = advantages.unsqueeze(-1)  # (n, 1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + eps_high)
    per_token_loss = -torch.minimum(ratio * adv, clipped * adv).expand_as(mask)  # (n, T)
    with torch.no_grad():
        low = ((ratio < 1 - epsilon) & (adv < 0)).expand_as(mask).to(mask.dtype)
        high = ((ratio > 1 + eps_high) & (adv > 0)).expand_as(mask).to(mask.dtype)
        stats = {
            "clip_ratio/low": _masked_mean(low, mask),
            "clip_ratio/high": _masked_mean(high, mask),
            "clip_ratio/region": _masked_mean(torch.maximum(low, high), mask),
            "ratio/mean": _masked_mean(ratio.expand_as(mask), mask),
        }
    return per_token_loss, stats


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(pi_theta || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (Schulman 2020).

    Non-negative, zero where the two agree. (n, T) -> (n, T).

    Example:
        >>> k3_kl(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -1.0]]))
        tensor([[0.0000, 0.7183]])
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


# ------------------------------------------------------------------------------------------- aggregation
# Every aggregation sees one micro-batch of n rows and the totals of the whole rollout batch it belongs to:
# `num_sequences` completions, `num_tokens` masked tokens. They are written so that per-micro-batch losses
# sum to the full-batch loss (exactly for grpo/dr_grpo/dapo; for bnpo when chunks have equal sizes and token
# counts, since bnpo *is* a per-micro-batch token mean by definition), so gradient accumulation needs no
# extra scaling.
def aggregate_grpo(
    per_token_loss: Tensor, mask: Tensor, *, num_sequences: int, num_tokens: float, max_completion_length: int
) -> Tensor:
    """GRPO (DeepSeekMath): mean over each completion's tokens, then mean over completions."""
    per_sequence = (per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (n,)
    return per_sequence.sum() / num_sequences


def aggregate_bnpo(
    per_token_loss: Tensor, mask: Tensor, *, num_sequences: int, num_tokens: float, max_completion_length: int
) -> Tensor:
    """BNPO: token mean over the micro-batch, weighted by the micro-batch's share of completions (TRL divides
    by the number of accumulation steps, the same thing for equal chunks)."""
    token_mean = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    return token_mean * mask.shape[0] / num_sequences


def aggregate_dapo(
    per_token_loss: Tensor, mask: Tensor, *, num_sequences: int, num_tokens: float, max_completion_length: int
) -> Tensor:
    """DAPO: token mean over every completion token of the whole rollout batch (global token count)."""
    return (per_token_loss * mask).sum() / max(float(num_tokens), 1.0)


def aggregate_dr_grpo(
    per_token_loss: Tensor, mask: Tensor, *, num_sequences: int, num_tokens: float, max_completion_length: int
) -> Tensor:
    """Dr. GRPO: token sum over a constant ``num_sequences x max_completion_length`` (no length bias)."""
    return (per_token_loss * mask).sum() / (num_sequences * max_completion_length)


LOSS_AGGREGATIONS: dict[str, Callable[..., Tensor]] = {
    "grpo": aggregate_grpo,
    "bnpo": aggregate_bnpo,
    "dapo": aggregate_dapo,
    "dr_grpo": aggregate_dr_grpo,
}


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    loss_type: str,
    *,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    max_completion_length: int,
) -> Tensor:
    """Reduce (n, T) per-token losses to this micro-batch's share of the batch loss.

    ``num_sequences`` / ``num_tokens`` are the rollout batch's totals; None means this micro-batch is the batch.

    Example:
        >>> loss, mask = torch.tensor([[1.0, 1.0, 9.0], [4.0, 9.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        >>> [aggregate_loss(loss, mask, t, max_completion_length=4).item() for t in ("grpo", "dapo", "dr_grpo")]
        [2.5, 2.0, 0.75]
    """
    aggregate = _lookup(LOSS_AGGREGATIONS, loss_type, "loss_type")
    mask = mask.to(per_token_loss.dtype)
    return aggregate(
        per_token_loss,
        mask,
        num_sequences=mask.shape[0] if num_sequences is None else num_sequences,
        num_tokens=mask.sum().item() if num_tokens is None else num_tokens,
        max_completion_length=max_completion_length,
    )


# ------------------------------------------------------------------------------------------------ top level
def grpo_loss(
    logp: Tensor,
    old_logp: Tensor | None,
    ref_logp: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    cfg: GRPOConfig,
    num_tokens: float | Tensor | None = None,
    num_sequences: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss one micro-batch backpropagates: clipped surrogate + beta * k3 KL, aggregated by ``cfg.loss_type``.

    Call it once per micro-batch and ``backward()`` each result: the micro-batch losses sum to the loss of the
    whole rollout batch, so no further scaling is needed before the optimiser step.

    Args:
        logp: (n, T) current-policy log-probs of the sampled completion tokens (with grad).
        old_logp: (n, T) sampling-policy log-probs, or None when mu = 1 (then ``logp.detach()``, ratio exactly 1).
        ref_logp: (n, T) reference log-probs; only read when ``cfg.beta != 0``.
        advantages: (n,) from ``group_advantages``.
        mask: (n, T) completion-token mask (0 on padding and on masked truncated completions).
        cfg: ``GRPOConfig`` (loss_type, epsilon, epsilon_high, importance_sampling_level, beta, max_new_tokens).
        num_tokens: masked-token count of the whole rollout batch (all micro-batches; TRL's ``num_items_in_batch``);
            None = this one.
        num_sequences: completion count of the whole rollout batch; None = this micro-batch's n.

    Returns:
        ``(loss, stats)``: scalar loss, and detached scalars ``loss``, ``kl`` (token mean, when beta != 0),
        ``clip_ratio/{low,high,region}``, ``ratio/mean`` and ``chunk_tokens`` (this micro-batch's masked tokens, to token-weight stats across chunks).

    Example:
        >>> cfg = GRPOConfig(beta=0.0, loss_type="grpo")
        >>> logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
        >>> loss, stats = grpo_loss(logp, None, None, torch.tensor([1.0, -1.0]), torch.ones(2, 2), cfg)
        >>> loss.item(), stats["ratio/mean"].item()
        (0.0, 1.0)
        >>> loss.backward(); logp.grad  # plain policy gradient: -A / (T * n)
        tensor([[-0.2500, -0.2500],
                [ 0.2500,  0.2500]])
    """
    if old_logp is None:
        old_logp = logp.detach()
    mask = mask.to(logp.dtype)
    per_token_loss, stats = clipped_policy_loss(
        logp, old_logp, advantages, mask, cfg.epsilon, cfg.epsilon_high, cfg.importance_sampling_level
    )
    if cfg.beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs ref_logp (reference-policy log-probs); set beta=0 to skip the KL")
        kl = k3_kl(logp, ref_logp)  # (n, T)
        per_token_loss = per_token_loss + cfg.beta * kl
        stats["kl"] = _masked_mean(kl.detach(), mask)
    num_tokens = None if num_tokens is None else float(num_tokens)
    loss = aggregate_loss(
        per_token_loss,
        mask,
        cfg.loss_type,
        num_sequences=num_sequences,
        num_tokens=num_tokens,
        max_completion_length=cfg.max_new_tokens,
    )
    stats["loss"] = loss.detach()
    stats["chunk_tokens"] = mask.sum().detach()
    return loss, stats
