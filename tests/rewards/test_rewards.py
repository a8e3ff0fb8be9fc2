import json
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit3drft.rewards import (
    QUESTION_TYPES,
    REWARDS,
    DetectionF1,
    GroundingAccuracy,
    RewardConfig,
    SpatialScore,
    TaskMetrics,
    box3d_iou,
    detection_reward,
    extract_answer,
    get_reward,
    grounding_reward,
    match_detections,
    mean_relative_accuracy,
    parse_detections,
    parse_json,
    score_completions,
    spatial_scores,
    transform_boxes,
)

EYE = torch.eye(4).tolist()


def det_answer(items, think=False):
    body = json.dumps([{"label": label, "bbox_3d": box} for label, box in items])
    return ("<think>look</think>" if think else "") + f"<answer>{body}</answer>"


def det_target(items):
    return {"task": "detection", "mode": "da", "boxes": [b for _, b in items], "labels": [lab for lab, _ in items]}


def box(x, y=0.0, z=2.0, s=1.0, yaw=0.0):
    return [x, y, z, s, s, s, yaw, 0.0, 0.0]


# ---------------------------------------------------------------- parsing
def test_parse_json_variants():
    lines = '{"label": "chair", "bbox_3d": [1,2,3,1,1,1,0,0,0]}\n{"label": "bed", "bbox_3d": [1,2,3,1,1,1,0,0,0]},'
    assert [d[0] for d in parse_detections(lines)] == ["chair", "bed"]
    assert parse_json('```\n{"frame": 2,}\n```') == {"frame": 2}
    assert parse_json("__import__('os')") is None
    assert parse_detections('[{"label": "a", "bbox_3d": [1, 2, 3]}]') is None  # not 9 numbers
    assert parse_detections('[{"label": "a", "bbox_3d": [1, 2, 3, 1, 1, 1, 0, 0, NaN]}]') is None


def test_one_answer_extractor_for_completions_and_reference_answers():
    """The reward reads the last ``<answer>`` (any case) and nothing else; reference answers in training rows
    (``untagged=True``) may also be a json fence (VG-LLM's rows) or plain text."""
    two = "<answer>[1]</answer> on second thought <ANSWER> [2] </ANSWER>"
    assert extract_answer(two) == extract_answer(two, untagged=True) == "[2]"
    fenced = '```json\n\t[{"label": "bed"}]\n```'
    assert extract_answer(fenced) is None and extract_answer("3") is None
    assert extract_answer(fenced, untagged=True) == '[{"label": "bed"}]'
    assert extract_answer("```JSON\n[]\n```", untagged=True) == "[]"
    assert extract_answer(" 3 ", untagged=True) == "3" and extract_answer("", untagged=True) == ""
    assert extract_answer("<answer>```json\n[]\n```</answer>", untagged=True) == "```json\n[]\n```"  # tags win


def test_parse_huge_input_is_bounded():
    text = "<answer>" + "[" * 300_000 + "</answer>"
    assert detection_reward([text], [det_target([("a", box(0))])])[0].item() == 0.0


# ---------------------------------------------------------------- matching
def test_greedy_follows_output_order():
    gt = torch.tensor([box(0.0), box(0.7)])
    # the first prediction takes gt 0 (IoU 0.6 > 0.38); the second is left with gt 1 at IoU 0.18 -> FP
    pred = torch.tensor([box(0.25), box(0.0)])
    assert match_detections(pred, ["a", "a"], gt, ["a", "a"]) == (1, 1, 1)
    assert match_detections(pred, ["a", "a"], gt, ["a", "a"], method="hungarian") == (2, 0, 0)


def test_matching_threshold_is_strict_and_label_aware():
    gt = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0, 0, 0]])
    pred = torch.tensor([[0.6, 0, 0, 1, 1, 1, 0, 0, 0]])  # IoU = 0.4 / 1.6 = 0.25 exactly
    assert box3d_iou(pred, gt).item() == pytest.approx(0.25)
    assert match_detections(pred.double(), ["a"], gt.double(), ["a"]) == (0, 1, 1)
    assert match_detections(gt, ["b"], gt, ["a"]) == (0, 1, 1)
    with pytest.raises(ValueError, match="greedy"):
        match_detections(gt, ["a"], gt, ["a"], method="nope")


