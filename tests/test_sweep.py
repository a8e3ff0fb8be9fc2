"""Grid expansion, run names, results rows (atomic, de-duplicated) and scale shrinking."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from lit3drft.config import ConfigError, load_config, run_dir_of, to_yaml
from lit3drft.sweep import (
    append_row,
    check_scale,
    expand_grid,
    order_rows,
    point_configs,
    point_overrides,
    read_rows,
    run_name,
    scale_overrides,
    select_points,
)

SWEEP = {
    "strategy": {
        "sft": {"stages": [{"kind": "sft", "max_steps": 6}]},
        "sft_rl": {"stages": [{"kind": "sft", "max_steps": 4}, {"kind": "grpo", "max_steps": 2}]},
    },
    "grpo.beta": [0.0, 0.04],
    "seed": [0, 1, 2],
}


def test_grid_is_the_cartesian_product_with_unique_names() -> None:
    points = expand_grid(SWEEP)
    assert len(points) == 2 * 2 * 3
    names = [run_name(p) for p in points]
    assert len(set(names)) == len(names)
    assert names[0] == "strategy=sft__beta=0.0__seed=0"


def test_point_overrides_realise_the_point() -> None:
    point = {"strategy": "sft_rl", "grpo.beta": 0.04, "seed": 2}
    cfg = load_config(None, point_overrides(SWEEP, point))
    assert [s.kind for s in cfg.stages] == ["sft", "grpo"]
    assert (cfg.grpo.beta, cfg.seed, cfg.stages[1].max_steps) == (0.04, 2, 2)


def test_pinning_selects_points() -> None:
    points, rest = select_points(SWEEP, ["strategy=sft_rl", "seed=1", "trainer.devices=1"])
    assert [p["grpo.beta"] for p in points] == [0.0, 0.04]
    assert rest == ["trainer.devices=1"]
    with pytest.raises(ConfigError, match="no grid point"):
        select_points(SWEEP, ["seed=7"])


def test_rows_are_appended_once_and_atomically(tmp_path: Path) -> None:
    path = tmp_path / "exp" / "runs.csv"
    assert append_row(path, {"run": "a", "seed": 0, "test/f1": 0.5})
    assert not append_row(path, {"run": "a", "seed": 0, "test/f1": 0.9})  # duplicate run: ignored
    assert append_row(path, {"run": "b", "seed": 1, "test/f1": 0.7, "test/new": 1.0})
    rows = read_rows(path)
    assert [r["run"] for r in rows] == ["a", "b"]
    assert rows[0]["test/new"] == ""  # new columns are added, old rows padded
    assert not list(path.parent.glob(".runs.*.tmp"))  # no temporary file left behind
    with open(path) as fh:
        assert len(list(csv.reader(fh))) == 3


def test_rows_end_in_grid_order_whichever_run_finished_first(tmp_path: Path) -> None:
    path = tmp_path / "exp" / "runs.csv"
    for run in ("other", "c", "a", "b"):  # "other": a row of an earlier grid, kept first
        append_row(path, {"run": run, "test/f1": len(run)})
    order_rows(path, ["a", "b", "c"])
    assert [(r["run"], r["test/f1"]) for r in read_rows(path)] == [("other", "5"), ("a", "1"), ("b", "1"), ("c", "1")]


def test_scale_shrinks_steps_not_the_grid() -> None:
    cfg = load_config(None, ["stages=[{kind: sft, max_steps: 200}, {kind: grpo, max_steps: 100}]"])
    small = scale_overrides(cfg, "small")
    assert "stages.0.max_steps=100" in small and "stages.1.max_steps=50" in small
    assert "eval.splits=[test]" in small  # the sweep selects nothing on val: test only at CPU scale
    smoke = scale_overrides(cfg, "smoke")
    assert "stages.1.max_steps=2" in smoke
    shrunk = load_config(None, ["stages=[{kind: sft, max_steps: 200}, {kind: grpo, max_steps: 100}]", *small])
    assert [s.max_steps for s in shrunk.stages] == [100, 50]
    with pytest.raises(ConfigError, match="smoke, small, medium, full"):
        scale_overrides(cfg, "huge")


def test_medium_scale_keeps_the_sft_warm_up_and_halves_what_follows() -> None:
    """A leading SFT stage keeps its steps, every later stage halves (SFT -> SFT and SFT -> RL keep equal extra
    steps), and a grid whose first stage is GRPO halves it as at small."""
    two = load_config(None, ["stages=[{kind: sft, max_steps: 500}, {kind: sft, max_steps: 60}]"])
    assert [o for o in scale_overrides(two, "medium") if o.startswith("stages.")] == [
        "stages.0.max_steps=500", "stages.1.max_steps=30"]  # fmt: skip
    rl = load_config(None, ["stages=[{kind: grpo, max_steps: 60}, {kind: sft, max_steps: 200}]"])
    medium = scale_overrides(rl, "medium")
    assert "stages.0.max_steps=30" in medium and "stages.1.max_steps=100" in medium
    assert "eval.splits=[test]" in medium and "data.max_eval_samples=96" in medium
    # an SFT stage after init_from continues a warm-up (rl_vs_sft_tiny's sft_more arm): halved like the RL arms
    more = load_config(None, ["init_from=runs/x", "stages=[{kind: sft, max_steps: 100}]"])
    assert "stages.0.max_steps=50" in scale_overrides(more, "medium")


def test_a_sweep_refuses_runs_of_another_scale(tmp_path) -> None:
    """Run names do not carry the scale: a medium sweep must not take a small run's directory or row as its own
    (it would report the small figures as medium ones); the same scale passes, so kills and resumes still work."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"output_dir: {tmp_path / 'runs'}\nexperiment: g\nstages: [{{kind: sft, max_steps: 100}}]\n"
                    "sweep:\n  seed: [0]\n")  # fmt: skip
    small, medium = (
        [load_config(grid, ov) for ov in point_configs(str(grid), [], scale)] for scale in ("small", "medium")
    )
    check_scale(small, "small", tmp_path / "results")  # nothing there yet
    run_dir_of(small[0]).mkdir(parents=True)
    (run_dir_of(small[0]) / "config.yaml").write_text(to_yaml(small[0]))  # a small run, killed or finished
    check_scale(small, "small", tmp_path / "results")
    with pytest.raises(
        ConfigError, match=r"config.yaml was run with other scaled settings.*stages.0.max_steps: 50 there, 100 here"
    ):
        check_scale(medium, "medium", tmp_path / "results")
    smoke = [load_config(grid, ov) for ov in point_configs(str(grid), [], "smoke")]
    with pytest.raises(ConfigError, match=r"data.max_eval_samples: 96 there, 8 here"):  # the evaluation subset too
        check_scale(smoke, "smoke", tmp_path / "results")
    (run_dir_of(small[0]) / "config.yaml").unlink()
    append_row(tmp_path / "results" / "g" / "runs.csv", {"run": small[0].run_name, "scale": "small"})
    with pytest.raises(ConfigError, match=r"runs.csv: run seed=0 is recorded at --scale small"):
        check_scale(medium, "medium", tmp_path / "results")
    check_scale(small, "small", tmp_path / "results")


