"""Result tables: mean ± std over seeds against pandas computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

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


def test_setting_curves_are_seed_means_of_grpo_stages_and_plots_are_written(tmp_path: Path) -> None:
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    from lit3drft.collect import setting_curves, write_plots

    logged = {}
    for beta in ("0.0", "0.1"):
        for seed in (0, 1):
            run = f"beta={beta}__seed={seed}"
            for stage in ("0-sft", "1-grpo"):
                with SummaryWriter(tmp_path / "runs" / "exp" / run / "tb" / stage) as w:
                    for step in (0, 10):
                        value = float(beta) + seed + step / 10 + (100 if stage == "0-sft" else 0)
                        w.add_scalar("train/reward", value, step)
                        logged[beta, seed, stage, step] = value
    # a run directory without a row (failed, or not of this grid) is left out
    with SummaryWriter(tmp_path / "runs" / "exp" / "beta=0.0__seed=9" / "tb" / "1-grpo") as w:
        w.add_scalar("train/reward", 1000.0, 0)
    rows = pd.DataFrame({"run": [f"beta={b}__seed={s}" for b in ("0.0", "0.1") for s in (0, 1)],
                         "grpo.beta": ["0.0", "0.0", "0.1", "0.1"], "seed": [0, 1] * 2, "test/x": [1.0] * 4})  # fmt: skip
    c = setting_curves("exp", rows, tmp_path / "runs")
    assert set(c["setting"]) == {"grpo.beta=0.0", "grpo.beta=0.1"} and set(c["n"]) == {2}
    for (setting, step), row in c.set_index(["setting", "step"]).iterrows():
        beta = setting.split("=")[1]  # "grpo.beta=0.0"
        expected = np.mean([logged[beta, s, "1-grpo", step] for s in (0, 1)])  # the SFT stage is left out
        assert np.isclose(row["value"], expected)
    runs = pd.DataFrame(
        {"run": ["a", "b"], "grpo.beta": [0.0, 0.1], "seed": [0, 0], "test/spatial/overall": [30.0, 40.0]}
    )
    (tmp_path / "results" / "exp").mkdir(parents=True)
    runs.to_csv(tmp_path / "results" / "exp" / "runs.csv", index=False)
    summary = collect("exp", tmp_path / "results")
    pngs = write_plots("exp", rows, summary, tmp_path / "results", tmp_path / "runs")
    assert [p.name for p in pngs] == ["summary.png", "curves.csv", "curves.png"]
    assert all(Image.open(p).size[0] > 100 for p in pngs if p.suffix == ".png")
    saved = pd.read_csv(pngs[1])  # the seed-mean curves, for the notebook without the runs
    assert list(saved.columns) == ["setting", "tag", "step", "value", "n"] and len(saved) > 0
    assert [p.name for p in write_plots("exp", rows, summary, tmp_path / "results", tmp_path / "none")] == [
        "summary.png"
    ]
    # nothing to plot: a message, not an error after the tables were written
    assert write_plots("exp", rows, summary[["grpo.beta"]], tmp_path / "results", tmp_path / "none") == []


def test_paired_differences_by_hand() -> None:
    from lit3drft.collect import paired_differences, paired_markdown

    rows = []
    values = {("sft", "none"): [30.0, 40.0, 35.0], ("rl", "none"): [33.0, 41.0, 39.0],
              ("sft", "depth"): [20.0, 22.0, None], ("rl", "depth"): [25.0, 21.0, 50.0]}  # fmt: skip
    for (arm, geo), vals in values.items():
        for seed, v in enumerate(vals):
            if v is not None:  # depth seed 2 has no baseline run: its rl run pairs with nothing
                rows.append({"run": f"{arm}_{geo}_{seed}", "arm": arm, "geo": geo, "seed": seed, "test/x": v})
    out = paired_differences(pd.DataFrame(rows), "arm", "sft").set_index(["arm", "geo"])
    none, depth = [3.0, 1.0, 4.0], [5.0, -1.0]
    assert np.isclose(out.loc[("rl", "none"), "test/x mean"], np.mean(none))
    assert np.isclose(out.loc[("rl", "none"), "test/x std"], np.std(none, ddof=1))
    assert (
        np.isclose(out.loc[("rl", "depth"), "test/x mean"], np.mean(depth))
        and out.loc[("rl", "depth"), "test/x n"] == 2
    )
    with pytest.raises(ValueError, match="not in the runs"):
        paired_differences(pd.DataFrame(rows), "arm", "sft_sft")
    # the interval is scipy's one-sample t-interval of the differences; the sign test by hand: 3 of 3 positive
    ci = stats.ttest_1samp(none, 0.0).confidence_interval(0.95)
    assert np.allclose([out.loc[("rl", "none"), "test/x ci_lo"], out.loc[("rl", "none"), "test/x ci_hi"]], ci)
    assert np.isclose(out.loc[("rl", "none"), "test/x sign_p"], 2 * 0.5**3)
    assert np.isclose(out.loc[("rl", "depth"), "test/x sign_p"], 1.0)  # one up, one down
    md = paired_markdown(out.reset_index())
    assert "+2.7 [" in md and "p=0.25 (3)" in md and "| rl | none |" in md


def test_the_sign_test_drops_ties_and_the_verdict_needs_an_interval_that_excludes_zero() -> None:
    from lit3drft.collect import paired_test, verdict

    lo, hi, p = paired_test(np.array([0.0, 2.0, 3.0]))
    assert np.isclose(p, 2 * 0.5**2) and lo < 0 < hi  # the tie is dropped: 2 of 2 positive
    assert paired_test(np.array([0.0, 0.0]))[2] == 1.0
    lo, hi, _ = paired_test(np.array([1.5]))
    assert np.isnan(lo) and np.isnan(hi) and verdict(lo, hi, +1) == "not resolved"
    lo, hi, _ = paired_test(np.array([2.0, 2.5, 3.0, 2.2]))
    assert verdict(lo, hi, +1) == "reproduced" and verdict(lo, hi, -1) == "reversed"
