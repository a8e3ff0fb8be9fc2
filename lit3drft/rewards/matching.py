"""Matching predicted boxes to ground truth: VG-LLM's greedy rule, or Hungarian."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from lit3drft.rewards.boxes import box3d_iou

MATCHING_METHODS = ("greedy", "hungarian")


def match_iou_matrix(
    iou: Tensor,
    pred_labels: list[str],
    gt_labels: list[str],
    iou_threshold: float = 0.25,
    method: Literal["greedy", "hungarian"] = "greedy",
) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` from a precomputed ``(n_pred, n_gt)`` IoU matrix (see ``match_detections``).

    Example:
        >>> match_iou_matrix(torch.tensor([[0.9, 0.1], [0.8, 0.0]]), ["a", "a"], ["a", "a"])
        (1, 1, 1)
    """
    if method not in MATCHING_METHODS:
        raise ValueError(f"unknown matching method {method!r}; choose one of {MATCHING_METHODS}")
    n_pred, n_gt = len(pred_labels), len(gt_labels)
    if n_pred == 0 or n_gt == 0:
        return 0, n_pred, n_gt
    same = torch.tensor([[p == g for g in gt_labels] for p in pred_labels])
    iou = torch.where(same, iou.double().cpu(), torch.full((n_pred, n_gt), -1.0, dtype=torch.float64))
    tp = 0
    if method == "greedy":
        # VG-LLM: predictions in output order take the unused same-label box of highest IoU; TP when > threshold
        used = torch.zeros(n_gt, dtype=torch.bool)
        for i in range(n_pred):
            row = iou[i].masked_fill(used, -1.0)
            best = int(row.argmax())
            if row[best] > iou_threshold:
                used[best] = True
                tp += 1
    else:
        rows, cols = linear_sum_assignment(iou.numpy(), maximize=True)
        tp = int(np.sum(iou.numpy()[rows, cols] > iou_threshold))
    return tp, n_pred - tp, n_gt - tp


def match_detections(
    pred_boxes: Tensor,
    pred_labels: list[str],
    gt_boxes: Tensor,
    gt_labels: list[str],
    iou_threshold: float = 0.25,
    method: Literal["greedy", "hungarian"] = "greedy",
) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of one sample's detections.

    ``greedy`` is VG-LLM's rule: predictions, in output order, each take the unused ground-truth box of the
    same label with the highest IoU; a TP when that IoU > ``iou_threshold``. ``hungarian`` maximises the
    total same-label IoU one-to-one, then counts matches above the threshold.

    Args:
        pred_boxes: ``(n_pred, 6|7|9)``. pred_labels: ``n_pred`` names.
        gt_boxes: ``(n_gt, 6|7|9)``. gt_labels: ``n_gt`` names.

    Example:
        >>> gt = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0, 0, 0]])
        >>> pred = torch.tensor([[0.1, 0, 0, 1, 1, 1, 0, 0, 0], [0.0, 0, 0, 1, 1, 1, 0, 0, 0]])
        >>> match_detections(pred, ["chair", "chair"], gt, ["chair"])
        (1, 1, 0)
    """
    if len(pred_labels) == 0 or len(gt_labels) == 0:
        return 0, len(pred_labels), len(gt_labels)
    iou = box3d_iou(torch.as_tensor(pred_boxes), torch.as_tensor(gt_boxes))
    return match_iou_matrix(iou, list(pred_labels), list(gt_labels), iou_threshold, method)
