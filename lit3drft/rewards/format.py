"""Format reward: the tags are there and the answer parses for the task; the format-rate metric."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lit3drft.rewards.parsing import (
    extract_answer,
    has_format,
    parse_detections,
    parse_grounding,
    parse_number,
    parse_option,
)
from lit3drft.rewards.spatial import is_multiple_choice


def answer_parses(answer: str | None, target: dict[str, Any]) -> bool:
    """Whether an answer has the task's shape (detections, frame + box, option letter or number).

    Example:
        >>> answer_parses("3.5", {"task": "spatial", "ground_truth": 3.0})
        True
        >>> answer_parses("[]x", {"task": "detection"})
        False
    """
    task = target.get("task")
    if answer is None:
        return False
    if task == "detection":
        return parse_detections(answer) is not None
    if task == "grounding":
        return parse_grounding(answer) is not None
    if task == "spatial":
        if is_multiple_choice(target):
            return parse_option(answer, target.get("options")) is not None
        return parse_number(answer) is not None
    return False


def format_scores(completions: list[str], targets: list[dict[str, Any]]) -> Tensor:
    """1 where tags are present (``<think>`` required in ``ta`` mode only) and the answer parses, else 0.

    Example:
        >>> format_scores(["<think>hm</think><answer>2</answer>", "<answer>2</answer>"],
        ...               [{"task": "spatial", "mode": "ta", "ground_truth": 2.0}] * 2)
        tensor([1., 0.])
    """
    out = torch.zeros(len(completions))
    for i, (text, target) in enumerate(zip(completions, targets)):
        ok = has_format(text, require_think=target.get("mode", "da") == "ta")
        out[i] = float(ok and answer_parses(extract_answer(text), target))
    return out


def format_reward(completions: list[str], targets: list[dict[str, Any]], **_: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """Format reward ``(score (N,), {"format": score})``.

    Example:
        >>> format_reward(["<answer>B</answer>"], [{"task": "spatial", "mode": "da", "ground_truth": "B"}])[0]
        tensor([1.])
    """
    score = format_scores(completions, targets)
    return score, {"format": score}


class FormatRate(Metric):
    """Share of completions with a valid format (×100).

    Example:
        >>> m = FormatRate()
        >>> m.update(["<answer>B</answer>", "B"], [{"task": "spatial", "ground_truth": "B"}] * 2)
        >>> m.compute()
        tensor(50.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("ok", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: list[str], targets: list[dict[str, Any]]) -> None:
        self.ok += format_scores(completions, targets).double().sum()
        self.count += len(completions)

    def compute(self) -> Tensor:
        return (100 * self.ok / self.count.clamp_min(1)).float()
