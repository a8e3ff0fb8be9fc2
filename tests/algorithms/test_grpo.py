"""Properties of the GRPO functions against brute-force loops and closed forms."""

from __future__ import annotations

import statistics
import typing

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit3drft.algorithms import (
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_AGGREGATIONS,
    REWARD_SCALINGS,
    GRPOConfig,
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    grpo_loss,
    k3_kl,
    zero_variance_groups,
)
from lit3drft.algorithms.config import ImportanceSamplingLevel, LossType, ScaleRewards

LOSS_TYPES = sorted(LOSS_AGGREGATIONS)


def _loop_advantages(rewards: list[float], group_size: int, scale: str) -> list[float]:
    """Brute force with the statistics module (unbiased stdev), one group at a time."""
    out = []
    batch_std = statistics.stdev(rewards) if len(rewards) > 1 else 0.0
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean = statistics.fmean(group)
        std = {"group": statistics.stdev(group), "batch": batch_std}.get(scale)
        for r in group:
            if len(set(group)) == 1:
                out.append(0.0)
            else:
                out.append((r - mean) if std is None else (r - mean) / (std + 1e-4))
    return out


rewards_strategy = st.integers(2, 6).flatmap(
    lambda g: st.tuples(
        st.just(g),
        st.integers(1, 5).flatmap(
            lambda b: st.lists(
                st.sampled_from([0.0, 0.5, 1.0]) | st.floats(-5, 5, allow_nan=False, width=64),
                min_size=b * g,
                max_size=b * g,
            )
        ),
    )
)


@settings(max_examples=60, deadline=None)
@given(rewards_strategy, st.sampled_from(["group", "batch", "none"]))
def test_group_advantages_loop_vs_vectorised(case, scale):
    group_size, rewards = case
    vectorised = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size, scale)
    expected = torch.tensor(_loop_advantages(rewards, group_size, scale), dtype=torch.float64)
    torch.testing.assert_close(vectorised, expected, rtol=1e-9, atol=1e-9)


def test_group_advantages_zero_mean_unit_std_per_group():
    rewards = torch.rand(4 * 8, dtype=torch.float64)
    adv = group_advantages(rewards, 8).view(4, 8)
    torch.testing.assert_close(adv.mean(1), torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(adv.std(1), torch.ones(4, dtype=torch.float64), atol=1e-3, rtol=0)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_rewards_equal_gives_zero_update_and_no_nan(loss_type, scale):
    rewards = torch.full((12,), 0.1)  # 0.1 * 4 / 4 != 0.1 in float32: the rounding residue must not leak
    adv = group_advantages(rewards, 4, scale)
    assert torch.equal(adv, torch.zeros(12))
    assert zero_variance_groups(rewards, 4).all()
    logp = (-torch.rand(12, 5)).requires_grad_(True)
    old = logp.detach() + 0.3  # off-policy, so the ratio is not 1 either
    loss, stats = grpo_loss(logp, old, None, adv, torch.ones(12, 5), GRPOConfig(loss_type=loss_type, beta=0.0))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros_like(logp))
    assert all(torch.isfinite(v).all() for v in stats.values())


def test_empty_completion_rows_are_finite():
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # second completion fully masked (e.g. truncated)
    for loss_type in LOSS_TYPES:
        loss, stats = grpo_loss(
            logp, None, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask, GRPOConfig(loss_type=loss_type)
        )
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    zero_mask = torch.zeros(2, 3)
    loss, _ = grpo_loss(logp, None, None, torch.ones(2), zero_mask, GRPOConfig(beta=0.0))
    assert loss.item() == 0.0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_on_policy_ratio_is_one_and_gradient_is_plain_policy_gradient(loss_type, level):
    torch.manual_seed(0)
    logp = (-torch.rand(6, 5, dtype=torch.float64) * 2).requires_grad_(True)
    mask = (torch.arange(5) < torch.tensor([5, 3, 4, 1, 5, 2])[:, None]).double()
    adv = torch.randn(6, dtype=torch.float64)
    cfg = GRPOConfig(loss_type=loss_type, importance_sampling_level=level, beta=0.0, epsilon=0.2, epsilon_high=0.28)
    loss, stats = grpo_loss(logp, logp.detach(), None, adv, mask, cfg)
    assert stats["ratio/mean"].item() == 1.0
    assert stats["clip_ratio/region"].item() == 0.0
    (grad,) = torch.autograd.grad(loss, logp)
    # REINFORCE with the group baseline: loss = -A * logp per token, aggregated the same way
    plain = aggregate_loss(-adv[:, None] * logp, mask, loss_type, max_completion_length=cfg.max_new_tokens)
    (plain_grad,) = torch.autograd.grad(plain, logp)
    torch.testing.assert_close(grad, plain_grad, rtol=0, atol=1e-12)
    assert grad.abs().sum() > 0


