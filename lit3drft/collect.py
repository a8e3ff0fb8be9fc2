"""``python -m lit3drft.collect [EXPERIMENT ...]``: runs -> pandas tables (mean ± std over seeds) and curves.

For each experiment, reads ``results/<experiment>/runs.csv`` (one row per finished run, written by
``lit3drft.sweep``), groups by the swept keys other than ``seed`` and writes ``table.csv`` (mean, std, n
per metric) and ``table.md`` (``mean ± std (n)``). ``curves(experiment)`` reads the TensorBoard event
files of its runs into a tidy DataFrame (run, stage, tag, step, value) for plotting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

META_COLUMNS = ("run", "scale", "wall_time_s", "commit", "device")
"""Row columns that are neither a swept key nor a metric (``scale``: the sweep refuses to mix scales in one table)."""

DEFAULT_METRICS = (
    "test/detection/precision",
    "test/detection/recall",
    "test/detection/f1",
    "test/grounding/acc@0.25",
    "test/grounding/acc@0.5",
    "test/spatial/overall",
    "test/format_rate",
    "test/reward",
)
"""Columns shown in ``table.md`` when present (``table.csv`` keeps every metric)."""


def load_runs(
    experiment: str, results_dir: str | Path = "results", metrics_from: str = "", runs_root: str | Path = "runs"
) -> pd.DataFrame:
    """``runs.csv`` of an experiment; with ``metrics_from`` (e.g. ``eval-test``), its test metrics are replaced
    by those of ``python -m lit3drft.evaluate`` in ``<runs_root>/<experiment>/<run>/<metrics_from>/``."""
    path = Path(results_dir) / experiment / "runs.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no runs yet; run python -m lit3drft.sweep experiments/{experiment}.yaml")
    runs = pd.read_csv(path)
    if not metrics_from:
        return runs
    rows = []
    for run in runs["run"]:
        file = Path(runs_root) / experiment / run / metrics_from / "metrics.json"
        if not file.exists():
            raise FileNotFoundError(f"{file}: run python -m lit3drft.evaluate {file.parent.parent} first")
        rows.append({k: v for k, v in json.loads(file.read_text())["metrics"].items() if k.startswith("test/")})
    kept = runs[[c for c in runs.columns if not c.startswith("test/")]]
    return pd.concat([kept.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


def split_columns(runs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """``(swept keys, metric columns)``: metrics are the ``val/...`` and ``test/...`` columns; the run's name, wall
    time, commit, device and where its shared stages came from (``shared_*``) are neither."""
    metrics = [c for c in runs.columns if c.startswith(("val/", "test/"))]
    keys = [c for c in runs.columns if c not in metrics and c not in META_COLUMNS and not c.startswith("shared_")]
    return keys, metrics


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n over seeds for every metric, one row per setting of the other swept keys.

    Example:
        >>> runs = pd.DataFrame({"run": list("abcd"), "grpo.beta": [0, 0, 0.1, 0.1], "seed": [0, 1, 0, 1],
        ...                      "test/f1": [0.2, 0.4, 0.5, 0.5]})
        >>> summarise(runs)[["grpo.beta", "test/f1 mean", "test/f1 n"]].round(6).to_dict("list")
        {'grpo.beta': [0.0, 0.1], 'test/f1 mean': [0.3, 0.5], 'test/f1 n': [2, 2]}
    """
    keys, metrics = split_columns(runs)
    group_keys = [k for k in keys if k != "seed"]
    if not metrics:
        raise ValueError(f"no val/ or test/ metric columns in runs (columns: {list(runs.columns)})")
    agg = runs.groupby(group_keys, sort=False, dropna=False)[metrics] if group_keys else runs[metrics]
    if group_keys:
        stats = agg.agg(["mean", "std", "count"])
        stats.columns = [f"{m} {'n' if s == 'count' else s}" for m, s in stats.columns]
        return stats.copy().reset_index()  # copy: one block (agg leaves ~200 fragments for 70 metrics)
    row = {
        f"{m} {s}": v
        for m in metrics
        for s, v in (("mean", runs[m].mean()), ("std", runs[m].std()), ("n", runs[m].count()))
    }
    return pd.DataFrame([row])


STAT_SUFFIXES = (" mean", " std", " n", " ci_lo", " ci_hi", " sign_p")
"""Suffixes of the statistics columns of :func:`summarise` and :func:`paired_differences` (the rest are keys)."""