def test_each_point_keeps_its_own_stages_at_every_scale(tmp_path) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "stages: [{kind: sft, max_steps: 100}]\n"
        "sweep:\n"
        "  strategy:\n"
        "    short: {stages: [{kind: sft, max_steps: 60}]}\n"
        "    two: {stages: [{kind: sft, max_steps: 250}, {kind: grpo, max_steps: 60}]}\n"
    )
    steps = {}
    for scale in ("full", "small"):
        for ov in point_configs(str(grid), [], scale):
            cfg = load_config(grid, ov)
            steps[scale, cfg.run_name] = [s.max_steps for s in cfg.stages]
    assert steps["full", "strategy=short"] == [60] and steps["full", "strategy=two"] == [250, 60]
    assert steps["small", "strategy=short"] == [30] and steps["small", "strategy=two"] == [125, 30]


def test_overrides_apply_after_the_variant_and_are_checked_first(tmp_path, monkeypatch) -> None:
    """``stages.1.max_steps=2`` refers to a stage only the ``two`` variant has: valid when that point is pinned
    (it was refused against the base config), and a bad key stops the sweep before any run starts."""
    import lit3drft.sweep as sweep_mod

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"experiment: g\noutput_dir: {tmp_path / 'runs'}\nstages: [{{kind: sft, max_steps: 100}}]\n"
        "sweep:\n  strategy:\n    two: {stages: [{kind: sft, max_steps: 250}, {kind: grpo, max_steps: 60}]}\n"
    )
    calls = []
    monkeypatch.setattr(sweep_mod, "run_point", lambda path, ov, **kw: calls.append(ov) or 1)
    sweep_mod.sweep(str(grid), ["strategy=two", "stages.1.max_steps=2"], results_dir=tmp_path / "results")
    assert len(calls) == 1 and [s.max_steps for s in load_config(grid, calls[0]).stages] == [250, 2]
    with pytest.raises(ConfigError, match="stages.2"):
        sweep_mod.sweep(str(grid), ["strategy=two", "stages.2.max_steps=2"], results_dir=tmp_path / "results")
    assert len(calls) == 1


