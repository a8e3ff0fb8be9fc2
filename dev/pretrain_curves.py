"""Learning curves of perception pretraining runs: ``python dev/pretrain_curves.py [--keep] OUT RUN_DIR[=LABEL[@OFFSET]] ...``.

``--keep``: the rows of an existing ``OUT/curves.csv`` of runs not named here stay (curves of run directories
that are gone: ``runs/`` is not committed).

``OFFSET`` shifts a run's steps (a run started with ``init_from`` another run's step-N weights: ``@N``), so that
chained runs share one step axis.

Reads each run's CSV log (``csv/0-pretrain/metrics.csv``), writes ``OUT/curves.csv`` (one row per validation:
run, step, estimated training seconds, every ``val/`` figure but per-class F1) and ``OUT/curves.png``.
Training seconds are the logged ``time/step_s`` samples integrated over steps (validation excluded); runs
logged before that column existed get NaN.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

PANELS = ["val/miou", "val/detection/f1", "val/label_acc", "val/centre_err", "val/swap_gap", "val/answer_ce",
          "val/dense/vision_cls_acc", "val/dense/llm_box", "val/box2d/miou", "val/grounding/miou",
          "val/grounding/question_swap_gap", "val/copy/question_swap_gap"]  # fmt: skip


def run_curves(run_dir: Path, label: str, offset: int = 0) -> pd.DataFrame:
    log = pd.read_csv(run_dir / "csv" / "0-pretrain" / "metrics.csv")
    cols = [c for c in log.columns if c.startswith("val/") and "/f1/" not in c]
    val = log.dropna(subset=["val/answer_ce"])[["step", *cols]].drop_duplicates("step", keep="last")
    seconds = np.full(len(val), np.nan)
    if "time/step_s" in log:
        t = log.dropna(subset=["time/step_s"]).groupby("step")["time/step_s"].median()
        steps = np.arange(int(val["step"].max()) + 1)
        per_step = np.interp(steps, t.index.to_numpy(), t.to_numpy())
        seconds = np.cumsum(per_step)[val["step"].astype(int).to_numpy()]
    val = val.assign(run=label, train_s=seconds.round(0), step=val["step"] + offset)
    return val[["run", "step", "train_s", *cols]]


def main(argv: list[str]) -> None:
    keep = argv[:1] == ["--keep"]
    argv = argv[1:] if keep else argv
    out, runs = Path(argv[0]), argv[1:]
    frames = []
    for spec in runs:
        path, _, label = spec.partition("=")
        label, _, offset = label.partition("@")
        frames.append(run_curves(Path(path), label or Path(path).name, int(offset or 0)))
    curves = pd.concat(frames, ignore_index=True)
    if keep and (out / "curves.csv").exists():
        earlier = pd.read_csv(out / "curves.csv")
        curves = pd.concat([earlier[~earlier["run"].isin(set(curves["run"]))], curves], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(out / "curves.csv", index=False, float_format="%.4f")
    panels = [p for p in PANELS if p in curves]
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(4 * ((len(panels) + 1) // 2), 6.5), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        for label, df in curves.groupby("run", sort=False):
            ax.plot(df["step"], df[key], marker="o", ms=3, label=label)
        ax.set_title(key.removeprefix("val/"), fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("perception pretraining, held-out rooms (pretrain.seed + 1)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    print(curves.to_string(index=False))


if __name__ == "__main__":
    main(sys.argv[1:])
