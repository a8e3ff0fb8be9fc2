"""How good is a run's detect-then-select grounding listing, and would a perfect selection score? (issue 14)

``python dev/listing_oracle.py RUN_DIR [--split test] [key=value ...]``: reads ``RUN_DIR/predictions.jsonl`` (or
``--predictions``), the grounding rows of ``split`` (the evaluation subset, with the run's config and overrides),
and for each completion whose think holds a listing (``think=listing``'s ``... which shows [...]. So:`` or
``clip_listing``'s ``... camera, [...]. So:``): the listed entries read in the frame the think names (Frame-0 for
``clip_listing``), the best listed box's world IoU with the target (``oracle``: what a perfect selection would
score), the IoU of the restated entry (``restated``: the selection made), of the answer (the metric), whether the
answer copies the restated entry's box, whether it copies any listed entry's box (``copies_listed``; ``clip_select``
writes no restated entry: its answer is the selection), and the entries' count; and whether the answer reads the
question: its ``color`` / ``label`` keys (``clip_select`` / ``clip_entry`` answers) equal the referring expression's
own colour and category (``answer_colour_ok``, ``answer_label_ok``, ``answer_reads_both``; rows whose answer has
the keys; ``hits_when_read`` / ``hits_when_misread``: Acc@0.25 among those with both right / not). Rows without a
listing (``clip_entry``) count in these and the answer IoU only; ``think_is_expression``: rows whose think is the
expression copied (``clip_entry``), ``answer_copies_think``: among them, answers whose colour and label are the
copied expression's. Prints per-row lines and the means.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from lit3drft.data.prompts import CATEGORY_NAMES, COLORS
from lit3drft.evaluate import resolve_target
from lit3drft.fit import build_datamodule
from lit3drft.rewards.boxes import box3d_iou
from lit3drft.rewards.grounding import _to_world
from lit3drft.rewards.parsing import extract_answer, parse_grounding


def listing(text: str) -> tuple[int, list[dict], dict | None] | None:
    """(frame the listing is in, its entries, the restated entry) of a listing think, or None. Lenient: every
    ``"bbox_3d": [9 numbers]`` between the listing's start and ``So:`` (or the think's end) is an entry, whatever
    JSON around it is broken; the restated entry is the first such box after ``So:``."""
    lo = max(text.find("which shows"), text.find("camera,"))
    if lo < 0:
        return None
    so = text.find("So:", lo)
    end = so if so >= 0 else (text.find("</think>", lo) if "</think>" in text[lo:] else len(text))
    frame = re.search(r"Frame-(\d+)", text[:lo])
    boxes = [_nums(m) for m in re.findall(r'"bbox_3d": \[([^\]]*)\]', text[lo:end])]
    entries = [{"bbox_3d": b} for b in boxes if b is not None]
    after = re.findall(r'"bbox_3d": \[([^\]]*)\]', text[so:]) if so >= 0 else []
    chosen = {"bbox_3d": _nums(after[0])} if after and _nums(after[0]) is not None else None
    return (int(frame.group(1)) if frame else 0), entries, chosen


def _nums(inner: str) -> list[float] | None:
    try:
        vals = [float(v) for v in inner.split(",")]
    except ValueError:
        return None
    return vals if len(vals) == 9 else None


def _box(entry) -> list[float] | None:
    b = entry.get("bbox_3d") if isinstance(entry, dict) else None
    if isinstance(b, list) and len(b) == 9 and all(isinstance(v, (int, float)) for v in b):
        return [float(v) for v in b]
    return None


def expression_head(description: str) -> tuple[str, str] | None:
    """The referred object's (colour, category) from an expression ``the <colour> <category> ...``, or None.

    >>> expression_head("the pink armchair farthest from the grey trash can")
    ('pink', 'armchair')
    >>> expression_head("the grey trash can closest to the red armchair")
    ('grey', 'trash can')
    """
    words = description.lower().removeprefix("the ").split(" ")
    rest = " ".join(words[1:])
    cat = max((c for c in CATEGORY_NAMES if rest == c or rest.startswith(c + " ")), key=len, default=None)
    return (words[0], cat) if words[0] in COLORS and cat else None


def answer_entry(text: str) -> tuple[str, str] | None:
    """The answer's (color, label) keys (``clip_name``: its ``object`` key read as colour and category), or None."""
    try:
        ans = json.loads(extract_answer(text) or "null")
    except json.JSONDecodeError:
        return None
    if isinstance(ans, dict) and isinstance(ans.get("object"), str):  # clip_name: {"object": "red chair", ..}
        return expression_head(f"the {ans['object']}") or (ans["object"], "")
    ok = isinstance(ans, dict) and isinstance(ans.get("color"), str) and isinstance(ans.get("label"), str)
    return (ans["color"], ans["label"]) if ok else None


