"""Untrusted model output: every parser, reward and metric takes any text without an exception, returns finite
scores inside the documented ranges, and stays fast on huge or adversarial input (issue 9, part 4)."""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lit3drft.rewards as R
from lit3drft.rewards import (
    REWARDS,
    DetectionF1,
    FormatRate,
    GroundingAccuracy,
    RewardConfig,
    SpatialScore,
    TaskMetrics,
    answer_parses,
    extract_answer,
    extract_think,
    has_format,
    parse_answer,
    parse_detections,
    parse_grounding,
    parse_json,
    parse_number,
    parse_option,
    score_completions,
)
from lit3drft.rewards.parsing import MAX_DETECTIONS

EYE = torch.eye(4).tolist()
BOX = [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
TARGETS = [
    {"task": "detection", "mode": "da", "boxes": [BOX, [1.0, 0, 2, 1, 1, 1, 0.3, 0, 0]], "labels": ["chair", "bed"]},
    {"task": "detection", "mode": "ta", "boxes": [], "labels": []},
    {"task": "grounding", "mode": "da", "frame": 1, "bbox_3d": BOX, "cam2global": [EYE, EYE], "axis_align_matrix": EYE},
    {"task": "spatial", "mode": "da", "question_type": "object_abs_distance", "ground_truth": 2.5, "options": None},
    {"task": "spatial", "mode": "ta", "question_type": "object_counting", "ground_truth": 3.0, "options": None},
    {"task": "spatial", "mode": "da", "question_type": "route_planning", "ground_truth": "B",
     "options": ["A. Turn Left", "B. Turn Right", "C. Turn Back"]},
]  # fmt: skip
WEIGHTS = RewardConfig(detection_iou_weight=0.7, detection_f1_weight=1.3, grounding_frame_weight=0.5, task_weight=2.0)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------- strategies

WEIRD_NUMBERS = ["1e308", "-1e308", "1e999", "-1e999", "inf", "-inf", "nan", "NaN", "Infinity", "-Infinity", "1e-320",
                 "-0", "0", "1" * 400, "1" * 5000, "１２", "٣", "1.5e", "--1", "0x10", "1_000", "+7", ".5", "5."]  # fmt: skip
UNICODE = ["\u202e", "\u200f", "\u0301", "\u0336", "\ufeff", "\u2028", "\x00", "\udc80", "\ud800", "ǅ", "İ", "ﬀ",
           "\U0001f600", "３", "𝟘", "<ａｎｓｗｅｒ>", "<ANSWER>", "</Answer>"]  # fmt: skip
TAGS = ["<answer>", "</answer>", "<think>", "</think>", "```json", "```", "\n", "<answer", "answer>"]

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)  # lone surrogates included
bytes_text = st.tuples(st.binary(max_size=300), st.sampled_from(["surrogateescape", "replace", "ignore"])).map(
    lambda bt: bt[0].decode("utf-8", bt[1])
)
tokens = st.lists(st.sampled_from(WEIRD_NUMBERS + UNICODE + TAGS + ["[", "]", "{", "}", ",", ":", '"', "null"]))
token_text = tokens.map("".join)
nesting = st.tuples(st.integers(1, 3000), st.sampled_from(["[", "{", '{"a":', '[{"label": "a", "bbox_3d": '])).map(
    lambda nk: nk[1] * nk[0]
)

# numbers inside boxes: as JSON text, so NaN / Infinity / 1e999 / huge integers reach the parser
num_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: json.dumps(x)),
    st.sampled_from(
        [
            "1e308",
            "-1e308",
            "1e999",
            "NaN",
            "Infinity",
            "-Infinity",
            "1" * 400,
            "0",
            "-1",
            "1e-320",
            "true",
            "null",
            '"1"',
            "[]",
        ]
    ),  # fmt: skip
    st.integers(-(10**30), 10**30).map(str),
)
box_text = st.one_of(
    st.lists(num_text, min_size=9, max_size=9),  # right length, any values
    st.lists(num_text, max_size=14),  # wrong length
    st.lists(st.floats(-1e3, 1e3), min_size=9, max_size=9).map(lambda b: [json.dumps(x) for x in b]),  # valid
    st.tuples(st.floats(-1e308, 1e308), st.sampled_from([0.0, -1.0, 1e-300, 1e300, 1e308])).map(  # bad sizes
        lambda cs: [json.dumps(v) for v in (cs[0], 0, 1, cs[1], 1, cs[1], 0, 0, 0)]
    ),
).map(lambda b: "[" + ", ".join(b) + "]")
label = st.one_of(st.sampled_from(["chair", "bed", " Chair ", "", "椅子"]), any_text, st.integers().map(str))
det_item = st.tuples(label, box_text).map(lambda lb: f'{{"label": {json.dumps(lb[0])}, "bbox_3d": {lb[1]}}}')
det_body = st.one_of(
    st.lists(det_item, max_size=6).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.lists(det_item, min_size=2, max_size=6).map("\n".join),  # one object per line
    det_item,
)
frame_text = st.one_of(num_text, st.sampled_from(["0", "1", "2", "-1", "1.0", "1.5", "1" * 400, '"1"', "true"]))
ground_body = st.tuples(frame_text, box_text).map(lambda fb: f'{{"frame": {fb[0]}, "bbox_3d": {fb[1]}}}')
spatial_body = st.one_of(
    st.sampled_from(["B", "(B)", "b.", "Turn Right", "B. Turn Right", "2.5", "3", "about 2.5 m", "E"]),
    st.sampled_from(WEIRD_NUMBERS),
    token_text,
)


