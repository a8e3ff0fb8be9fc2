"""Rewards by name, and ``score_completions``: every completion scored against its own target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lit3drft.rewards.config import RewardConfig
from lit3drft.rewards.detection import detection_reward
from lit3drft.rewards.format import format_reward
from lit3drft.rewards.grounding import grounding_reward
from lit3drft.rewards.spatial import spatial_reward

RewardFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "detection": detection_reward,
    "grounding": grounding_reward,
    "spatial": spatial_reward,
}
"""``fn(completions, targets, **options) -> (reward (N,), {component: (N,)})``, by name."""
TASKS = ("detection", "grounding", "spatial")


def get_reward(name: str) -> RewardFn:
    """The reward function registered under ``name``.

    Example:
        >>> get_reward("spatial")(["<answer>C</answer>"], [{"ground_truth": "C", "options": ["C. x"]}])[0]
        tensor([1.])
    """
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARDS)}")
    return REWARDS[name]


@dataclass
class RewardOutput:
    """Scores of N completions: ``total`` (N,), named ``components`` (N,) and where each applies (``masks``)."""

    total: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)


def score_completions(completions: list[str], targets: list[dict[str, Any]], cfg: RewardConfig) -> RewardOutput:
    """``total = format_weight · format + task_weight · task`` per completion, routed by ``target["task"]``.

    Components are zero outside their mask (e.g. ``detection/f1`` only applies to detection samples). For any
    text ``total`` is finite and in ``[0, format_weight + task_weight · r_max]``, ``r_max`` the task reward's
    maximum (detection ``detection_iou_weight + detection_f1_weight``, grounding ``grounding_frame_weight +
    grounding_iou_weight``, spatial 1); format is 0 or 1.

    Example:
        >>> out = score_completions(
        ...     ["<answer>4</answer>", "nonsense"],
        ...     [{"task": "spatial", "mode": "da", "ground_truth": 4.0, "question_type": "object_counting"}] * 2,
        ...     RewardConfig(),
        ... )
        >>> out.total, out.masks["spatial"]
        (tensor([2., 0.]), tensor([True, True]))
    """
    if len(completions) != len(targets):
        raise ValueError(f"{len(completions)} completions but {len(targets)} targets")
    n = len(completions)
    tasks = [t.get("task") for t in targets]
    for task in set(tasks):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    fmt, parts = format_reward(completions, targets)
    components = {"format": fmt}
    masks = {"format": torch.ones(n, dtype=torch.bool)}
    task_score = torch.zeros(n)
    for task in TASKS:
        rows = [i for i, t in enumerate(tasks) if t == task]
        if not rows:
            continue
        score, named = get_reward(task)([completions[i] for i in rows], [targets[i] for i in rows], **cfg.options(task))
        task_score[rows] = score.float()
        mask = torch.zeros(n, dtype=torch.bool)
        mask[rows] = True
        for name, value in named.items():
            full = torch.zeros(n)
            full[rows] = value.float()
            components[name], masks[name] = full, mask
    total = cfg.format_weight * fmt + cfg.task_weight * task_score
    total = torch.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0)
    components["task"] = task_score
    masks["task"] = torch.ones(n, dtype=torch.bool)
    return RewardOutput(total=total, components=components, masks=masks)
