"""Why detection and grounding answers fail the format, per run, from the runs' ``predictions.jsonl`` (no model).

    .venv/bin/python dev/format_failures.py runs/ablation_kl/*/ [--task detection]

For every run directory: answers of the task, how many parse, and each failure's reason: no ``<answer>`` tag
(e.g. truncated), bad JSON, a box of another length than 9 numbers (the count of each length), another
structure. Issue 17's question 3 (format losses at beta > 0) and issue 14's parse rate after SFT read it.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

from lit3drft.rewards.parsing import extract_answer, parse_json


def reasons(path: Path, task: str) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("task") != task:
            continue
        counts["answers"] += 1
        if row.get("parsed") is not None:
            counts["parsed"] += 1
            continue
        text = extract_answer(row.get("completion") or "")
        value = parse_json(text) if text is not None else None
        if text is None:
            counts["no answer tag"] += 1
        elif value is None:
            counts["bad json"] += 1
        else:
            items = value if isinstance(value, list) else [value]
            lengths = {len(d["bbox_3d"]) for d in items if isinstance(d, dict) and isinstance(d.get("bbox_3d"), list)}
            bad = sorted(n for n in lengths if n != 9)
            counts[f"box of {'/'.join(map(str, bad))} numbers" if bad else "other structure"] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--task", default="detection")
    args = ap.parse_args()
    for run in args.runs:
        path = run / "predictions.jsonl"
        if not path.is_file():
            print(f"{run}: no predictions.jsonl")
            continue
        c = reasons(path, args.task)
        rest = ", ".join(f"{k} {v}" for k, v in c.most_common() if k not in ("answers", "parsed"))
        print(f"{run}: {c['parsed']} of {c['answers']} {args.task} answers parse" + (f"; {rest}" if rest else ""))


if __name__ == "__main__":
    main()