@st.composite
def tagged(draw, body):
    """A body wrapped in nearly-right tags: missing, doubled, mis-cased or unclosed tags, fences, junk around."""
    text = draw(body)
    if draw(st.booleans()):
        text = f"```json\n{text}\n```"
    pre = draw(st.sampled_from(["", "<think>hm</think>", "<think>", "</think><think>x</think>", "junk "]))
    opener, closer = draw(st.sampled_from([("<answer>", "</answer>"), ("<ANSWER>", "</Answer>"), ("<answer>", ""),
                                           ("", "</answer>"), ("<answer><answer>", "</answer></answer>")]))  # fmt: skip
    return pre + opener + text + closer + draw(st.sampled_from(["", "\n", "<answer>1</answer>", "</think>"]))


completion = st.one_of(
    any_text,
    bytes_text,
    token_text,
    nesting,
    tagged(det_body),
    tagged(ground_body),
    tagged(spatial_body),
    tagged(any_text),
    tagged(nesting),
)

# ------------------------------------------------------------------------------------------------- checks


def task_max(target: dict, cfg: RewardConfig) -> float:
    return {
        "detection": cfg.detection_iou_weight + cfg.detection_f1_weight,
        "grounding": cfg.grounding_frame_weight + cfg.grounding_iou_weight,
        "spatial": 1.0,
    }[target["task"]]


def check_scores(completions: list[str], targets: list[dict], cfg: RewardConfig) -> None:
    out = score_completions(completions, targets, cfg)
    highs = torch.tensor([cfg.format_weight + cfg.task_weight * task_max(t, cfg) for t in targets])
    assert torch.isfinite(out.total).all() and (out.total >= 0).all() and (out.total <= highs + 1e-5).all()
    for name, value in out.components.items():
        assert torch.isfinite(value).all() and (value >= 0).all(), name
    assert set(out.components["format"].tolist()) <= {0.0, 1.0}
    for name, fn in REWARDS.items():
        rows = [i for i, t in enumerate(targets) if name == "format" or t["task"] == name]
        r, parts = fn([completions[i] for i in rows], [targets[i] for i in rows], **cfg.options(name))
        high = 1.0 if name == "format" else task_max({"task": name}, cfg)
        assert r.shape == (len(rows),) and torch.isfinite(r).all(), name
        assert (r >= 0).all() and (r <= high + 1e-5).all(), (name, r)
        for key, part in parts.items():
            assert torch.isfinite(part).all() and (part >= 0).all() and (part <= high + 1e-5).all(), key


def check_parsers(text: str) -> None:
    for fn in (extract_answer, extract_think):
        value = fn(text)
        assert value is None or (isinstance(value, str) and value == value.strip())
    assert isinstance(has_format(text, True), bool) and isinstance(has_format(text, False), bool)
    answer = extract_answer(text)
    for body in (text, answer):
        json.dumps(parse_json(body), allow_nan=True)  # plain JSON data (never objects from eval)
        dets = parse_detections(body)
        assert dets is None or (len(dets) <= MAX_DETECTIONS and all(
            isinstance(lab, str) and len(b) == 9 and all(math.isfinite(v) for v in b) for lab, b in dets))  # fmt: skip
        found = parse_grounding(body)
        assert found is None or (isinstance(found[0], int) and all(math.isfinite(v) for v in found[1]))
        number = parse_number(body)
        assert number is None or math.isfinite(number)
        assert parse_option(body, TARGETS[-1]["options"]) in (None, "A", "B", "C", "D")
    for target in TARGETS:
        assert isinstance(answer_parses(answer, target), bool)
        parsed = parse_answer(text, target["task"], target.get("options"))
        json.dumps(parsed, allow_nan=False)  # predictions.jsonl stays strict JSON: no NaN / inf


def check_metrics(completions: list[str], targets: list[dict]) -> None:
    metrics = TaskMetrics(RewardConfig(), detection_classes=["chair", "bed"])
    metrics.update(completions, targets)
    values = metrics.compute()
    for single in (DetectionF1(["chair"], matching="hungarian"), GroundingAccuracy(), SpatialScore(), FormatRate()):
        task = {DetectionF1: "detection", GroundingAccuracy: "grounding", SpatialScore: "spatial"}.get(type(single))
        rows = [i for i, t in enumerate(targets) if task is None or t["task"] == task]
        single.update([completions[i] for i in rows], [targets[i] for i in rows])
        out = single.compute()
        values.update({f"single/{k}": v for k, v in (out.items() if isinstance(out, dict) else [("rate", out)])})
    for key, value in values.items():
        assert torch.isfinite(value).all() and 0 <= value.item() <= 100 + 1e-4, (key, value)


