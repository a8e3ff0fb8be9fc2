"""SFT loss: next-token cross-entropy on the answer tokens only (3D-RFT stage 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value of tokens that do not count (prompt, frames, padding), as in Hugging Face collators."""


def answer_only_cross_entropy(logits: Tensor, labels: Tensor, num_tokens: int | Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy over the tokens whose label is not -100.

    Position t predicts label t+1 (the shift happens here, labels are aligned with ``input_ids``). Computed in
    float32 whatever the logits dtype. With no answer token at all the loss is 0 (not NaN).

    Args:
        logits: (B, L, V) model outputs.
        labels: (B, L) token ids of the answer, -100 elsewhere.
        num_tokens: total answer-token count over all gradient-accumulation micro-batches; when given the
            loss is ``sum / num_tokens`` so micro-batch losses sum to the accumulated batch's token mean.

    Returns:
        Scalar loss.

    Example:
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens: CE = log 4 at every position
        >>> labels = torch.tensor([[-100, 2, -100]])  # only position 0 -> label 2 counts
        >>> round(answer_only_cross_entropy(logits, labels).item(), 4)
        1.3863
    """
    shift_logits = logits[:, :-1, :].float().flatten(0, 1)  # (B*(L-1), V)
    shift_labels = labels[:, 1:].flatten().to(shift_logits.device)  # (B*(L-1),)
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    if num_tokens is None:
        num_tokens = (shift_labels != IGNORE_INDEX).sum()
    return total / torch.as_tensor(num_tokens, dtype=total.dtype, device=total.device).clamp(min=1.0)