def _iou(box: list[float], frame: int, target: dict, gt: torch.Tensor) -> float:
    p = _to_world(box, frame, target)
    return 0.0 if p is None else float(box3d_iou(p[None], gt[None], paired=True)[0])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--split", default="test")
    ap.add_argument("--predictions", default="", help="default: RUN/predictions.jsonl")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg, _, _ = resolve_target(Path(args.run), None, args.overrides)
    preds = {}
    for line in Path(args.predictions or Path(args.run) / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        preds[row["id"]] = row["completion"]
    dm = build_datamodule(cfg, None, None)
    rows = [r for r, _, _ in dm.split_entries(args.split) if r.task == "grounding"]
    cols: dict[str, list[float]] = {"oracle": [], "restated": [], "answer": [], "copies": [], "copies_listed": [],
                                    "listed": []}  # fmt: skip
    found = 0
    reads: tuple[list[bool], list[bool]] = ([], [])
    read_hits: list[bool] = []
    misread_hits: list[bool] = []
    answer_ious: list[float] = []
    copied: list[bool] = []
    for rec in rows:
        text = next((v for k, v in preds.items() if k == rec.id or k.startswith(f"{rec.id}")), None)
        if text is None:
            continue
        found += 1
        t = rec.target
        gt = _to_world(list(t["bbox_3d"]), int(t["frame"]), t)
        got = listing(text)
        ans = parse_grounding(extract_answer(text))
        a_iou = _iou(ans[1], ans[0], t, gt) if ans else 0.0
        head, entry = expression_head(str(rec.meta.get("description", ""))), answer_entry(text)
        think = text.split("</think>")[0].replace("<think>", "").strip().rstrip(".")
        if think.lower() == str(rec.meta.get("description", "")).lower():  # clip_entry: the think is the expression
            copied.append(entry == head)
        if head and entry:
            reads[0].append(entry[0] == head[0])
            reads[1].append(entry[1] == head[1])
            (read_hits if entry == head else misread_hits).append(a_iou >= 0.25)
        answer_ious.append(a_iou)
        if got is None:
            print(f"{rec.id}: no listing; answer IoU {a_iou:.2f}, answer entry {entry}, expression {head}")
            continue
        frame, entries, chosen = got
        ious = [_iou(_box(e), frame, t, gt) for e in entries]
        r_iou = _iou(_box(chosen), frame, t, gt) if chosen else 0.0
        copies = float(bool(ans and chosen and ans[1] == _box(chosen) and ans[0] == frame))
        copies_listed = float(bool(ans and ans[0] == frame and any(ans[1] == _box(e) for e in entries)))
        for k, v in (("oracle", max(ious, default=0.0)), ("restated", r_iou), ("answer", a_iou), ("copies", copies),
                     ("copies_listed", copies_listed), ("listed", len(entries))):  # fmt: skip
            cols[k].append(v)
        print(f"{rec.id}: {rec.meta.get('description')!r}: {len(entries)} listed, oracle {cols['oracle'][-1]:.2f}, "
              f"restated {r_iou:.2f}, answer {a_iou:.2f}, copies {bool(copies)}, copies a listed box {bool(copies_listed)}")  # fmt: skip
    out = {k: round(float(np.mean(v)), 4) if v else None for k, v in cols.items()}
    out["oracle_acc25"] = round(float(np.mean(np.array(cols["oracle"]) >= 0.25)), 4) if cols["oracle"] else 0.0
    out["restated_acc25"] = round(float(np.mean(np.array(cols["restated"]) >= 0.25)), 4) if cols["restated"] else 0.0
    out["rows"], out["with_prediction"], out["with_listing"] = len(rows), found, len(cols["oracle"])
    out["answer_acc25_all"] = round(float(np.mean(np.array(answer_ious) >= 0.25)), 4) if answer_ious else 0.0
    mean = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    out["answer_colour_ok"], out["answer_label_ok"] = mean(reads[0]), mean(reads[1])
    out["answer_reads_both"] = mean([a and b for a, b in zip(*reads)])
    out["with_answer_entry"] = len(reads[0])
    out["hits_when_read"], out["hits_when_misread"] = mean(read_hits), mean(misread_hits)
    out["think_is_expression"], out["answer_copies_think"] = len(copied), mean(copied)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