# ------------------------------------------------------------------------------------------------- properties


@FAST
@given(st.lists(completion, min_size=len(TARGETS), max_size=len(TARGETS)))
def test_any_completion_scores_finite_and_in_range(completions):
    check_scores(completions, TARGETS, RewardConfig())
    check_scores(completions, TARGETS, WEIGHTS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(completion)
def test_parsers_never_raise(text):
    check_parsers(text)


@FAST
@given(st.lists(completion, min_size=len(TARGETS), max_size=len(TARGETS)))
def test_metrics_stay_finite_and_in_range(completions):
    check_metrics(completions, TARGETS)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["chair", "bed"]), box_text), max_size=MAX_DETECTIONS + 3))
def test_nearly_valid_detections(items):
    """Valid tags and labels around corrupted boxes: NaN / inf, huge or zero / negative sizes, wrong lengths."""
    body = "[" + ", ".join(f'{{"label": "{lab}", "bbox_3d": {b}}}' for lab, b in items) + "]"
    text = f"<answer>{body}</answer>"
    check_scores([text] * 2, TARGETS[:2], RewardConfig(matching="hungarian"))
    check_scores([text] * 2, TARGETS[:2], RewardConfig())
    check_metrics([text] * 2, TARGETS[:2])
    if len(items) > MAX_DETECTIONS:
        assert parse_detections(body) is None


def test_documented_examples_of_bad_numbers():
    big = "1" * 400  # a JSON integer too large for a float
    box = f"[0, 0, 2, {big}, 1, 1, 0, 0, 0]"
    assert parse_detections(f'[{{"label": "a", "bbox_3d": {box}}}]') is None
    assert parse_grounding(f'{{"frame": 0, "bbox_3d": {box}}}') is None
    far = f'<answer>{{"frame": {big}, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}}</answer>'
    r, parts = R.grounding_reward([far], [TARGETS[2]])
    assert parts["grounding/frame"].item() == 0.0 and torch.isfinite(r).all()
    # float64 scoring: a tiny ground truth answered exactly is right, not 0 (float32 made it 0 / 0)
    tiny = {"task": "spatial", "ground_truth": 1e-50, "options": None}
    assert R.spatial_reward(["<answer>1e-50</answer>"], [tiny])[0].item() == 1.0
    assert parse_number("1e999") is None and parse_number("nan") is None and parse_number("１２") == 12.0


# ------------------------------------------------------------------------------------------------- time

HUGE = 1_000_000
ADVERSARIAL = {
    "unclosed answer tags": "<answer>" * (HUGE // 8),
    "unclosed think tags": "<think>" * (HUGE // 7),
    "think before unclosed answers": "<think>x</think>" + "<answer></think>" * (HUGE // 16),
    "open brackets": "<answer>" + "[" * HUGE,
    "open objects": '<answer>{"a":' * (HUGE // 13),
    "digits": "<answer>" + "9" * HUGE + "</answer>",
    "fences": "```json" * (HUGE // 7),
    "commas and spaces": "<answer>[" + ", " * (HUGE // 2),
    "one object per line": "<answer>" + "{}\n" * (HUGE // 3) + "</answer>",
    "lines of valid detections": "<answer>"
    + '{"label": "a", "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}\n' * 128
    + "</answer>",
    "many labels": "<answer>" + "(B" * (HUGE // 2) + "</answer>",
}


def test_huge_inputs_are_fast():
    """A 1 MB completion of any of these shapes is scored (every reward and metric) in well under 2 s of CPU."""
    targets = [t for t in TARGETS if t["task"] != "detection"] + [
        {"task": "detection", "mode": "da", "boxes": [BOX] * 50, "labels": ["a"] * 50}
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time of idle-spinning intra-op threads on a busy machine is not the parser's
    try:
        for name, text in ADVERSARIAL.items():
            start = time.process_time()
            check_parsers(text)
            check_scores([text] * len(targets), targets, RewardConfig())
            elapsed = time.process_time() - start
            assert elapsed < 2.0, f"{name}: {elapsed:.2f} s"
    finally:
        torch.set_num_threads(threads)


def test_model_text_is_never_evaluated():
    """No ``eval`` / ``exec`` / ``literal_eval`` / ``compile`` anywhere in the reward library."""
    builtins, methods = {"eval", "exec", "compile", "__import__"}, {"literal_eval", "eval", "exec"}
    for path in Path(R.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                bad = getattr(node.func, "id", None) in builtins or getattr(node.func, "attr", None) in methods
                assert not bad, f"{path.name}:{node.lineno} calls {ast.unparse(node.func)}"
    assert parse_json("__import__('os').system('true')") is None
