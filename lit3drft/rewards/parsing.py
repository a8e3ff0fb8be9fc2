"""Answer parsing: ``<think>``/``<answer>`` extraction and tolerant JSON, never ``eval``.

Model output is untrusted text. Everything here is linear-time regex or ``json.loads`` on bounded input and
returns ``None`` when the text cannot be read, so rewards can score garbage as 0 without exceptions. Tags are
found by one scan for ``<answer>`` / ``</answer>`` (not a lazy ``<answer>(.*?)</answer>``, which is quadratic on
many unclosed openers); numbers must be finite floats (JSON integers too large for a float are rejected).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_CHARS = 200_000
"""Longer completions are cut to this many characters before parsing (bounds the time on huge input)."""
MAX_DETECTIONS = 128
"""A detection answer with more boxes than this is not a valid answer (bounds the IoU matching time)."""

_ANSWER = re.compile(r"<(/?)answer>", re.I)
_THINK = re.compile(r"<(/?)think>", re.I)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([\]}])")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_LETTER = re.compile(r"^\s*\(?([A-Da-d])(?:[\s).:,]|$)")


def _tag_spans(tag: re.Pattern, text: str) -> list[tuple[int, int, int, int]]:
    """``(open start, body start, body end, close end)`` of each ``<tag>...</tag>``, as ``tag.findall`` with the
    lazy ``<tag>(.*?)</tag>`` would pair them (the first opener, up to the first closer after it), in linear time.
    """
    spans, start = [], None
    for m in tag.finditer(text):
        if not m.group(1):
            if start is None:
                start = m
        elif start is not None:
            spans.append((start.start(), start.end(), m.start(), m.end()))
            start = None
    return spans


def extract_answer(text: str, untagged: bool = False) -> str | None:
    """Text inside the last ``<answer>...</answer>``, stripped; ``None`` if there is none.

    The one answer extractor: every reward, metric and figure reads a completion with it (the last answer
    counts, tags in any case, as the official evaluations read model output). ``untagged=True`` is for reference
    answers in training rows, which VG-LLM writes without tags: text with no ``<answer>`` pair then gives the
    body of its first json code fence, else the whole text, stripped (a string is never ``None``).

    Example:
        >>> extract_answer("<think>count</think><answer> 3 </answer>")
        '3'
        >>> extract_answer("no tags") is None
        True
        >>> extract_answer('```json\\n[{"label": "bed"}]\\n```', untagged=True)
        '[{"label": "bed"}]'
    """
    if not isinstance(text, str):
        return None
    text = text[:MAX_CHARS]
    found = _tag_spans(_ANSWER, text)
    if found:
        return text[found[-1][1] : found[-1][2]].strip()
    if not untagged:
        return None
    fenced = _FENCE.search(text)
    return (fenced.group(1) if fenced else text).strip()


def extract_think(text: str) -> str | None:
    """Text inside the first ``<think>...</think>``, stripped; ``None`` if there is none.

    Example:
        >>> extract_think("<think> it is left </think><answer>A</answer>")
        'it is left'
    """
    if not isinstance(text, str):
        return None
    text = text[:MAX_CHARS]
    found = _tag_spans(_THINK, text)
    return text[found[0][1] : found[0][2]].strip() if found else None


def has_format(text: str, require_think: bool) -> bool:
    """``<think>..</think>`` (when required) before exactly one ``<answer>..</answer>``.

    Example:
        >>> has_format("<think>x</think><answer>1</answer>", require_think=True)
        True
        >>> has_format("<answer>1</answer>", require_think=True)
        False
    """
    if not isinstance(text, str):
        return False
    text = text[:MAX_CHARS]
    answers = _tag_spans(_ANSWER, text)
    if len(answers) != 1 or text.lower().count("<answer>") != 1:
        return False
    if not require_think:
        return True
    think = _tag_spans(_THINK, text)
    return bool(think) and think[0][3] <= answers[0][0]


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_json(text: str | None) -> Any:
    """Tolerant JSON: fenced or not, trailing commas, one object per line; ``None`` when unparseable.

    Example:
        >>> parse_json('```json\\n[{"label": "bed", "bbox_3d": [1, 2, 3,]},]\\n```')
        [{'label': 'bed', 'bbox_3d': [1, 2, 3]}]
        >>> parse_json('{"label": "a"}\\n{"label": "b"}')
        [{'label': 'a'}, {'label': 'b'}]
        >>> parse_json("[1, 2") is None
        True
    """
    if not isinstance(text, str):
        return None
    text = text[:MAX_CHARS].strip()
    fenced = _FENCE.findall(text)
    if fenced:
        text = fenced[0].strip()
    for candidate in (text, _TRAILING_COMMA.sub(r"\1", text)):
        value = _loads(candidate)
        if value is not None:
            return value
    # one JSON object per line, as VG-LLM prints detections
    lines = [ln.strip().rstrip(",") for ln in text.splitlines() if ln.strip() and ln.strip() not in "[]"]
    if len(lines) > 1:
        items = []
        for ln in lines:  # stops at the first line that is not an object
            items.append(_loads(_TRAILING_COMMA.sub(r"\1", ln)))
            if not isinstance(items[-1], dict):
                return None
        return items
    return None


def _finite(value: Any) -> float | None:
    """``value`` as a finite float; ``None`` for bools, non-numbers, NaN, inf and integers too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _box(value: Any, size: int = 9) -> list[float] | None:
    """``size`` finite numbers (bools excluded), else ``None``."""
    if not isinstance(value, (list, tuple)) or len(value) != size:
        return None
    box = [_finite(v) for v in value]
    return None if None in box else box