# ---------------------------------------------------------------- rewards
def test_detection_reward_components():
    target = det_target([("chair", box(0)), ("table", box(3))])
    perfect = det_answer([("chair", box(0)), ("table", box(3))])
    half = det_answer([("chair", box(0)), ("chair", box(6))])
    r, parts = detection_reward([perfect, half, "<answer>[]</answer>"], [target] * 3)
    assert r.tolist() == pytest.approx([2.0, 0.5 + 0.5, 0.0])
    assert parts["detection/f1"][1].item() == pytest.approx(2 / (2 + 1 + 1))
    only_f1, _ = detection_reward([half], [target], iou_weight=0.0)
    assert only_f1.item() == pytest.approx(0.5)


def test_grounding_reward_uses_world_frame():
    # camera 1 is camera 0 moved by +1 in x: the same world box is at x - 1 in camera 1
    cam1 = torch.eye(4)
    cam1[0, 3] = 1.0
    target = {
        "task": "grounding",
        "mode": "da",
        "frame": 0,
        "bbox_3d": box(2.0),
        "cam2global": [EYE, cam1.tolist()],
        "axis_align_matrix": EYE,
    }
    right = "<answer>" + json.dumps({"frame": 1, "bbox_3d": box(1.0)}) + "</answer>"
    wrong_frame = "<answer>" + json.dumps({"frame": 9, "bbox_3d": box(2.0)}) + "</answer>"
    r, parts = grounding_reward([right, wrong_frame], [target] * 2)
    assert parts["grounding/iou"].tolist() == pytest.approx([1.0, 0.0])
    assert parts["grounding/frame"].tolist() == pytest.approx([0.8, 0.0])
    world = transform_boxes(torch.tensor(box(1.0)), cam1)
    assert world[:3].tolist() == pytest.approx([2.0, 0.0, 2.0])


def _official_mra(pred: float, target: float, start: float = 0.5, end: float = 0.95, interval: float = 0.05) -> float:
    """A plain transcription of VSI-Bench's evaluation (thinking-in-space ``vsibench`` utils, lmms-eval's copy)."""
    num_pts = (end - start) / interval + 2
    conf_intervs = np.linspace(start, end, int(num_pts))
    accuracy = (abs(pred - target) / target) <= 1 - conf_intervs
    return float(accuracy.mean())


def test_mra_equals_the_official_code_boundaries_included():
    pairs = [(p, g) for g in (1, 2, 3, 4, 5, 7, 10, 20, 25, 100) for p in range(0, 3 * g + 1)]
    pairs += [(p / 100, g / 100) for g in (10, 37, 50, 125, 333) for p in range(0, 3 * g + 1, 3)]
    pairs += [(p / 10, g / 10) for g in (11, 15, 42) for p in range(0, 3 * g + 1)]
    for pred, target in pairs:
        f64 = torch.float64  # as spatial_scores passes them
        got = mean_relative_accuracy(torch.tensor(pred, dtype=f64), torch.tensor(target, dtype=f64)).item()
        assert got == pytest.approx(_official_mra(pred, target), abs=1e-6), (pred, target)  # one threshold = 0.1
    # the cases that tell the definitions apart: official, the paper's strict form, and a slackened <=
    assert mean_relative_accuracy(torch.tensor(6.0), torch.tensor(5.0)).item() == pytest.approx(0.6)
    assert mean_relative_accuracy(torch.tensor(11.0), torch.tensor(10.0)).item() == pytest.approx(0.9)
    assert mean_relative_accuracy(torch.tensor(11.0), torch.tensor(10.0), strict=True).item() == pytest.approx(0.8)
    strict = spatial_scores(["<answer>11</answer>"], [{"ground_truth": 10.0, "options": None}], numeric="mra_strict")
    assert strict.item() == pytest.approx(0.8)


