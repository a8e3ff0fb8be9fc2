"""A non-finite loss or gradient skips the optimiser step, is counted, and leaves every weight untouched."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pandas as pd
import torch

from lit3drft import fit
from lit3drft.config import load_config

ROOT = Path(__file__).resolve().parents[2]


class _Corrupt(L.Callback):
    """At step 1: NaN frames (SFT, a real NaN loss) or an inf gradient entry (GRPO); records the weights.

    (GRPO runs with weight decay so that a healthy step moves the weights even when every group has equal
    rewards, which is common on the untrained tiny model.)
    """

    def __init__(self, how: str) -> None:
        self.how = how
        self.before: dict[str, torch.Tensor] = {}
        self.after: dict[str, torch.Tensor] = {}
        self.changed_at_step_0 = False

    def _weights(self, module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in module.policy.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.start = self._weights(module)
        if batch_idx == 1:
            self.before = self._weights(module)
            if self.how == "frames":
                batch["inputs"]["pixel_values"].fill_(float("nan"))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if self.how == "grad" and trainer.global_step == 1:
            next(p for p in module.policy.parameters() if p.grad is not None).grad.view(-1)[0] = float("inf")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            now = self._weights(module)
            self.changed_at_step_0 = any(not torch.equal(now[k], self.start[k]) for k in now)
        if batch_idx == 1:
            self.after = self._weights(module)


def _run(run_overrides, tmp_path, how: str, stages: str, monkeypatch) -> tuple[_Corrupt, pd.DataFrame]:
    cfg = load_config(
        ROOT / "experiments" / "sft_tiny.yaml",
        [*run_overrides, f"output_dir={tmp_path}", "eval.splits=[]", stages],
    )
    corrupt = _Corrupt(how)
    build = fit.build_trainer

    def with_corruption(*args, **kwargs):
        trainer = build(*args, **kwargs)
        if args[3] is not None:
            trainer.callbacks.append(corrupt)
        return trainer

    monkeypatch.setattr(fit, "build_trainer", with_corruption)
    fit.fit(cfg)
    logs = pd.concat(pd.read_csv(p) for p in (tmp_path / "sft_tiny" / "run" / "csv").rglob("metrics.csv"))
    return corrupt, logs


def _check(corrupt: _Corrupt, logs: pd.DataFrame) -> None:
    assert corrupt.changed_at_step_0, "the healthy step must move the weights (else the test proves nothing)"
    assert corrupt.before and corrupt.after
    for name, value in corrupt.before.items():
        assert torch.equal(corrupt.after[name], value), f"{name} moved on a skipped step"
        assert torch.isfinite(corrupt.after[name]).all()
    assert set(logs["train/skipped_steps"].dropna()) == {1.0}  # one step skipped, counted
    if "train/loss" in logs:
        assert logs["train/loss"].dropna().map(lambda v: v == v).all()  # no NaN was logged


def test_nan_frames_skip_the_sft_step(run_overrides, tmp_path, monkeypatch) -> None:
    corrupt, logs = _run(
        run_overrides, tmp_path, "frames", "stages=[{kind: sft, max_steps: 3, lr: 1.0e-3}]", monkeypatch
    )
    _check(corrupt, logs)


def test_inf_gradient_skips_the_grpo_step(run_overrides, tmp_path, monkeypatch) -> None:
    corrupt, logs = _run(
        run_overrides,
        tmp_path,
        "grad",
        "stages=[{kind: grpo, max_steps: 3, lr: 1.0e-3, weight_decay: 0.1}]",
        monkeypatch,
    )
    _check(corrupt, logs)
