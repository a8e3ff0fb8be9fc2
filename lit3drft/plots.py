"""Plots of result tables and training curves (matplotlib, no display needed); used by notebooks/ and collect."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

CURVE_TAGS = (
    "train/loss",
    "train/reward",
    "train/reward/task",
    "train/reward/detection/iou",
    "train/reward/detection/f1",
    "train/reward/grounding/iou",
    "train/kl",
    "train/entropy",
    "train/completion_length",
    "train/zero_std_groups",
)
"""Training curves worth a panel each when present (the paper's reward-dynamics figure uses IoU and F1)."""


def plot_summary(summary: pd.DataFrame, metrics: list[str], out: str | Path, title: str = "") -> Path:
    """Bar chart of ``mean ± std`` per setting for each metric (one panel per metric) -> PNG."""
    keys = [c for c in summary.columns if not c.endswith((" mean", " std", " n"))]
    present = [m for m in metrics if f"{m} mean" in summary.columns]
    if not present:
        raise ValueError(f"none of {metrics} in the summary (columns: {list(summary.columns)})")
    labels = summary[keys].astype(str).agg(" / ".join, axis=1) if keys else pd.Series(["all"] * len(summary))
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present) + 1, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], present):
        ax.bar(range(len(summary)), summary[f"{metric} mean"], yerr=summary[f"{metric} std"].fillna(0), capsize=3)
        ax.set_xticks(range(len(summary)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric.removeprefix("test/"), fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_curves(curves: pd.DataFrame, out: str | Path, tags: tuple[str, ...] = CURVE_TAGS, by: str = "run") -> Path:
    """One panel per tag (4 per row), one line per ``by`` value (runs), x = step -> PNG."""
    present = [t for t in tags if t in set(curves["tag"])]
    if not present:
        raise ValueError(f"none of {tags} among the logged tags")
    cols = min(4, len(present))
    rows = -(-len(present) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    # one colour per series across every panel (a series missing from a panel, e.g. no KL at beta 0, must not
    # shift the others' colours), and every series in the legend
    series = sorted(curves[by].astype(str).unique())
    colour = {name: f"C{i % 10}" for i, name in enumerate(series)}
    for ax, tag in zip(axes.flat, present):
        for name, group in curves[curves["tag"] == tag].groupby(by):
            ax.plot(group["step"], group["value"], color=colour[str(name)], lw=1)
        ax.set_title(tag.removeprefix("train/"), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    handles = [plt.Line2D([], [], color=colour[name], lw=1) for name in series]
    fig.legend(handles, series, loc="lower center", ncol=min(len(series), 4), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05 + 0.03 * ((len(series) - 1) // 4), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
