"""Spatial reasoning (VSI-Bench): MRA / linear numeric scores, option letters, reward and metric."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from lit3drft.rewards.parsing import extract_answer, parse_number, parse_option

QUESTION_TYPES = (
    "object_counting",
    "object_abs_distance",
    "object_size_estimation",
    "room_size_estimation",
    "object_rel_distance",
    "object_rel_direction_easy",
    "object_rel_direction_medium",
    "object_rel_direction_hard",
    "route_planning",
    "obj_appearance_order",
)
"""VSI-Bench question types; the three relative-direction levels count as one task in the overall."""
NUMERIC_TYPES = QUESTION_TYPES[:4]
NUMERIC_SCORINGS = ("mra", "mra_strict", "linear")
# VSI-Bench's thresholds exactly as its evaluation builds them (thinking-in-space / lmms-eval ``vsibench``):
# ``np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2))`` = 10 points; their float64 values decide the boundary
# cases (11 vs 10 scores 0.9 there, 6 vs 5 scores 0.6), so they are computed the same way, not as 0.5 + 0.05 k.
_THRESHOLDS = torch.from_numpy(np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2)))


def mean_relative_accuracy(pred: Tensor, target: Tensor, strict: bool = False) -> Tensor:
    """Elementwise VSI-Bench MRA: mean over its 10 thresholds θ of ``1[|pred - target| / |target| <= 1 - θ]``.

    Equal to the official evaluation code for every positive ground truth (VSI-Bench's numeric answers are
    counts, lengths and areas), float64 boundary effects included; it divides by ``target`` itself, which for
    a negative ground truth would score every prediction 1, so the magnitude is used here. ``strict`` is the
    paper's written form: ``<`` against the exact thresholds 0.50, 0.55, ..., 0.95. Non-finite predictions score 0.

    Example:
        >>> mean_relative_accuracy(torch.tensor([10.0, 11.0, 13.0, 6.0]), torch.tensor([10.0, 10.0, 10.0, 5.0]))
        tensor([1.0000, 0.9000, 0.5000, 0.6000])
        >>> mean_relative_accuracy(torch.tensor([11.0, 6.0]), torch.tensor([10.0, 5.0]), strict=True)
        tensor([0.8000, 0.6000])
    """
    pred, target = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    rel = (pred - target).abs() / target.abs()
    rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, math.inf))
    if strict:  # θ_k = (10 + k) / 20 exactly: 20 |pred - target| < (10 - k) |target|, no float thresholds
        k = torch.arange(10, dtype=torch.float64)
        hits = 20 * (pred - target).abs()[..., None] < (10 - k) * target.abs()[..., None]
        hits = hits & torch.isfinite(rel)[..., None]
    else:
        hits = rel[..., None] <= 1 - _THRESHOLDS
    return hits.double().mean(-1).to(torch.get_default_dtype())


def linear_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """The paper's numeric reward ``max(0, 1 - |pred - target| / |target|)``, elementwise.

    Example:
        >>> linear_accuracy(torch.tensor([10.0, 12.0, 40.0]), torch.tensor([10.0, 10.0, 10.0]))
        tensor([1.0000, 0.8000, 0.0000])
    """
    pred, target = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    score = (1 - (pred - target).abs() / target.abs()).clamp_min(0)
    return torch.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0).to(torch.get_default_dtype())


def is_multiple_choice(target: dict[str, Any]) -> bool:
    """Whether a spatial target is scored by option letter: it has options, or its ground truth is ``A``-``D``.

    The one check behind both the spatial score and the format reward's "the answer parses".

    Example:
        >>> is_multiple_choice({"ground_truth": " b ", "options": None}), is_multiple_choice({"ground_truth": 3.0})
        (True, False)
    """
    if target.get("options"):
        return True
    gt = target.get("ground_truth")
    return isinstance(gt, str) and gt.strip().upper() in ("A", "B", "C", "D")


def spatial_scores(
    completions: list[str], targets: list[dict[str, Any]], numeric: Literal["mra", "mra_strict", "linear"] = "mra"
) -> Tensor:
    """Per-sample score in [0, 1]: option-letter match, or MRA / linear accuracy of the number.

    Example:
        >>> t = [{"task": "spatial", "ground_truth": "B", "options": ["A. x", "B. y"]},
        ...      {"task": "spatial", "ground_truth": 4.0, "options": None}]
        >>> spatial_scores(["<answer>B</answer>", "<answer>5</answer>"], t)
        tensor([1.0000, 0.6000])
    """
    if numeric not in NUMERIC_SCORINGS:
        raise ValueError(f"unknown numeric scoring {numeric!r}; choose one of {NUMERIC_SCORINGS}")
    scores = torch.zeros(len(completions))
    score_fn = {"mra": mean_relative_accuracy, "linear": linear_accuracy,
                "mra_strict": lambda p, t: mean_relative_accuracy(p, t, strict=True)}[numeric]  # fmt: skip
    for i, (text, target) in enumerate(zip(completions, targets)):
        answer = extract_answer(text)
        if answer is None:
            continue
        if is_multiple_choice(target):
            letter = parse_option(answer, target.get("options"))
            scores[i] = float(letter is not None and letter == str(target.get("ground_truth", "")).strip().upper())
        else:
            value = parse_number(answer)
            try:
                gt = float(target.get("ground_truth"))
            except (TypeError, ValueError):
                continue
            if value is not None and math.isfinite(gt) and gt != 0:
                # float64: in float32 a finite 1e39 would become inf and a ground truth of 1e-50 zero
                t64 = torch.float64
                scores[i] = float(score_fn(torch.tensor(value, dtype=t64), torch.tensor(gt, dtype=t64)))
    return scores


def spatial_reward(
    completions: list[str],
    targets: list[dict[str, Any]],
    numeric: Literal["mra", "mra_strict", "linear"] = "mra",
    **_: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Spatial-reasoning reward: ``(score (N,), {"spatial": score})``.

    Example:
        >>> r, parts = spatial_reward(["<answer>A</answer>"], [{"ground_truth": "A", "options": ["A. a"]}])
        >>> r
        tensor([1.])
    """
    score = spatial_scores(completions, targets, numeric)
    return score, {"spatial": score}


