"""3D video detection: reward (mean IoU + F1@0.25) and VG-LLM's P/R/F1 metric, from the same code."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from lit3drft.rewards.boxes import box3d_iou
from lit3drft.rewards.matching import match_iou_matrix
from lit3drft.rewards.parsing import extract_answer, parse_detections


def _parse_all(completions: list[str]) -> list[list[tuple[str, list[float]]] | None]:
    return [parse_detections(extract_answer(text)) for text in completions]


def _iou_blocks(preds: list, targets: list[dict[str, Any]]) -> list[Tensor | None]:
    """One ``(n_pred, n_gt)`` IoU matrix per sample, all same-label pairs in a single batched ``box3d_iou`` call.

    Pairs of different labels are never matched or averaged, so they are left at 0 without computing them.
    """
    pa, pb, spans = [], [], []
    for pred, target in zip(preds, targets):
        gt = target.get("boxes") or []
        if pred is None or not pred or not gt:
            spans.append(None)
            continue
        gt_labels = [str(x).strip().lower() for x in target.get("labels") or []]
        pairs = [(i, j) for i, (label, _) in enumerate(pred) for j, g in enumerate(gt_labels[: len(gt)]) if g == label]
        spans.append((len(pa), len(pred), len(gt), pairs))
        pa += [pred[i][1] for i, _ in pairs]
        pb += [list(gt[j]) for _, j in pairs]
    flat = box3d_iou(
        torch.tensor(pa, dtype=torch.float64).reshape(-1, 9),
        torch.tensor(pb, dtype=torch.float64).reshape(-1, 9),
        paired=True,
    )
    blocks: list[Tensor | None] = []
    for span in spans:
        if span is None:
            blocks.append(None)
            continue
        start, n, m, pairs = span
        block = torch.zeros(n, m, dtype=flat.dtype)
        if pairs:
            rows, cols = torch.tensor(pairs).T
            block[rows, cols] = flat[start : start + len(pairs)]
        blocks.append(block)
    return blocks


def detection_counts(
    completions: list[str],
    targets: list[dict[str, Any]],
    iou_threshold: float = 0.25,
    matching: Literal["greedy", "hungarian"] = "greedy",
) -> list[dict[str, Any]]:
    """Per sample: parsed predictions, TP/FP/FN per label and the mean best IoU (the shared update step).

    Example:
        >>> t = [{"boxes": [[0, 0, 1, 1, 1, 1, 0, 0, 0]], "labels": ["bed"]}]
        >>> c = detection_counts(['<answer>[{"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]</answer>'], t)
        >>> c[0]["per_label"], round(c[0]["mean_iou"], 4)
        ({'bed': (1, 0, 0)}, 1.0)
    """
    preds = _parse_all(completions)
    out = []
    for pred, target, iou in zip(preds, targets, _iou_blocks(preds, targets)):
        gt_labels = [str(x).strip().lower() for x in target.get("labels") or []]
        pred_labels = [label for label, _ in pred] if pred else []
        per_label: dict[str, tuple[int, int, int]] = {}
        mean_iou = 0.0
        for label in set(pred_labels) | set(gt_labels):
            pi = [i for i, x in enumerate(pred_labels) if x == label]
            gi = [j for j, x in enumerate(gt_labels) if x == label]
            sub = iou[pi][:, gi] if iou is not None and pi and gi else torch.zeros(len(pi), len(gi))
            per_label[label] = match_iou_matrix(sub, [label] * len(pi), [label] * len(gi), iou_threshold, matching)
        if iou is not None:
            same = torch.tensor([[p == g for g in gt_labels] for p in pred_labels])
            mean_iou = float(torch.where(same, iou, torch.zeros_like(iou)).amax(1).mean())
        out.append({"parsed": pred is not None, "per_label": per_label, "mean_iou": mean_iou, "empty": not gt_labels})
    return out


def detection_reward(
    completions: list[str],
    targets: list[dict[str, Any]],
    iou_weight: float = 1.0,
    f1_weight: float = 1.0,
    iou_threshold: float = 0.25,
    matching: Literal["greedy", "hungarian"] = "greedy",
    **_: Any,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Detection reward ``iou_weight · mean IoU + f1_weight · F1`` per completion.

    Mean IoU: each predicted box against its best same-label ground-truth box, averaged over predictions.
    F1 = 2TP / (2TP + FP + FN) with ``matching`` at ``iou_threshold`` (VG-LLM: greedy, IoU > 0.25). An empty
    prediction for an empty scene scores 1 on both; unparseable answers score 0. So the reward is finite and in
    ``[0, iou_weight + f1_weight]`` for any text.

    Example:
        >>> t = [{"boxes": [[0, 0, 1, 1, 1, 1, 0, 0, 0]], "labels": ["bed"]}]
        >>> good = '<answer>[{"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]</answer>'
        >>> r, parts = detection_reward([good, "garbage"], t * 2)
        >>> r, parts["detection/f1"]
        (tensor([2., 0.]), tensor([1., 0.]))
    """
    iou_part, f1_part = torch.zeros(len(completions)), torch.zeros(len(completions))
    for i, c in enumerate(detection_counts(completions, targets, iou_threshold, matching)):
        if not c["parsed"]:
            continue
        tp, fp, fn = (sum(x[k] for x in c["per_label"].values()) for k in range(3))
        if tp + fp + fn == 0:  # nothing predicted, nothing there
            iou_part[i], f1_part[i] = 1.0, 1.0
            continue
        iou_part[i] = c["mean_iou"]
        f1_part[i] = 2 * tp / (2 * tp + fp + fn)
    total = iou_weight * iou_part + f1_weight * f1_part
    return total, {"detection": total, "detection/iou": iou_part, "detection/f1": f1_part}


class DetectionF1(Metric):
    """VG-LLM's detection metric: TP/FP/FN per category summed over the split, then P/R/F1 per category
    averaged over ``classes``. ``compute`` returns ``precision``, ``recall``, ``f1`` (×100) and per class
    ``f1/<class>``.

    Example:
        >>> m = DetectionF1(["bed", "chair"])
        >>> t = [{"boxes": [[0, 0, 1, 1, 1, 1, 0, 0, 0]], "labels": ["bed"]}]
        >>> m.update(['<answer>[{"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]</answer>'], t)
        >>> m.compute()["f1"]  # bed 100, chair 0 (never seen)
        tensor(50.)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        classes: list[str],
        iou_threshold: float = 0.25,
        matching: Literal["greedy", "hungarian"] = "greedy",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not classes:
            raise ValueError("DetectionF1 needs a non-empty class list")
        self.classes = [c.strip().lower() for c in classes]
        self.iou_threshold, self.matching = iou_threshold, matching
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros(len(self.classes), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, completions: list[str], targets: list[dict[str, Any]]) -> None:
        index = {c: k for k, c in enumerate(self.classes)}
        for c in detection_counts(completions, targets, self.iou_threshold, self.matching):
            for label, (tp, fp, fn) in c["per_label"].items():
                if label in index:
                    self.tp[index[label]] += tp
                    self.fp[index[label]] += fp
                    self.fn[index[label]] += fn

    def compute(self) -> dict[str, Tensor]:
        precision = self.tp / (self.tp + self.fp).clamp_min(1)
        recall = self.tp / (self.tp + self.fn).clamp_min(1)
        f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
        out = {"precision": 100 * precision.mean(), "recall": 100 * recall.mean(), "f1": 100 * f1.mean()}
        out.update({f"f1/{c}": 100 * f1[k] for k, c in enumerate(self.classes)})
        return {k: v.float() for k, v in out.items()}