def test_beta_zero_needs_no_reference_and_beta_positive_does():
    logp = -torch.rand(3, 4)
    adv = torch.tensor([1.0, -1.0, 0.5])
    loss0, stats0 = grpo_loss(logp, None, None, adv, torch.ones(3, 4), GRPOConfig(beta=0.0))
    assert "kl" not in stats0
    # a reference passed with beta=0 changes nothing
    loss_ref, _ = grpo_loss(logp, None, logp - 1.0, adv, torch.ones(3, 4), GRPOConfig(beta=0.0))
    assert loss_ref.item() == loss0.item()
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, None, None, adv, torch.ones(3, 4), GRPOConfig(beta=0.04))
    loss_kl, stats_kl = grpo_loss(logp, None, logp - 1.0, adv, torch.ones(3, 4), GRPOConfig(beta=0.04))
    expected_kl = torch.exp(torch.tensor(-1.0)) + 1.0 - 1.0  # k3 at ref - logp = -1
    torch.testing.assert_close(stats_kl["kl"], expected_kl)
    torch.testing.assert_close(loss_kl - loss0, 0.04 * expected_kl)


def test_k3_is_nonnegative_and_zero_at_equality():
    logp, ref = -torch.rand(50, 10) * 5, -torch.rand(50, 10) * 5
    assert (k3_kl(logp, ref) >= 0).all()
    assert torch.equal(k3_kl(logp, logp), torch.zeros_like(logp))


def test_clip_higher_lets_positive_advantages_grow_further():
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.25, 1.5]], dtype=torch.float64)
    logp = torch.log(ratios).requires_grad_(True)
    old = torch.zeros_like(logp)
    mask = torch.ones_like(logp)
    sym, sym_stats = clipped_policy_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), mask, 0.2, None)
    hi, hi_stats = clipped_policy_loss(logp, old, torch.tensor([1.0], dtype=torch.float64), mask, 0.2, 0.28)
    torch.testing.assert_close(sym, -torch.tensor([[0.5, 0.9, 1.1, 1.2, 1.2]], dtype=torch.float64))
    torch.testing.assert_close(hi, -torch.tensor([[0.5, 0.9, 1.1, 1.25, 1.28]], dtype=torch.float64))
    assert sym_stats["clip_ratio/high"].item() == pytest.approx(2 / 5)
    assert hi_stats["clip_ratio/high"].item() == pytest.approx(1 / 5)
    # the token at ratio 1.25 still gets gradient with clip-higher, none without
    (g_sym,) = torch.autograd.grad(sym.sum(), logp)
    (g_hi,) = torch.autograd.grad(hi.sum(), logp)
    assert g_sym[0, 3] == 0 and g_hi[0, 3] < 0
    # negative advantages: epsilon_high is irrelevant, the low side clips at 1 - epsilon
    neg, neg_stats = clipped_policy_loss(logp, old, torch.tensor([-1.0], dtype=torch.float64), mask, 0.2, 0.28)
    torch.testing.assert_close(neg, torch.tensor([[0.8, 0.9, 1.1, 1.25, 1.5]], dtype=torch.float64))
    assert neg_stats["clip_ratio/low"].item() == pytest.approx(1 / 5)


