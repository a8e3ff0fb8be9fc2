"""Dense perception losses and the class-agnostic detection probe against plain re-computations."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lit3drft.algorithms.dense import BOX_SCALE, DenseHead, box2d_probe, dense_losses, detection_probe


def test_dense_losses_equal_their_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    t, c = 12, 5
    logits, depth_p, box_p = torch.randn(t, c, generator=g), torch.randn(t, generator=g), torch.randn(t, 6, generator=g)
    mix = torch.rand(t, c, generator=g)
    mix /= mix.sum(1, keepdim=True)
    depth, box = torch.randn(t, generator=g), torch.randn(t, 6, generator=g)
    has = torch.tensor([True, False] * 6)
    out = dense_losses((logits, depth_p, box_p), mix, depth, box, has)
    ce = sum(-sum(mix[i, k] * math.log(math.exp(logits[i, k]) / sum(math.exp(x) for x in logits[i])) for k in range(c))
             for i in range(t)) / t  # fmt: skip
    assert out["cls"].item() == pytest.approx(float(ce), rel=1e-5)
    assert out["depth"].item() == pytest.approx(sum(abs(depth_p[i] - depth[i]) for i in range(t)).item() / t, rel=1e-5)
    rows = [i for i in range(t) if has[i]]
    l1 = sum(abs((box_p[i, j] - box[i, j]) / BOX_SCALE[j]) for i in rows for j in range(6)) / (6 * len(rows))
    assert out["box"].item() == pytest.approx(l1.item(), rel=1e-5)
    acc = sum(int(logits[i].argmax() == mix[i].argmax()) for i in rows) / len(rows)
    assert out["cls_acc"].item() == pytest.approx(acc)


def test_no_object_cell_gives_a_zero_box_loss_that_still_backpropagates() -> None:
    head = DenseHead(8, 3)
    pred = head(torch.randn(4, 8))
    out = dense_losses(pred, torch.full((4, 3), 1 / 3), torch.zeros(4), torch.zeros(4, 6), torch.zeros(4, dtype=bool))
    assert out["box"].item() == 0.0 and math.isnan(out["cls_acc"].item())
    sum(v for k, v in out.items() if k != "cls_acc").backward()
    assert head.proj.weight.grad is not None


def _answer(items) -> str:
    return "<answer>" + json.dumps([{"label": lab, "bbox_3d": b} for lab, b in items]) + "</answer>"


def _iou_aabb(a, b) -> float:
    inter = 1.0
    for k in range(3):
        lo = max(a[k] - a[k + 3] / 2, b[k] - b[k + 3] / 2)
        hi = min(a[k] + a[k + 3] / 2, b[k] + b[k + 3] / 2)
        inter *= max(0.0, hi - lo)
    return inter / (math.prod(a[3:6]) + math.prod(b[3:6]) - inter)


def test_detection_probe_equals_a_brute_force_on_axis_aligned_boxes() -> None:
    g = torch.Generator().manual_seed(1)
    labels = ["chair", "table", "bed"]
    completions, targets, want_iou, hits, errs = [], [], [], [], []
    for _ in range(6):
        gt = [[*(torch.rand(3, generator=g) * 3).tolist(), *(0.3 + torch.rand(3, generator=g)).tolist(), 0, 0, 0]
              for _ in range(3)]  # fmt: skip
        gt_labels = [labels[int(torch.randint(3, (1,), generator=g))] for _ in gt]
        pred = [[x + 0.2 * float(torch.randn(1, generator=g)) for x in b[:6]] + [0, 0, 0] for b in gt[:2]]
        pred_labels = [labels[int(torch.randint(3, (1,), generator=g))] for _ in pred]
        completions.append(_answer(zip(pred_labels, pred)))
        targets.append({"boxes": gt, "labels": gt_labels})
        want_iou.append(sum(max(_iou_aabb(p, q) for q in gt) for p in pred) / len(pred))
        for p, lab in zip(pred, pred_labels):
            d = [math.dist(p[:3], q[:3]) for q in gt]
            errs.append(min(d))
            hits.append(lab == gt_labels[d.index(min(d))])
    completions.append("not an answer")
    targets.append(targets[0])
    got = detection_probe(completions, targets)
    assert got["miou"] == pytest.approx(sum(want_iou) / 7, abs=1e-6)
    assert got["label_acc"] == pytest.approx(sum(hits) / len(hits))
    assert got["centre_err"] == pytest.approx(sum(errs) / len(errs), abs=1e-6)
    assert got["parsed"] == pytest.approx(6 / 7)


BED = [[0, 0, 2, 1, 1, 1, 0, 0, 0]]


@pytest.mark.parametrize(("text", "gt", "want"), [(_answer([]), [], 1.0), (_answer([]), BED, 0.0),
                                                  ("junk", [], 0.0), ("junk", BED, 0.0)])  # fmt: skip
def test_detection_probe_empty_cases(text, gt, want) -> None:
    """An empty answer for an empty clip is right; an unparseable one is always wrong."""
    assert detection_probe([text], [{"boxes": gt, "labels": ["bed"] * len(gt)}])["miou"] == want


def _iou_2d(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_box2d_probe_equals_a_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    labels = ["chair", "table", "bed"]
    completions, targets, want, hits = [], [], [], []
    for _ in range(5):
        gt = []
        for _ in range(3):
            x, y = (torch.rand(2, generator=g) * 80).tolist()
            gt.append([int(x), int(y), int(x) + 5 + int(torch.randint(30, (1,), generator=g)), int(y) + 20])
        gt_labels = [labels[int(torch.randint(3, (1,), generator=g))] for _ in gt]
        pred = [[v + int(torch.randint(-4, 5, (1,), generator=g)) for v in b] for b in gt[:2]]
        pred_labels = [labels[int(torch.randint(3, (1,), generator=g))] for _ in pred]
        body = ", ".join(f'{{"label": "{lab}", "bbox_2d": {b}}}' for lab, b in zip(pred_labels, pred))
        completions.append(f"<answer>[{body}]</answer>")
        targets.append({"boxes2d": gt, "labels": gt_labels})
        want.append(sum(max(_iou_2d(p, q) for q in gt) for p in pred) / len(pred))
        for p, lab in zip(pred, pred_labels):
            ious = [_iou_2d(p, q) for q in gt]
            hits.append(lab == gt_labels[ious.index(max(ious))])
    completions.append('<answer>[{"label": "bed", "bbox_2d": [1, 2, 3]}]</answer>')  # 3 numbers: unparsed
    targets.append(targets[0])
    got = box2d_probe(completions, targets)
    assert got["miou"] == pytest.approx(sum(want) / 6, abs=1e-6)
    assert got["label_acc"] == pytest.approx(sum(hits) / len(hits))
    assert got["parsed"] == pytest.approx(5 / 6)