def test_score_completions_routes_and_masks():
    cfg = RewardConfig(format_weight=0.5)
    targets = [
        det_target([("chair", box(0))]),
        {"task": "spatial", "mode": "ta", "question_type": "object_counting", "ground_truth": 3.0, "options": None},
        {
            "task": "spatial",
            "mode": "da",
            "question_type": "route_planning",
            "ground_truth": "B",
            "options": ["A. x", "B. y"],
        },
    ]
    completions = [det_answer([("chair", box(0))]), "<think>1, 2, 3</think><answer>3</answer>", "<answer>A</answer>"]
    out = score_completions(completions, targets, cfg)
    assert out.total.tolist() == pytest.approx([0.5 + 2.0, 0.5 + 1.0, 0.5 + 0.0])
    assert out.masks["detection/f1"].tolist() == [True, False, False]
    assert out.components["spatial"].tolist() == [0.0, 1.0, 0.0]
    linear = score_completions(
        ["<answer>4</answer>"], [targets[1] | {"mode": "da"}], RewardConfig(spatial_numeric="linear")
    )
    assert linear.components["spatial"].item() == pytest.approx(2 / 3)


def test_unknown_names_raise_with_choices():
    with pytest.raises(ValueError, match="'nope'.*detection"):
        get_reward("nope")
    with pytest.raises(ValueError, match="'captioning'.*grounding"):
        score_completions(["x"], [{"task": "captioning"}], RewardConfig())
    with pytest.raises(ValueError, match=r"matching.*\['greedy', 'hungarian'\]"):
        RewardConfig(matching="best")
    with pytest.raises(ValueError, match="mra"):
        RewardConfig(spatial_numeric="log")


TARGETS = [
    det_target([("chair", box(0)), ("bed", box(2))]),
    {"task": "grounding", "mode": "ta", "frame": 0, "bbox_3d": box(0), "cam2global": [EYE], "axis_align_matrix": EYE},
    {"task": "spatial", "mode": "da", "question_type": "object_abs_distance", "ground_truth": 2.5, "options": None},
    {
        "task": "spatial",
        "mode": "da",
        "question_type": "object_rel_direction_hard",
        "ground_truth": "C",
        "options": ["A. left", "B. right", "C. back"],
    },
]


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300), st.sampled_from(["", "<answer>", "<think>", "</answer>", '{"frame": ', "[{", "```json"]))
def test_garbage_scores_zero_never_raises(text, prefix):
    completions = [prefix + text] * len(TARGETS)
    out = score_completions(completions, TARGETS, RewardConfig())
    assert torch.isfinite(out.total).all()
    for name, fn in REWARDS.items():
        rows = TARGETS if name == "format" else [t for t in TARGETS if t["task"] == name]
        r, _ = fn(completions[: len(rows)], rows)
        assert torch.isfinite(r).all() and (r >= 0).all()
    # without an answer tag nothing can score
    if "<answer>" not in prefix + text:
        assert out.total.tolist() == [0.0] * len(TARGETS)


def test_fuzzed_json_like_answers():
    rng = random.Random(0)
    pieces = [
        '{"label":',
        '"chair"',
        '"bbox_3d":',
        "[1, 2, 3, 1, 1, 1, 0, 0, 0]",
        "}",
        "]",
        "[",
        ",",
        "1e999",
        "null",
        '"frame":',
        "-1",
        "NaN",
        "Infinity",
        "true",
        "\n",
    ]
    for _ in range(300):
        body = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        out = score_completions([f"<answer>{body}</answer>"] * len(TARGETS), TARGETS, RewardConfig())
        assert torch.isfinite(out.total).all()


# ---------------------------------------------------------------- metrics
def random_detection_batch(rng, n):
    labels = ["chair", "table", "bed"]
    completions, targets = [], []
    for _ in range(n):
        gt = [(rng.choice(labels), box(rng.uniform(-2, 2), rng.uniform(-2, 2))) for _ in range(rng.randint(0, 4))]
        pred = [
            (lab, box(b[0] + rng.gauss(0, 0.3), b[1] + rng.gauss(0, 0.3), yaw=rng.gauss(0, 0.3)))
            for lab, b in gt
            if rng.random() < 0.8
        ]
        pred += [(rng.choice(labels), box(rng.uniform(-2, 2))) for _ in range(rng.randint(0, 2))]
        completions.append(det_answer(pred) if rng.random() < 0.9 else "garbage")
        targets.append(det_target(gt))
    return completions, targets