def parse_detections(text: str | None, key: str = "bbox_3d", size: int = 9) -> list[tuple[str, list[float]]] | None:
    """Detection answer -> ``[(label, 9 floats), ...]``; ``None`` when it is not a list of valid entries
    (or has more than ``MAX_DETECTIONS`` of them). ``key``/``size``: another box field, such as Qwen2.5-VL's 2D
    ``"bbox_2d"`` of 4 pixel coordinates.

    Example:
        >>> parse_detections('[{"label": "chair", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]')
        [('chair', [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])]
        >>> parse_detections('[{"label": "bed", "bbox_2d": [1, 2, 30, 40]}]', key="bbox_2d", size=4)
        [('bed', [1.0, 2.0, 30.0, 40.0])]
    """
    value = parse_json(text)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or len(value) > MAX_DETECTIONS:
        return None
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            return None
        box = _box(item.get(key), size)
        if box is None:
            return None
        out.append((item["label"].strip().lower(), box))
    return out


def parse_grounding(text: str | None) -> tuple[int, list[float]] | None:
    """Grounding answer ``{"frame": k, "bbox_3d": [9]}`` -> ``(k, box)``; ``None`` when invalid.

    Example:
        >>> parse_grounding('{"frame": 3, "bbox_3d": [0, 0, 2, 1, 1, 1, 0, 0, 0]}')
        (3, [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    """
    value = parse_json(text)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        return None
    frame, box = value.get("frame"), _box(value.get("bbox_3d"))
    if isinstance(frame, float) and frame.is_integer():
        frame = int(frame)
    if not isinstance(frame, int) or isinstance(frame, bool) or box is None:
        return None
    return frame, box


def parse_number(text: str | None) -> float | None:
    """First number in the answer (``"3.5 m"`` -> 3.5); ``None`` if none or not finite.

    Example:
        >>> parse_number("about 2.5 meters")
        2.5
    """
    if not isinstance(text, str):
        return None
    found = _NUMBER.search(text[:1000])
    if found is None:
        return None
    value = float(found.group())
    return value if math.isfinite(value) else None


def parse_option(text: str | None, options: list[str] | None = None) -> str | None:
    """Option letter ``A``-``D`` from ``"B"``, ``"(B)"``, ``"B. table"``, or the option text itself.

    Example:
        >>> parse_option("B. the sofa")
        'B'
        >>> parse_option("sofa", ["A. bed", "B. sofa"])
        'B'
    """
    if not isinstance(text, str):
        return None
    text = text[:1000].strip()
    found = _LETTER.match(text)
    if found:
        return found.group(1).upper()
    for i, option in enumerate(options or []):
        body = re.sub(r"^\s*\(?[A-Da-d][).:]\s*", "", str(option)).strip().lower()
        if body and text.lower().rstrip(".") == body:
            return "ABCD"[i] if i < 4 else None
    return None


def parse_answer(text: str, task: str, options: list[str] | None = None) -> Any:
    """What the reward reads from a completion for ``task``, as JSON-ready data; ``None`` if unparseable.

    Used for ``predictions.jsonl``; the rewards themselves call the task parsers directly.

    Example:
        >>> parse_answer('<answer>{"frame": 2, "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}</answer>', "grounding")
        {'frame': 2, 'bbox_3d': [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]}
        >>> parse_answer("<answer>B</answer>", "spatial"), parse_answer("<answer>2.5</answer>", "spatial")
        ('B', 2.5)
    """
    answer = extract_answer(text)
    if task == "detection":
        boxes = parse_detections(answer)
        return None if boxes is None else [{"label": label, "bbox_3d": list(box)} for label, box in boxes]
    if task == "grounding":
        found = parse_grounding(answer)
        return None if found is None else {"frame": found[0], "bbox_3d": list(found[1])}
    option = parse_option(answer, options)
    return option if option is not None else parse_number(answer)
