"""Exact resume: a run SIGKILLed between checkpoints (once in its SFT stage, once in its GRPO stage) and
continued with ``--resume`` ends with the same weights and metrics as a run never interrupted.

What must come back for that: optimiser and scheduler (Lightning), the training loader's position and
shuffling generator (torchdata's StatefulDataLoader, carried by Lightning's fit loop), and the random
generators GRPO samples completions from (``PolicyModule.on_save_checkpoint``).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "sft_tiny.yaml"
STAGES = "stages=[{kind: sft, max_steps: 6, lr: 1.0e-3}, {kind: grpo, max_steps: 6, lr: 1.0e-4, batch_size: 2}]"


def _overrides(run_overrides: list[str], out: Path) -> list[str]:
    return [
        *run_overrides, f"output_dir={out}", STAGES, "trainer.checkpoint_every_n_steps=2", "grpo.beta=0.04",
        "grpo.temperature=1.0", "eval.splits=[test]",
    ]  # fmt: skip


def _kill_after_checkpoint(cmd: list[str], ckpt: Path, done: Path, timeout: float = 300) -> None:
    """Start ``cmd``; SIGKILL its process group as soon as ``ckpt`` exists (Lightning saves atomically)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    start = time.time()
    try:
        while not ckpt.exists():
            assert proc.poll() is None, f"run ended (exit {proc.returncode}) before {ckpt} was written"
            assert time.time() - start < timeout, f"no {ckpt} after {timeout} s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not done.exists(), f"the kill came too late: {done} was already written (test is vacuous)"


def _step_log(path: Path) -> dict[int, dict[str, float]]:
    """Last logged training row per step of a CSVLogger file (a resumed process re-logs the steps after the
    checkpoint that the killed one had already logged)."""
    rows = [r for r in csv.DictReader(path.open()) if r.get("train/entropy")]
    return {int(r["step"]): {k: float(v) for k, v in r.items() if k.startswith("train/") and v} for r in rows}


@pytest.mark.timeout(600)
def test_killed_and_resumed_run_equals_an_uninterrupted_one(run_overrides, tmp_path) -> None:
    # every run in its own process with the same environment (this pytest process may run torch on other
    # thread counts, which changes float reduction order)
    ref_cmd = [sys.executable, "-m", "lit3drft.fit", str(EXPERIMENT), *_overrides(run_overrides, tmp_path / "a")]
    assert subprocess.run(ref_cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode == 0
    reference = json.loads((tmp_path / "a" / "sft_tiny" / "run" / "metrics.json").read_text())

    overrides = _overrides(run_overrides, tmp_path / "b")
    run = tmp_path / "b" / "sft_tiny" / "run"
    cmd = [sys.executable, "-m", "lit3drft.fit", str(EXPERIMENT), *overrides]
    sft, grpo = run / "stages" / "0-sft", run / "stages" / "1-grpo"
    _kill_after_checkpoint(cmd, sft / "checkpoints" / "last.ckpt", sft / "trainable.pt")
    _kill_after_checkpoint([*cmd, "--resume"], grpo / "checkpoints" / "last.ckpt", grpo / "trainable.pt")
    assert subprocess.run([*cmd, "--resume"], cwd=ROOT, stdout=subprocess.DEVNULL).returncode == 0

    for stage in ("0-sft", "1-grpo"):
        a = torch.load(tmp_path / "a" / "sft_tiny" / "run" / "stages" / stage / "trainable.pt")
        b = torch.load(run / "stages" / stage / "trainable.pt")
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= 1e-6, f"{stage}: weights differ after resume by up to {worst}"
    # the sampled completions after the resume are the same ones (RNG states restored): per-step statistics
    # of the rollouts (entropy of the sampled tokens, lengths) equal the uninterrupted run's
    ref_log = _step_log(tmp_path / "a" / "sft_tiny" / "run" / "csv" / "1-grpo" / "metrics.csv")
    res_log = _step_log(run / "csv" / "1-grpo" / "metrics.csv")
    assert res_log, "the resumed GRPO stage logged no step"
    for step, row in res_log.items():
        for key in ("train/entropy", "train/completion_length", "train/loss"):
            assert row[key] == pytest.approx(ref_log[step][key], abs=1e-6), (step, key)
    resumed = json.loads((run / "metrics.json").read_text())["metrics"]
    assert resumed.keys() == reference["metrics"].keys()
    for key, value in reference["metrics"].items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key
