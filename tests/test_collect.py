"""Result tables: mean ± std over seeds against pandas computed by hand."""

from __future__ import annotations

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
