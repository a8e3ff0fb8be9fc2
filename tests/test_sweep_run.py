"""A real grid run through `lit3drft.sweep` (child processes), its results table, and the notebook on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from lit3drft.collect import collect
from lit3drft.collect import main as collect_main
from lit3drft.config import ConfigError
from lit3drft.sweep import read_rows, sweep

ROOT = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, experiment: str, sweep_block: str) -> Path:
    """A grid file over the tiny base config, testing on the test split only."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"inherit: {ROOT / 'experiments' / 'base' / 'tiny.yaml'}\n"
        f"experiment: {experiment}\n"
        "eval: {splits: [test]}\n"
        f"sweep:\n{sweep_block}"
    )
    return grid


def test_grid_runs_once_per_point_and_feeds_the_notebook(run_overrides, tmp_path) -> None:
    grid = _grid(tmp_path, "smoke_grid", "  stages.0.lr: [1.0e-3, 1.0e-4]\n  seed: [0]\n")
    results, runs = tmp_path / "results", tmp_path / "runs"
    stages = "stages=[{kind: sft, max_steps: 2}, {kind: grpo, max_steps: 2, batch_size: 2}]"  # GRPO curves too
    overrides = [*run_overrides, f"output_dir={runs}", stages]
    rows = sweep(str(grid), overrides, scale="full", jobs=1, results_dir=results)
    assert len(rows) == 2
    csv_path = results / "smoke_grid" / "runs.csv"
    assert [r["run"] for r in read_rows(csv_path)] == ["lr=0.001__seed=0", "lr=0.0001__seed=0"]
    assert {r["scale"] for r in read_rows(csv_path)} == {"full"}
    with pytest.raises(ConfigError, match="recorded at --scale full"):  # another scale never takes these rows
        sweep(str(grid), [*run_overrides, f"output_dir={runs}"], scale="small", jobs=1, results_dir=results)
    # a second call finds both runs finished: nothing re-runs, no row is duplicated
    again = sweep(str(grid), overrides, scale="full", jobs=1, results_dir=results)
    assert len(again) == 2 and len(read_rows(csv_path)) == 2
    summary = collect("smoke_grid", results)
    assert summary["test/format_rate n"].tolist() == [1, 1]
    assert (results / "smoke_grid" / "table.md").read_text().count("\n") == 4

    assert collect_main(["smoke_grid", "--results-dir", str(results), "--runs-dir", str(runs), "--plots",
                         "--paired", "stages.0.lr=0.001"]) == 0  # fmt: skip
    saved = pd.read_csv(results / "smoke_grid" / "curves.csv")
    assert {"train/entropy", "train/zero_std_groups", "train/reward"} <= set(saved["tag"])
    assert len(pd.read_csv(results / "smoke_grid" / "paired.csv")) == 1

    nb = nbformat.read(ROOT / "notebooks" / "ablations.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    nested = results / "at_scale" / "smoke_grid"  # a grid kept under a folder of its scale is found too
    shutil.copytree(results / "smoke_grid", nested)
    for runs_dir in (runs, tmp_path / "no_runs"):  # curves from the runs' event files, then from curves.csv
        for folder in (results / "smoke_grid", nested):
            (folder / "curves.png").unlink(missing_ok=True)
        text = _execute(nb, tmp_path, {"LIT3DRFT_RESULTS": str(results), "LIT3DRFT_RUNS": str(runs_dir)})
        assert (results / "smoke_grid" / "curves.png").exists() and (nested / "curves.png").exists(), text
        assert "sign-test p" in text and "train/entropy" in text and "## at_scale/smoke_grid" in text
    assert "curves from " + str(results / "smoke_grid" / "curves.csv") in text
    assert (results / "smoke_grid" / "summary.png").exists()
    assert isinstance(pd.read_csv(results / "smoke_grid" / "table.csv"), pd.DataFrame)


def _execute(nb, tmp_path: Path, env: dict[str, str]) -> str:
    """Run a copy of ``nb`` with ``env`` set; its printed output, all cells joined."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    start = time.time()
    while not ready():
        assert proc.poll() is None, f"sweep ended (exit {proc.returncode}) before the kill point"
        assert time.time() - start < timeout, "kill point not reached"
        time.sleep(0.02)


def test_a_killed_sweep_finishes_with_one_row_per_run(run_overrides, tmp_path) -> None:
    """SIGKILL the whole sweep (it and its fit child) mid-run and again between runs; a re-run completes
    the grid with exactly one intact row per point, each equal to its run's metrics.json."""
    grid = _grid(tmp_path, "kill_grid", "  seed: [0, 1, 2]\n")
    results, runs = tmp_path / "results", tmp_path / "runs"
    overrides = [*run_overrides, f"output_dir={runs}", "stages=[{kind: sft, max_steps: 3}]"]
    cmd = [sys.executable, "-m", "lit3drft.sweep", str(grid), *overrides, "--results-dir", str(results)]
    csv_path = results / "kill_grid" / "runs.csv"
    kill_points = [
        lambda: (runs / "kill_grid" / "seed=0" / "stages").exists(),  # inside the first run's training
        lambda: len(read_rows(csv_path)) >= 1,  # just after a row was written
        lambda: (runs / "kill_grid" / "seed=2" / "metrics.json").exists(),  # run done, its row maybe not
    ]
    for ready in kill_points:
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
        try:
            _wait_for(proc, ready)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode == 0
    rows = read_rows(csv_path)
    assert sorted(r["run"] for r in rows) == ["seed=0", "seed=1", "seed=2"]
    for row in rows:
        metrics = json.loads((runs / "kill_grid" / row["run"] / "metrics.json").read_text())["metrics"]
        assert float(row["test/format_rate"]) == pytest.approx(metrics["test/format_rate"])
    pd.read_csv(csv_path)  # parses

    # the rows are the record: with the run directories gone (another machine), nothing re-runs
    shutil.rmtree(runs)
    again = sweep(str(grid), overrides, results_dir=results)
    assert sorted(r["run"] for r in again) == ["seed=0", "seed=1", "seed=2"] and not runs.exists()


STRATEGIES = (
    "  strategy:\n"
    "    sft_rl: {stages: [{kind: sft, max_steps: 3}, {kind: grpo, max_steps: 2, batch_size: 2}]}\n"
    "    sft_sft: {stages: [{kind: sft, max_steps: 3}, {kind: sft, max_steps: 2, lr: 1.0e-4}]}\n"
    "  seed: [0]\n"
)


def test_shared_stages_run_once_and_give_what_each_run_alone_gives(run_overrides, tmp_path, capsys) -> None:
    """SFT -> RL and SFT -> SFT share their SFT stage: the sweep trains it once (two jobs racing for it), and
    each branch ends with the weights and metrics of the same point run alone, its row naming the shared stage."""
    grid = _grid(tmp_path, "share_grid", STRATEGIES)
    shared_runs, alone_runs = tmp_path / "shared", tmp_path / "alone"
    base = [*run_overrides, "grpo.temperature=1.0", "grpo.dynamic_sampling=off"]
    rows = sweep(str(grid), [*base, f"output_dir={shared_runs}"], jobs=2, results_dir=tmp_path / "r1")
    out = capsys.readouterr().out
    assert "shared stages: 1 prefix trained once for 2 runs, 3 of 10 training steps saved (30 %)" in out
    assert out.count("[sweep] shared stages ") == 1, out  # the prefix ran once
    assert sorted(r["shared_stages"] for r in rows) == ["0-sft", "0-sft"]
    assert len({r["shared_from"] for r in rows}) == 1
    sweep(str(grid), [*base, f"output_dir={alone_runs}"], results_dir=tmp_path / "r2", share=False)
    assert "shared stages: off" in capsys.readouterr().out
    for run, second in (("strategy=sft_rl__seed=0", "1-grpo"), ("strategy=sft_sft__seed=0", "1-sft")):
        a, b = shared_runs / "share_grid" / run, alone_runs / "share_grid" / run
        assert (a / "stages" / "0-sft" / "SHARED.json").exists() and not (
            b / "stages" / "0-sft" / "SHARED.json"
        ).exists()
        for stage in ("0-sft", second):
            wa, wb = (torch.load(d / "stages" / stage / "trainable.pt") for d in (a, b))
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (run, stage)
        ma, mb = (json.loads((d / "metrics.json").read_text())["metrics"] for d in (a, b))
        assert ma == mb, run
        assert (a / "csv" / "0-sft" / "metrics.csv").exists()  # the branch's curves begin with the shared stage
    # the provenance columns are not swept keys: one table row per strategy
    assert collect("share_grid", tmp_path / "r1")["strategy"].tolist() == ["sft_rl", "sft_sft"]
