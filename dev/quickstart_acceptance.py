"""Issue 14's acceptance figures of a quickstart run, from its files (no model is run).

    .venv/bin/python dev/quickstart_acceptance.py runs/quickstart/run

Reads ``sft_test_metrics.json`` / ``metrics.json`` (test split after SFT and after GRPO), the probes written by
``python -m lit3drft.probe RUN [--stage 0-sft]`` (``probe-test*.json``: the image-swap gap), and the GRPO stage's
CSV log (groups with non-zero reward variance per task: ``train/groups/<task>`` minus
``train/zero_std_count/<task>``). Prints one line per figure with the issue's target.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

TARGETS = {"detection F1@0.25, %": 30.0, "class-agnostic mIoU": 0.25, "grounding Acc@0.25, %": 30.0,
           "detection image-swap gap": 0.3}  # fmt: skip


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(run: Path) -> None:
    metrics = _json(run / "metrics.json").get("metrics", {})
    for label, prefix in (("after SFT", "0-sft/test/"), ("after GRPO", "test/")):
        print(f"{label}: detection F1 {metrics.get(prefix + 'detection/f1', float('nan')):.2f} %, P "
              f"{metrics.get(prefix + 'detection/precision', float('nan')):.2f}, R "
              f"{metrics.get(prefix + 'detection/recall', float('nan')):.2f}; grounding Acc@0.25 "
              f"{metrics.get(prefix + 'grounding/acc@0.25', float('nan')):.2f} %, mIoU "
              f"{metrics.get(prefix + 'grounding/miou', float('nan')):.3f}; VSI overall "
              f"{metrics.get(prefix + 'spatial/overall', float('nan')):.1f}; format "
              f"{metrics.get(prefix + 'format_rate', float('nan')):.1f} %")  # fmt: skip
    for probe in sorted(run.glob("probe-*.json")):
        for task, row in _json(probe).get("probe", {}).items():
            keys = ("swap_gap", "miou", "label_acc", "centre_err", "parsed")
            print(f"{probe.name} {task}: " + ", ".join(f"{k} {row[k]:.3f}" for k in keys if k in row))
    for csv in sorted(run.glob("csv/*grpo*/metrics.csv")):
        df = pd.read_csv(csv)
        for task in ("detection", "grounding", "spatial"):
            groups, zero = f"train/groups/{task}", f"train/zero_std_count/{task}"
            if groups in df and zero in df:
                n, z = df[groups].sum(), df[zero].sum()
                print(f"GRPO {task}: {int(n - z)} of {int(n)} groups with reward variance ({(n - z) / max(n, 1):.0%})")
    print("targets (after SFT):", TARGETS)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