def test_detection_metric_accumulates_like_one_batch():
    rng = random.Random(1)
    completions, targets = random_detection_batch(rng, 40)
    acc, whole = DetectionF1(["chair", "table", "bed"]), DetectionF1(["chair", "table", "bed"])
    for i in range(0, 40, 7):
        acc.update(completions[i : i + 7], targets[i : i + 7])
    whole.update(completions, targets)
    for key, value in whole.compute().items():
        torch.testing.assert_close(acc.compute()[key], value)
    # against a brute-force count over the concatenation
    tp = fp = fn = 0
    for c, t in zip(completions, targets):
        pred = parse_detections(c.removeprefix("<answer>").removesuffix("</answer>")) or []
        for label in ["chair"]:
            p = [b for lab, b in pred if lab == label]
            g = [b for b, lab in zip(t["boxes"], t["labels"]) if lab == label]
            a, b_, c_ = match_detections(
                torch.tensor(p).reshape(-1, 9), [label] * len(p), torch.tensor(g).reshape(-1, 9), [label] * len(g)
            )
            tp, fp, fn = tp + a, fp + b_, fn + c_
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    assert whole.compute()["f1/chair"].item() == pytest.approx(100 * 2 * p * r / max(p + r, 1e-12), abs=1e-4)


def test_grounding_metric_thresholds_inclusive():
    m = GroundingAccuracy()
    target = {
        "task": "grounding",
        "frame": 0,
        "bbox_3d": [0, 0, 0, 1, 1, 1, 0, 0, 0],
        "cam2global": [EYE],
        "axis_align_matrix": EYE,
    }
    exact_quarter = '<answer>{"frame": 0, "bbox_3d": [0.6, 0, 0, 1, 1, 1, 0, 0, 0]}</answer>'  # IoU = 0.25
    m.update([exact_quarter, "junk"], [target, target])
    out = m.compute()
    assert out["acc@0.25"].item() == pytest.approx(50.0)
    assert out["acc@0.5"].item() == 0.0
    assert out["miou"].item() == pytest.approx(12.5)


def test_spatial_overall_averages_direction_levels_first():
    m = SpatialScore()
    targets, completions = [], []
    for qt in QUESTION_TYPES:
        targets.append({"task": "spatial", "question_type": qt, "ground_truth": "A", "options": ["A. a", "B. b"]})
        completions.append("<answer>A</answer>" if qt != "object_rel_direction_hard" else "<answer>B</answer>")
    m.update(completions, targets)
    out = m.compute()
    assert out["object_rel_direction"].item() == pytest.approx(200 / 3)
    assert out["overall"].item() == pytest.approx((7 * 100 + 200 / 3) / 8)


def test_task_metrics_flat_keys_and_accumulation():
    rng = random.Random(2)
    completions, targets = random_detection_batch(rng, 10)
    completions += ["<answer>2.5</answer>", '<answer>{"frame": 0, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}</answer>']
    targets += [TARGETS[2], TARGETS[1]]
    m = TaskMetrics(RewardConfig(), detection_classes=["chair", "table", "bed"])
    m.update(completions[:5], targets[:5])
    m.update(completions[5:], targets[5:])
    out = m.compute()
    for key in [
        "detection/precision",
        "detection/recall",
        "detection/f1",
        "grounding/acc@0.25",
        "grounding/acc@0.5",
        "grounding/miou",
        "spatial/overall",
        "spatial/object_abs_distance",
        "format_rate",
    ]:
        assert key in out and math.isfinite(out[key].item())
    assert out["spatial/object_abs_distance"].item() == 100.0
    assert out["grounding/acc@0.5"].item() == 100.0
    m.reset()
    assert m.compute() == {"format_rate": torch.tensor(0.0)}