def test_a_users_stages_list_is_scaled_and_explicit_settings_win(tmp_path) -> None:
    """``sweep GRID "stages=[..]" --scale small`` failed ("'stages' is a list of 1 items": the scale's per-stage steps
    were placed before the user's list) and would have undone the scale; the list is now shrunk like the file's.
    An explicit ``stages.N.max_steps`` or evaluation setting of the user is taken as given."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("stages: [{kind: sft, max_steps: 100}, {kind: grpo, max_steps: 40}]\nsweep:\n  seed: [0, 1]\n")
    one = ["stages=[{kind: sft, max_steps: 60}]"]
    steps = [[s.max_steps for s in load_config(grid, ov).stages] for ov in point_configs(str(grid), one, "small")]
    assert steps == [[30], [30]]
    explicit = ["stages.1.max_steps=7", "data.max_eval_samples=5"]
    cfgs = [load_config(grid, ov) for ov in point_configs(str(grid), explicit, "small")]
    assert [[s.max_steps for s in c.stages] for c in cfgs] == [[50, 7], [50, 7]]
    assert {c.data.max_eval_samples for c in cfgs} == {5} and {tuple(c.eval.splits) for c in cfgs} == {("test",)}


def test_the_last_line_names_the_overridden_experiment(tmp_path, monkeypatch, capsys) -> None:
    import lit3drft.sweep as sweep_mod

    grid = tmp_path / "grid.yaml"
    grid.write_text("experiment: g\nsweep:\n  seed: [0, 1]\n")
    monkeypatch.setattr(sweep_mod, "sweep", lambda *a, **kw: [])
    assert sweep_mod.main([str(grid), "experiment=g_lr", "seed=1"]) == 0
    assert "results/g_lr/runs.csv; tables: python -m lit3drft.collect g_lr" in capsys.readouterr().out


def test_child_threads_split_the_available_cores(monkeypatch) -> None:
    import lit3drft.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [sweep_mod.child_threads(j, {}) for j in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert sweep_mod.child_threads(2, {"OMP_NUM_THREADS": "3"}) == 3
    for odd in ("0", "-1", "x", "\u00b2", "2,1", ""):
        assert sweep_mod.child_threads(2, {"OMP_NUM_THREADS": odd}) == 4


def test_sweep_overrides_of_the_grid_itself_are_refused(tmp_path) -> None:
    import lit3drft.sweep as sweep_mod

    grid = tmp_path / "grid.yaml"
    grid.write_text("experiment: g\nsweep:\n  seed: [0, 1]\n")
    with pytest.raises(ConfigError, match="pin swept keys"):
        sweep_mod.sweep(str(grid), ["sweep.seed=[0]"], results_dir=tmp_path)


def test_plan_prints_the_shared_stages_of_a_committed_grid_and_runs_nothing(tmp_path, capsys) -> None:
    """``--plan``: the strategy arms of one seed and geometry share their SFT stage (sft, sft_sft, sft_rl; not rl)."""
    from lit3drft.sweep import main

    grid = Path(__file__).resolve().parents[1] / "experiments" / "ablation_strategy.yaml"
    assert (
        main([str(grid), "--plan", "--scale", "small", "--results-dir", str(tmp_path), f"output_dir={tmp_path}"]) == 0
    )
    out = capsys.readouterr().out
    assert "shared stages: 6 prefixes trained once for 18 runs" in out
    shared = [line for line in out.splitlines() if line.startswith("[sweep] shared ") and "for strategy=" in line]
    assert len(shared) == 6 and all("strategy=rl__" not in line and line.count("strategy=") == 3 for line in shared)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written
