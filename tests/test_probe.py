"""``python -m lit3drft.probe``: the image-swap gap and the class-agnostic detection figures of a run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lit3drft import fit, probe
from lit3drft.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_probe_of_a_run_directory(run_overrides, tmp_path) -> None:
    cfg = load_config(ROOT / "experiments" / "sft_tiny.yaml", [*run_overrides, f"output_dir={tmp_path}",
                                                               "stages=[{kind: sft, max_steps: 2}]", "eval.splits=[]"])  # fmt: skip
    fit.fit(cfg)
    run = tmp_path / "sft_tiny" / "run"
    assert probe.main([str(run), *run_overrides, "--stage", "0-sft"]) == 0
    out = json.loads((run / "probe-test-0-sft.json").read_text())["probe"]
    for task in ("detection", "grounding"):
        d = out[task]
        assert d["swap_gap"] == pytest.approx(d["ce_swapped"] - d["ce_own"]) and d["samples"] >= 2
    assert {"miou", "label_acc", "centre_err", "parsed"} <= set(out["detection"])
    for task in ("grounding", "spatial"):  # the question-swap gap: another sample's prompt on the own frames
        d = out[task]
        assert d["question_swap_gap"] == pytest.approx(d["ce_question_swapped"] - d["ce_own"]), task
    # two different questions (of different types) were swapped: a random model's answer CE moves with its prompt
    assert out["spatial"]["question_swap_gap"] != 0
    assert "question_swap_gap" not in out["detection"]
    # the gap compares real frames: swapping a sample with a copy of itself changes nothing
    policy = fit.build_policy(cfg.model)
    dm = fit.build_datamodule(cfg, policy, None)
    dm.setup("test")
    s = dm.datasets["test"][0]
    same = probe.swap_gap(policy.eval(), [s, replace(s, id="copy")], batch_size=2)
    assert same["swap_gap"] == pytest.approx(0.0, abs=1e-6)
    same = probe.swap_gap(policy.eval(), [s, replace(s, id="copy")], batch_size=2, swap="prompt")
    assert same["swap_gap"] == pytest.approx(0.0, abs=1e-6)
