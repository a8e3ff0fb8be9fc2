"""Our GRPO maths against TRL 1.16's GRPOTrainer on identical float64 inputs (loss, gradients, advantages)."""

from __future__ import annotations

import itertools

import pytest
import torch

from lit3drft.algorithms import GRPOConfig, group_advantages, grpo_loss

from .trl_reference import trl_advantages, trl_loss

T = 7  # padded completion length
MAX_LEN = 9  # cfg.max_new_tokens >= T, so dr_grpo's constant differs from the padded width


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, T, generator=g, dtype=torch.float64) * 3
    # spread the ratios so both clip sides are hit: log-ratio in about [-0.6, 0.6]
    logp = old + (torch.rand(n, T, generator=g, dtype=torch.float64) - 0.5) * 1.2
    ref = old + (torch.rand(n, T, generator=g, dtype=torch.float64) - 0.5)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).to(torch.float64)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return {"logp": logp, "old": old, "ref": ref, "mask": mask, "adv": adv}


CASES = list(
    itertools.product(
        ["grpo", "bnpo", "dapo", "dr_grpo"],  # loss_type
        ["token", "sequence"],  # importance_sampling_level
        [0.0, 0.04],  # beta
        [None, 0.28],  # epsilon_high
    )
)


@pytest.mark.parametrize(("loss_type", "level", "beta", "epsilon_high"), CASES)
@pytest.mark.parametrize("chunks", [1, 3])
def test_loss_and_grad_match_trl(loss_type, level, beta, epsilon_high, chunks):
    n = 6
    data = _batch(n, seed=CASES.index((loss_type, level, beta, epsilon_high)))  # deterministic, unlike hash()
    cfg = GRPOConfig(
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=beta,
        epsilon=0.2,
        epsilon_high=epsilon_high,
        max_new_tokens=MAX_LEN,
    )
    num_tokens = data["mask"].sum()
    grad_norm = 0.0
    for rows in torch.arange(n).chunk(chunks):  # equal micro-batches, as TRL's accumulation assumes
        mine_logp = data["logp"][rows].clone().requires_grad_(True)
        trl_logp = data["logp"][rows].clone().requires_grad_(True)
        ref = data["ref"][rows] if beta else None
        ours, _ = grpo_loss(
            mine_logp,
            data["old"][rows],
            ref,
            data["adv"][rows],
            data["mask"][rows],
            cfg,
            num_tokens=num_tokens,
            num_sequences=n,
        )
        theirs = trl_loss(
            trl_logp,
            data["old"][rows],
            ref,
            data["adv"][rows],
            data["mask"][rows],
            loss_type=loss_type,
            beta=beta,
            epsilon=0.2,
            epsilon_high=epsilon_high,
            importance_sampling_level=level,
            max_completion_length=MAX_LEN,
            num_items_in_batch=num_tokens,
            accumulation_steps=chunks,
        )
        ours.backward()
        theirs.backward()
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        torch.testing.assert_close(mine_logp.grad, trl_logp.grad, rtol=0, atol=1e-6)
        grad_norm += mine_logp.grad.abs().sum().item()
    assert grad_norm > 0  # the comparison is not vacuous (a chunk may be fully clipped, the batch is not)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_on_policy_matches_trl_without_old_logp(loss_type):
    """mu = 1: TRL and we both fall back to logp.detach() when old log-probs are not passed."""
    data = _batch(4, seed=0)
    cfg = GRPOConfig(loss_type=loss_type, beta=0.0, max_new_tokens=MAX_LEN)
    a, b = data["logp"].clone().requires_grad_(True), data["logp"].clone().requires_grad_(True)
    ours, _ = grpo_loss(a, None, None, data["adv"], data["mask"], cfg)
    theirs = trl_loss(
        b, None, None, data["adv"], data["mask"], loss_type=loss_type, beta=0.0, epsilon=0.2, epsilon_high=None,
        importance_sampling_level="token", max_completion_length=MAX_LEN, num_items_in_batch=data["mask"].sum(),
    )  # fmt: skip
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_advantages_match_trl(scale_rewards, group_size):
    g = torch.Generator().manual_seed(group_size)
    rewards = torch.rand(5 * group_size, generator=g, dtype=torch.float64) * 3
    rewards[:group_size] = 1.25  # a zero-variance group
    rewards[group_size : 2 * group_size : 2] = 0.0  # ties inside a group
    ours = group_advantages(rewards, group_size, scale_rewards)
    theirs = trl_advantages(rewards, group_size, scale_rewards)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