def markdown_table(summary: pd.DataFrame, metrics: list[str] | None = None, scale: float = 1.0) -> str:
    """``mean ± std (n)`` cells (× ``scale``; task metrics are already × 100) for the chosen metrics, keys first."""
    key_cols = [c for c in summary.columns if not c.endswith(STAT_SUFFIXES)]
    present = sorted({c.rsplit(" ", 1)[0] for c in summary.columns if c.endswith(" mean")})
    wanted = [m for m in (metrics or DEFAULT_METRICS) if m in present] or present
    header = [*key_cols, *(m.removeprefix("test/") for m in wanted)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(row[c]) for c in key_cols]
        for m in wanted:
            mean, std, n = row[f"{m} mean"], row[f"{m} std"], int(row[f"{m} n"])
            std_txt = "–" if pd.isna(std) else f"{std * scale:.1f}"
            cells.append(f"{mean * scale:.1f} ± {std_txt} ({n})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curves(experiment: str, runs_root: str | Path = "runs") -> pd.DataFrame:
    """Scalars from every run's TensorBoard files: columns run, stage, tag, step, value. A reward component's
    mean (``train/reward/<c>``) is dropped at the steps where GRPO logged ``train/reward_count/<c>`` = 0 (no
    completion of its task that step: the logger repeats the previous step's value there)."""
    rows = []
    for event_dir in sorted((Path(runs_root) / experiment).glob("*/tb/*")):
        acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
        acc.Reload()
        run, stage = event_dir.parent.parent.name, event_dir.name
        for tag in acc.Tags().get("scalars", []):
            rows += [(run, stage, tag, ev.step, ev.value) for ev in acc.Scalars(tag)]
    return drop_unscored_means(pd.DataFrame(rows, columns=["run", "stage", "tag", "step", "value"]))


def drop_unscored_means(curves: pd.DataFrame) -> pd.DataFrame:
    """``curves`` without the ``train/reward/<c>`` rows of steps whose ``train/reward_count/<c>`` is 0.

    Example:
        >>> c = pd.DataFrame({"run": "r", "stage": "0-grpo", "step": [0, 1, 0, 1],
        ...                   "tag": ["train/reward/grounding/iou"] * 2 + ["train/reward_count/grounding/iou"] * 2,
        ...                   "value": [0.3, 0.3, 16.0, 0.0]})
        >>> drop_unscored_means(c)[["step", "value"]].values.tolist()  # the mean's step 1 is gone
        [[0.0, 0.3], [0.0, 16.0], [1.0, 0.0]]
    """
    counts = curves[curves["tag"].str.startswith("train/reward_count/")]
    if counts.empty:
        return curves
    unscored = counts[counts["value"] == 0].assign(tag=lambda d: "train/reward/" + d["tag"].str.removeprefix(
        "train/reward_count/"))[["run", "stage", "tag", "step"]]  # fmt: skip
    keys = ["run", "stage", "tag", "step"]
    hit = curves[keys].merge(unscored.drop_duplicates(), on=keys, how="left", indicator=True)["_merge"] == "both"
    return curves[~hit.to_numpy()].reset_index(drop=True)


def collect(
    experiment: str,
    results_dir: str | Path = "results",
    metrics_from: str = "",
    runs_root: str | Path = "runs",
    runs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Write ``table.csv`` and ``table.md`` (``table-<metrics_from>.*`` for re-evaluations); return the summary.
    ``runs``: the experiment's rows when the caller already loaded them (else read here)."""
    if runs is None:
        runs = load_runs(experiment, results_dir, metrics_from, runs_root)
    summary = summarise(runs)
    out = Path(results_dir) / experiment
    stem = f"table-{metrics_from}" if metrics_from else "table"
    summary.to_csv(out / f"{stem}.csv", index=False)
    (out / f"{stem}.md").write_text(markdown_table(summary))
    return summary


def paired_differences(runs: pd.DataFrame, key: str, baseline: str) -> pd.DataFrame:
    """Per-seed differences against ``key == baseline`` at equal values of the other swept keys: mean, std, n, the
    95 % t-interval of the mean (``ci_lo``, ``ci_hi``) and the sign test's p-value (``sign_p``; :func:`paired_test`).

    For grids whose arms share a seed-determined prefix (every ``strategy`` arm of ``ablation_strategy``
    starts from a bit-identical SFT stage per seed), the difference on the same seed removes the seed's own
    noise from the comparison. Rows: each other value of ``key`` (and of the other keys); columns like
    :func:`summarise`.

    Example:
        >>> runs = pd.DataFrame({"run": list("abcd"), "arm": ["sft", "rl"] * 2, "seed": [0, 0, 1, 1],
        ...                      "test/x": [30.0, 34.0, 40.0, 42.0]})
        >>> paired_differences(runs, "arm", "sft")[["arm", "test/x mean", "test/x std", "test/x n"]].to_dict("list")
        {'arm': ['rl'], 'test/x mean': [3.0], 'test/x std': [1.4142135623730951], 'test/x n': [2]}
    """
    keys, metrics = split_columns(runs)
    if key not in keys or "seed" not in keys:
        raise ValueError(f"paired differences need the swept key {key!r} and seed among {keys}")
    if baseline not in set(runs[key].astype(str)):
        raise ValueError(f"{key}={baseline!r} is not in the runs (values: {sorted(set(runs[key].astype(str)))})")
    others = [k for k in keys if k not in (key, "seed")]
    runs = runs.assign(**{key: runs[key].astype(str)})
    base = runs[runs[key] == baseline].set_index([*others, "seed"])[metrics]
    rest = runs[runs[key] != baseline].set_index([*others, "seed"])
    diff = rest[metrics].sub(base.reindex(rest.index)).assign(**{key: rest[key]}).reset_index()
    diff = diff.dropna(subset=metrics, how="all")  # a seed whose baseline run is missing pairs with nothing
    summary = summarise(diff)
    group = [k for k in [key, *others] if k in summary.columns]
    extra = []
    for _, row in summary.iterrows():
        sel = np.logical_and.reduce([diff[k].astype(str) == str(row[k]) for k in group]) if group else slice(None)
        cells = {}
        for m in metrics:
            lo, hi, p = paired_test(diff.loc[sel, m].dropna().to_numpy(float))
            cells.update({f"{m} ci_lo": lo, f"{m} ci_hi": hi, f"{m} sign_p": p})
        extra.append(cells)
    return pd.concat([summary, pd.DataFrame(extra, index=summary.index)], axis=1)


def paired_test(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """``(lo, hi, p)`` for per-seed differences ``d``: the ``level`` t-interval of their mean (NaN below 2 pairs; a
    point when every difference is equal) and the two-sided exact sign test's p-value (ties dropped; 1.0 if all tie).

    Example:
        >>> [round(float(v), 3) for v in paired_test(np.array([3.0, 1.0, 4.0]))]
        [-1.128, 6.461, 0.25]
    """
    n = len(d)
    if n < 2:
        lo = hi = float("nan")
    else:
        half = stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
        lo, hi = float(d.mean() - half), float(d.mean() + half)
    signs = d[d != 0]
    p = float(stats.binomtest(int((signs > 0).sum()), len(signs)).pvalue) if len(signs) else 1.0
    return lo, hi, p


def verdict(lo: float, hi: float, expected: int) -> str:
    """``"reproduced"`` when the interval ``[lo, hi]`` excludes 0 on the side of the paper's sign ``expected``
    (+1 or -1), ``"reversed"`` when it excludes 0 on the other side, else ``"not resolved"`` (NaN included).

    Example:
        >>> verdict(0.5, 3.0, +1), verdict(-4.0, -1.0, +1), verdict(-1.0, 2.0, +1)
        ('reproduced', 'reversed', 'not resolved')
    """
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 <= hi:
        return "not resolved"
    return "reproduced" if (lo > 0) == (expected > 0) else "reversed"


def paired_markdown(paired: pd.DataFrame, metrics: list[str] | None = None) -> str:
    """``mean [lo, hi] p (n)`` cells of :func:`paired_differences`: the mean per-seed difference, its 95 % t-interval
    and the sign test's p-value."""
    key_cols = [c for c in paired.columns if not c.endswith(STAT_SUFFIXES)]
    present = sorted({c.rsplit(" ", 1)[0] for c in paired.columns if c.endswith(" mean")})
    wanted = [m for m in (metrics or DEFAULT_METRICS) if m in present] or present
    lines = ["| " + " | ".join([*key_cols, *(m.removeprefix("test/") for m in wanted)]) + " |",
             "|" + "---|" * (len(key_cols) + len(wanted))]  # fmt: skip
    for _, row in paired.iterrows():
        cells = [str(row[c]) for c in key_cols]
        for m in wanted:
            lo, hi = row[f"{m} ci_lo"], row[f"{m} ci_hi"]
            ci = "[–]" if pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]"
            cells.append(f"{row[f'{m} mean']:+.1f} {ci} p={row[f'{m} sign_p']:.2f} ({int(row[f'{m} n'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLOT_METRICS = ("test/detection/f1", "test/grounding/acc@0.25", "test/spatial/overall", "test/format_rate")
"""Panels of ``summary.png``: one headline metric per task, and the format rate."""


def setting_curves(experiment: str, runs: pd.DataFrame, runs_root: str | Path = "runs") -> pd.DataFrame:
    """GRPO-stage training curves averaged over seeds: columns setting, tag, step, value, n (seeds at that step).

    Only the runs in ``runs`` (the rows of ``runs.csv``: finished runs) count; a run's ``setting`` joins its
    swept keys other than ``seed`` (``k=v`` pairs, in column order; ``all`` when seed is the only key).
    """
    keys = [k for k in split_columns(runs)[0] if k != "seed"]
    label = runs.apply(lambda r: "__".join(f"{k}={r[k]}" for k in keys) or "all", axis=1) if len(runs) else []
    settings = pd.DataFrame({"run": runs["run"].astype(str), "setting": label})
    c = curves(experiment, runs_root)
    empty = pd.DataFrame(columns=["setting", "tag", "step", "value", "n"])
    if c.empty:
        return empty
    c = c[c["stage"].str.contains("grpo")].merge(settings, on="run", how="inner")
    if c.empty:
        return empty
    return c.groupby(["setting", "tag", "step"], as_index=False)["value"].agg(value="mean", n="count")


def write_plots(
    experiment: str,
    runs: pd.DataFrame,
    summary: pd.DataFrame,
    results_dir: str | Path = "results",
    runs_root: str | Path = "runs",
    stem: str = "",
) -> list[Path]:
    """``summary<stem>.png`` (bars, mean ± std over seeds) and, when the runs' event files are here,
    ``curves.png`` and ``curves.csv`` (the seed-mean GRPO curves, which the notebook plots without the runs); a
    plot with nothing to show is skipped with a message, never an error after the tables."""
    from lit3drft.plots import plot_curves, plot_summary

    out = Path(results_dir) / experiment
    written = []
    try:
        written.append(plot_summary(summary, list(PLOT_METRICS), out / f"summary{stem}.png", title=experiment))
    except ValueError as err:
        print(f"[collect] {experiment}: no summary plot ({err})", file=sys.stderr)
    c = setting_curves(experiment, runs, runs_root)
    if c.empty:
        print(
            f"[collect] {experiment}: no GRPO event files of its runs under {runs_root}/: no curves.png",
            file=sys.stderr,
        )
        return written
    c.to_csv(out / "curves.csv", index=False)
    written.append(out / "curves.csv")
    try:
        written.append(plot_curves(c, out / "curves.png", by="setting"))
    except ValueError as err:
        print(f"[collect] {experiment}: no curves plot ({err})", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit3drft.collect", description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", help="experiment names (default: every results/<name>/runs.csv)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--metrics-from", default="", help="take test metrics from each run's <dir>, e.g. eval-test")
    parser.add_argument("--plots", action="store_true", help="also write summary.png and curves.png (seed means)")
    parser.add_argument("--paired", default="", metavar="KEY=BASELINE",
                        help="also write paired.md/.csv: per-seed differences against KEY=BASELINE")  # fmt: skip
    args = parser.parse_args(argv)
    names = args.experiments or sorted(p.parent.name for p in Path(args.results_dir).glob("*/runs.csv"))
    if not names:
        print(f"no runs.csv under {args.results_dir}/", file=sys.stderr)
        return 1
    for name in names:
        runs = load_runs(name, args.results_dir, args.metrics_from, args.runs_dir)
        summary = collect(name, args.results_dir, args.metrics_from, args.runs_dir, runs)
        if args.plots:
            suffix = f"-{args.metrics_from}" if args.metrics_from else ""
            for png in write_plots(name, runs, summary, args.results_dir, args.runs_dir, suffix):
                print(f"[collect] wrote {png}")
        stem = f"table-{args.metrics_from}" if args.metrics_from else "table"
        print(f"## {name}\n{(Path(args.results_dir) / name / f'{stem}.md').read_text()}")
        if args.paired:
            key, _, baseline = args.paired.partition("=")
            try:
                paired = paired_differences(runs, key, baseline)
            except ValueError as err:
                print(f"[collect] {name}: no paired table ({err})", file=sys.stderr)
                continue
            out = Path(args.results_dir) / name
            paired.to_csv(out / "paired.csv", index=False)
            md = (
                f"Per-seed differences against {key} = {baseline} (same seed): mean, 95 % t-interval, two-sided "
                "sign-test p-value (n pairs):\n\n"
            )
            (out / "paired.md").write_text(md + paired_markdown(paired))
            print((out / "paired.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
