"""3D visual grounding: frame + world-frame IoU reward and ScanRefer's Acc@0.25 / Acc@0.5 / mean IoU."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lit3drft.rewards.box_geometry import transform_boxes
from lit3drft.rewards.boxes import box3d_iou
from lit3drft.rewards.parsing import extract_answer, parse_grounding


def _to_world(box: list[float], frame: int, target: dict[str, Any]) -> Tensor | None:
    """Camera box of ``frame`` -> world box with ``axis_align @ cam2global[frame]``; None if no such frame."""
    cams = target.get("cam2global") or []
    if not 0 <= frame < len(cams):
        return None
    matrix = torch.as_tensor(cams[frame], dtype=torch.float64)
    if target.get("axis_align_matrix") is not None:
        matrix = torch.as_tensor(target["axis_align_matrix"], dtype=torch.float64) @ matrix
    if matrix.shape != (4, 4) or not torch.isfinite(matrix).all():
        return None
    return transform_boxes(torch.tensor(box, dtype=torch.float64), matrix)


def grounding_scores(completions: list[str], targets: list[dict[str, Any]], frame_tolerance: float = 5.0):
    """Per sample ``(frame_score, iou, parsed)``: ``max(0, 1 - |f - f*| / tol)`` and the world-frame IoU.

    Example:
        >>> eye = torch.eye(4).tolist()
        >>> t = [{"frame": 1, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0], "cam2global": [eye, eye], "axis_align_matrix": eye}]
        >>> grounding_scores(['<answer>{"frame": 0, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}</answer>'], t)
        (tensor([0.8000]), tensor([1.]), tensor([True]))
    """
    n = len(completions)
    frame_score, parsed = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
    pred_w, gt_w, rows = [], [], []
    for i, (text, target) in enumerate(zip(completions, targets)):
        answer = parse_grounding(extract_answer(text))
        if answer is None:
            continue
        parsed[i] = True
        frame, box = answer
        try:
            gt_frame = int(target["frame"])
        except (KeyError, TypeError, ValueError):
            continue
        gap = abs(frame - gt_frame)  # exact int: a frame like 10**400 must not overflow a float division
        frame_score[i] = 0.0 if gap >= frame_tolerance else 1.0 - gap / frame_tolerance
        p, g = _to_world(box, frame, target), _to_world(list(target["bbox_3d"]), gt_frame, target)
        if p is not None and g is not None:
            pred_w.append(p)
            gt_w.append(g)
            rows.append(i)
    iou = torch.zeros(n)
    if rows:
        iou[rows] = box3d_iou(torch.stack(pred_w), torch.stack(gt_w), paired=True).float()
    return frame_score, iou, parsed


def grounding_reward(
    completions: list[str],
    targets: list[dict[str, Any]],
    frame_tolerance: float = 5.0,
    frame_weight: float = 1.0,
    iou_weight: float = 1.0,
    **_: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Grounding reward ``frame_weight · max(0, 1 - |f - f*| / tol) + iou_weight · IoU`` (IoU in world frame).

    Both parts are in [0, 1] (unparseable answers score 0), so the reward is finite and in
    ``[0, frame_weight + iou_weight]`` for any text.

    Example:
        >>> eye = torch.eye(4).tolist()
        >>> t = [{"frame": 0, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0], "cam2global": [eye], "axis_align_matrix": eye}]
        >>> grounding_reward(['<answer>{"frame": 0, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}</answer>'], t)[0]
        tensor([2.])
    """
    frame_score, iou, _ = grounding_scores(completions, targets, frame_tolerance)
    total = frame_weight * frame_score + iou_weight * iou
    return total, {"grounding": total, "grounding/frame": frame_score, "grounding/iou": iou}


class GroundingAccuracy(Metric):
    """ScanRefer metrics: Acc@0.25 and Acc@0.5 (share of samples with IoU >= threshold) and mean IoU, ×100.
    Unparseable answers count as IoU 0.

    Example:
        >>> eye = torch.eye(4).tolist()
        >>> t = [{"frame": 0, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0], "cam2global": [eye], "axis_align_matrix": eye}]
        >>> m = GroundingAccuracy()
        >>> m.update(['<answer>{"frame": 0, "bbox_3d": [0.5, 0, 2, 1, 1, 1, 0, 0, 0]}</answer>', "junk"], t * 2)
        >>> {k: round(v.item(), 2) for k, v in m.compute().items()}
        {'acc@0.25': 50.0, 'acc@0.5': 0.0, 'miou': 16.67}
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("iou_sum", "hits25", "hits50", "count"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: list[str], targets: list[dict[str, Any]]) -> None:
        _, iou, _ = grounding_scores(completions, targets)
        iou = iou.double()
        self.iou_sum += iou.sum()
        self.hits25 += (iou >= 0.25).sum()
        self.hits50 += (iou >= 0.5).sum()
        self.count += len(completions)

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp_min(1)
        return {
            "acc@0.25": (100 * self.hits25 / n).float(),
            "acc@0.5": (100 * self.hits50 / n).float(),
            "miou": (100 * self.iou_sum / n).float(),
        }
