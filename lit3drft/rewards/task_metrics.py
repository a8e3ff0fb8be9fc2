"""``TaskMetrics``: one object that routes each sample to its benchmark metric and returns flat keys."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lit3drft.rewards.config import RewardConfig
from lit3drft.rewards.detection import DetectionF1
from lit3drft.rewards.format import FormatRate
from lit3drft.rewards.grounding import GroundingAccuracy
from lit3drft.rewards.registry import TASKS
from lit3drft.rewards.spatial import SpatialScore


class TaskMetrics(nn.Module):
    """Benchmark metrics of mixed-task batches, same parsing and IoU code as the rewards.

    ``compute()`` returns ``detection/{precision,recall,f1}``, ``detection/f1/<class>``,
    ``grounding/{acc@0.25,acc@0.5,miou}``, ``spatial/overall``, ``spatial/<question_type>`` and
    ``format_rate`` (all ×100, in [0, 100] whatever the completions), for the tasks seen since the last ``reset``. Each part is a torchmetrics
    ``Metric`` (sum-reduced state), so it syncs across processes.

    Example:
        >>> m = TaskMetrics(RewardConfig(), detection_classes=["bed"])
        >>> m.update(["<answer>A</answer>"], [{"task": "spatial", "question_type": "route_planning",
        ...                                      "ground_truth": "A", "options": ["A. x", "B. y"]}])
        >>> {k: v.item() for k, v in m.compute().items() if "route" in k or k == "format_rate"}
        {'spatial/route_planning': 100.0, 'format_rate': 100.0}
    """

    def __init__(self, cfg: RewardConfig | None = None, detection_classes: list[str] | None = None) -> None:
        super().__init__()
        cfg = cfg or RewardConfig()
        self.detection = DetectionF1(detection_classes or ["object"], cfg.detection_iou_threshold, cfg.matching)
        self.grounding = GroundingAccuracy()
        self.spatial = SpatialScore()
        self.format_rate = FormatRate()
        self.seen: set[str] = set()

    def update(self, completions: list[str], targets: list[dict[str, Any]]) -> None:
        by_task: dict[str, list[int]] = {}
        for i, t in enumerate(targets):
            if t.get("task") not in TASKS:
                raise ValueError(f"unknown task {t.get('task')!r}; choose one of {list(TASKS)}")
            by_task.setdefault(t["task"], []).append(i)
        for task, rows in by_task.items():
            getattr(self, task).update([completions[i] for i in rows], [targets[i] for i in rows])
            self.seen.add(task)
        if completions:
            self.format_rate.update(completions, targets)

    def compute(self) -> dict[str, Tensor]:
        """Metrics of the tasks seen on *any* process (every rank then syncs the same Metrics, no deadlock)."""
        seen = self.seen_anywhere()
        out: dict[str, Tensor] = {}
        for task in TASKS:
            if task in seen:
                out.update({f"{task}/{k}": v for k, v in getattr(self, task).compute().items()})
        out["format_rate"] = self.format_rate.compute() if seen else torch.tensor(0.0)
        return out

    def seen_anywhere(self) -> set[str]:
        """``seen`` united over the processes of a running ``torch.distributed`` group (DDP ranks)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return set(self.seen)
        flags = torch.tensor([task in self.seen for task in TASKS], dtype=torch.int32, device=self.format_rate.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return {task for task, flag in zip(TASKS, flags.tolist()) if flag}

    def reset(self) -> None:
        for metric in (self.detection, self.grounding, self.spatial, self.format_rate):
            metric.reset()
        self.seen.clear()
