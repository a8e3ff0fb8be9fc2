"""answer_only_cross_entropy against torch's cross-entropy on hand-built answer masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit3drft.algorithms import answer_only_cross_entropy


def _reference(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Brute force: one CE term per (position t predicts token t+1) whose label counts, then the mean."""
    terms = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] != -100:
                terms.append(F.cross_entropy(logits[b, t][None].double(), labels[b, t + 1][None]))
    return torch.stack(terms).mean()


def test_matches_torch_cross_entropy_on_answer_tokens_only():
    torch.manual_seed(0)
    input_ids = torch.randint(0, 11, (3, 8))
    labels = torch.full_like(input_ids, -100)
    labels[0, 5:] = input_ids[0, 5:]  # answer at the end
    labels[1, 2:4] = input_ids[1, 2:4]  # answer in the middle, padding after
    labels[2, 7] = input_ids[2, 7]  # one answer token
    logits = torch.randn(3, 8, 11, requires_grad=True)
    loss = answer_only_cross_entropy(logits, labels)
    torch.testing.assert_close(loss.double(), _reference(logits, labels))
    loss.backward()
    # prompt positions that predict prompt tokens get no gradient; the last position never predicts anything
    assert logits.grad[0, :4].abs().sum() == 0 and logits.grad[:, -1].abs().sum() == 0
    assert logits.grad[0, 4].abs().sum() > 0


def test_bf16_logits_are_upcast_and_no_answer_is_zero_not_nan():
    logits = torch.randn(2, 5, 7).to(torch.bfloat16)
    labels = torch.randint(0, 7, (2, 5))
    loss = answer_only_cross_entropy(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), _reference(logits.float(), labels), atol=1e-5, rtol=0)
    assert answer_only_cross_entropy(logits, torch.full_like(labels, -100)).item() == 0.0


def test_accumulated_micro_batches_sum_to_the_batch_token_mean():
    torch.manual_seed(1)
    logits = torch.randn(4, 6, 9)
    labels = torch.randint(0, 9, (4, 6))
    labels[0, :5] = -100  # very different answer lengths per row
    total_tokens = (labels[:, 1:] != -100).sum()
    parts = [answer_only_cross_entropy(logits[r], labels[r], num_tokens=total_tokens) for r in ([0], [1, 2, 3])]
    torch.testing.assert_close(sum(parts), answer_only_cross_entropy(logits, labels))