def test_sequence_level_uses_one_ratio_per_completion():
    logp = torch.tensor([[-1.0, -2.0, -9.0]])
    old = torch.tensor([[-1.2, -1.6, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = clipped_policy_loss(logp, old, torch.tensor([1.0]), mask, importance_sampling_level="sequence")
    ratio = torch.exp(torch.tensor((0.2 - 0.4) / 2))
    torch.testing.assert_close(loss, -ratio.expand(1, 3))
    torch.testing.assert_close(stats["ratio/mean"], ratio)


def _split_points(n: int):
    return st.lists(st.integers(1, n - 1), unique=True, max_size=n - 1).map(sorted)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(st.just(n), _split_points(n), st.integers(0, 10_000))))
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_chunked_micro_batches_sum_to_full_batch(loss_type, level, case):
    n, cuts, seed = case
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, 6, generator=g, dtype=torch.float64) * 2
    old = logp + (torch.rand(n, 6, generator=g, dtype=torch.float64) - 0.5)
    ref = logp + (torch.rand(n, 6, generator=g, dtype=torch.float64) - 0.5)
    mask = (torch.arange(6) < torch.randint(0, 7, (n, 1), generator=g)).double()
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    cfg = GRPOConfig(loss_type=loss_type, importance_sampling_level=level, beta=0.04, epsilon_high=0.28)

    full_logp = logp.clone().requires_grad_(True)
    full, _ = grpo_loss(full_logp, old, ref, adv, mask, cfg)
    full.backward()

    chunk_logp = logp.clone().requires_grad_(True)
    total = torch.zeros((), dtype=torch.float64)
    for rows in torch.tensor_split(torch.arange(n), cuts):  # unequal micro-batches
        loss, _ = grpo_loss(
            chunk_logp[rows], old[rows], ref[rows], adv[rows], mask[rows], cfg,
            num_tokens=mask.sum(), num_sequences=n,
        )  # fmt: skip
        loss.backward()
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(chunk_logp.grad, full_logp.grad, rtol=0, atol=1e-12)


def test_bnpo_chunks_sum_to_full_batch_when_chunks_are_alike():
    """bnpo is a per-micro-batch token mean by definition: chunking is exact when chunks share sizes and
    token counts, and (unlike dapo) is not when they do not."""
    torch.manual_seed(1)
    logp, old = -torch.rand(4, 5, dtype=torch.float64), -torch.rand(4, 5, dtype=torch.float64)
    adv = torch.randn(4, dtype=torch.float64)
    cfg = GRPOConfig(loss_type="bnpo", beta=0.0)
    alike = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float64)
    unlike = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float64)
    for mask, exact in ((alike, True), (unlike, False)):
        full, _ = grpo_loss(logp, old, None, adv, mask, cfg)
        parts = [grpo_loss(logp[r], old[r], None, adv[r], mask[r], cfg, num_sequences=4)[0] for r in ([0, 1], [2, 3])]
        assert (abs(sum(parts) - full).item() < 1e-12) is exact


def test_registries_match_config_literals():
    assert set(LOSS_AGGREGATIONS) == set(typing.get_args(LossType))
    assert set(IMPORTANCE_SAMPLING_LEVELS) == set(typing.get_args(ImportanceSamplingLevel))
    assert set(REWARD_SCALINGS) == set(typing.get_args(ScaleRewards))


def test_unknown_names_raise_with_valid_names():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"valid names: \['bnpo', 'dapo', 'dr_grpo', 'grpo'\]"):
        aggregate_loss(x, x, "ppo", max_completion_length=3)
    with pytest.raises(ValueError, match="valid names: .*'sequence', 'token'"):
        clipped_policy_loss(x, x, torch.zeros(2), x, importance_sampling_level="word")
    with pytest.raises(ValueError, match="valid names: .*'batch', 'group', 'none'"):
        group_advantages(torch.zeros(4), 2, "prompt")
    with pytest.raises(ValueError, match="dividing"):
        group_advantages(torch.zeros(5), 2)