class SpatialScore(Metric):
    """VSI-Bench scores ×100 per question type and overall (mean of 8 tasks; relative direction first
    averages its three levels). Numerical types use MRA (the benchmark's metric), whatever the reward uses.

    Example:
        >>> m = SpatialScore()
        >>> m.update(["<answer>A</answer>"], [{"question_type": "route_planning", "ground_truth": "A",
        ...                                      "options": ["A. go", "B. stop"]}])
        >>> m.compute()["overall"]
        tensor(100.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", torch.zeros(len(QUESTION_TYPES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(len(QUESTION_TYPES), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: list[str], targets: list[dict[str, Any]]) -> None:
        scores = spatial_scores(completions, targets, "mra")
        for score, target in zip(scores.tolist(), targets):
            qt = target.get("question_type")
            if qt not in QUESTION_TYPES:
                raise ValueError(f"unknown question_type {qt!r}; choose one of {QUESTION_TYPES}")
            k = QUESTION_TYPES.index(qt)
            self.score_sum[k] += score
            self.count[k] += 1

    def compute(self) -> dict[str, Tensor]:
        per_type = 100 * self.score_sum / self.count.clamp_min(1)
        out = {qt: per_type[k].float() for k, qt in enumerate(QUESTION_TYPES) if self.count[k] > 0}
        direction = [out[q] for q in QUESTION_TYPES[5:8] if q in out]
        if direction:
            out["object_rel_direction"] = torch.stack(direction).mean()
        tasks = [q for q in QUESTION_TYPES[:5] + ("object_rel_direction",) + QUESTION_TYPES[8:] if q in out]
        out["overall"] = torch.stack([out[q] for q in tasks]).mean() if tasks else torch.tensor(0.0)
        return out
