"""Result tables: mean ± std over seeds against pandas computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lit3drft.collect import collect, markdown_table, summarise


def test_summary_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    runs = pd.DataFrame(
        {
            "run": [f"r{i}" for i in range(6)],
            "grpo.beta": [0.0] * 3 + [0.04] * 3,
            "seed": [0, 1, 2] * 2,
            "test/detection/f1": rng.random(6),
            "wall_time_s": rng.random(6),
        }
    )
    summary = summarise(runs)
    for beta, group in runs.groupby("grpo.beta"):
        row = summary[summary["grpo.beta"] == beta].iloc[0]
        vals = group["test/detection/f1"].to_numpy()
        assert np.isclose(row["test/detection/f1 mean"], vals.mean())
        assert np.isclose(row["test/detection/f1 std"], vals.std(ddof=1))
        assert row["test/detection/f1 n"] == 3
    assert "wall_time_s mean" not in summary.columns
    md = markdown_table(summary)
    assert md.count("\n") == 4 and "± " in md and "(3)" in md
    (tmp_path / "exp").mkdir()
    runs.to_csv(tmp_path / "exp" / "runs.csv", index=False)
    collect("exp", tmp_path)
    assert (tmp_path / "exp" / "table.md").exists() and (tmp_path / "exp" / "table.csv").exists()


def test_metrics_from_a_re_evaluation(tmp_path: Path) -> None:
    (tmp_path / "results" / "exp").mkdir(parents=True)
    pd.DataFrame({"run": ["a", "b"], "seed": [0, 1], "test/f1": [0.1, 0.2]}).to_csv(
        tmp_path / "results" / "exp" / "runs.csv", index=False
    )
    for run, f1 in (("a", 0.5), ("b", 0.7)):
        (tmp_path / "runs" / "exp" / run / "eval-test").mkdir(parents=True)
        (tmp_path / "runs" / "exp" / run / "eval-test" / "metrics.json").write_text(
            json.dumps({"metrics": {"test/f1": f1, "val/x": 1.0}})
        )
    summary = collect("exp", tmp_path / "results", "eval-test", tmp_path / "runs")
    assert np.isclose(summary["test/f1 mean"].iloc[0], 0.6)
    assert (tmp_path / "results" / "exp" / "table-eval-test.md").exists()
