"""Whole runs on the tiny benchmark and model: run directory, metrics, re-run, resume, evaluate."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from lit3drft import evaluate, fit
from lit3drft.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(run_overrides: list[str], tmp_path: Path, *extra: str):
    return load_config(ROOT / "experiments" / "sft_tiny.yaml", [*run_overrides, f"output_dir={tmp_path}", *extra])


def test_five_step_sft_writes_the_run_directory(run_overrides, tmp_path, monkeypatch) -> None:
    cfg = _cfg(run_overrides, tmp_path, "stages=[{kind: sft, max_steps: 5, lr: 1.0e-3}]")
    stages = tmp_path / "sft_tiny" / "run" / "stages"  # a commit lands once training has begun: not the run's code
    monkeypatch.setattr(fit, "git_commit", lambda: "def5678" if stages.exists() else "abc1234")
    payload = fit.fit(cfg)
    assert payload["commit"] == "abc1234"
    run = tmp_path / "sft_tiny" / "run"
    for name in ("config.yaml", "metrics.json", "predictions.jsonl", "stages/0-sft/trainable.pt"):
        assert (run / name).exists(), name
    assert list((run / "tb" / "0-sft").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == payload
    assert {"test/format_rate", "val/format_rate"} <= set(metrics["metrics"])
    assert metrics["wall_time_s"] > 0 and metrics["commit"] and metrics["device"]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert rows and {"id", "completion", "parsed", "reward", "components"} <= set(rows[0])
    ckpt = torch.load(run / "stages" / "0-sft" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5
    # checkpoints keep trainable weights only, and every trainable weight is there
    trainable = {n for n, p in fit.build_policy(cfg.model).named_parameters() if p.requires_grad}
    assert {k.removeprefix("policy.") for k in ckpt["state_dict"]} == trainable

    # a finished run is not re-run
    mtime = (run / "metrics.json").stat().st_mtime_ns
    assert fit.fit(cfg) == payload
    assert (run / "metrics.json").stat().st_mtime_ns == mtime

    # evaluate reproduces the test metrics of the run from its directory
    assert evaluate.main([str(run), *run_overrides]) == 0
    again = json.loads((run / "eval-test" / "metrics.json").read_text())["metrics"]
    for key, value in metrics["metrics"].items():
        if key.startswith("test/"):
            assert again[key] == pytest.approx(value, abs=1e-6), key


class _Crash(L.Callback):
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash after step 3")


def test_resume_continues_at_the_last_checkpoint(run_overrides, tmp_path, extra_callbacks) -> None:
    cfg = _cfg(run_overrides, tmp_path, "stages=[{kind: sft, max_steps: 4}]", "trainer.checkpoint_every_n_steps=2")
    extra_callbacks(_Crash())
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit.fit(cfg)
    run = tmp_path / "sft_tiny" / "run"
    last = run / "stages" / "0-sft" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert not (run / "metrics.json").exists()
    with pytest.raises(SystemExit, match="--resume"):
        fit.fit(cfg)  # an unfinished run is never silently restarted

    seen: list[int] = []

    class _Steps(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            seen.append(trainer.global_step)

    extra_callbacks(_Steps())
    fit.fit(cfg, resume=True)
    assert seen == [2, 3]  # continued from step 2, not from 0
    assert torch.load(last, weights_only=False)["global_step"] == 4
    assert (run / "metrics.json").exists()


def test_bad_key_on_the_command_line_is_named(capsys) -> None:
    code = fit.main([str(ROOT / "experiments" / "sft_tiny.yaml"), "grpo.betta=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "grpo.betta" in err and "beta" in err


def test_a_run_directory_has_one_writer(run_overrides, tmp_path) -> None:
    cfg = _cfg(run_overrides, tmp_path, "stages=[{kind: sft, max_steps: 1}]")
    run = fit.run_dir_of(cfg)
    run.parent.mkdir(parents=True)
    with open(run.parent / f".{run.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit, match="another process"):
            fit.fit(cfg, force=True)
    assert not run.exists()  # --force did not delete anything while another writer held the run


def test_missing_init_from_fails_before_any_work(run_overrides, tmp_path, capsys) -> None:
    code = fit.main([str(ROOT / "experiments" / "sft_tiny.yaml"), *run_overrides, f"output_dir={tmp_path}",
                     f"init_from={tmp_path / 'no_such_run'}"])  # fmt: skip
    assert code != 0
    assert "init_from" in capsys.readouterr().err and not (tmp_path / "sft_tiny").exists()


def test_a_stage_marker_is_never_left_half_written(tmp_path, monkeypatch) -> None:
    """``trainable.pt`` marks a finished stage: a kill while it is written must not leave a truncated one (seen in
    a loaded CI run: every later ``--resume`` of that run died on ``EOFError`` loading it)."""

    def killed_mid_write(obj, f) -> None:
        Path(f).write_bytes(b"\x80\x02")  # the first bytes of a pickle, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(fit.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        fit.save_atomic({"w": torch.zeros(1)}, tmp_path / "trainable.pt")
    assert not (tmp_path / "trainable.pt").exists()
    monkeypatch.undo()
    fit.save_atomic({"w": torch.ones(1)}, tmp_path / "trainable.pt")
    assert torch.load(tmp_path / "trainable.pt")["w"].item() == 1.0


def test_trainable_parts_train_in_train_mode_and_frozen_parts_stay_in_eval(run_overrides, tmp_path, extra_callbacks):
    """HF loads checkpoints in eval mode and Lightning keeps modes: without ``Policy.train`` a run trained in eval
    mode, where activation checkpointing never acts. Checked at the first step of an SFT and a GRPO stage."""
    seen: list[dict] = []

    class _Modes(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args) -> None:
            if trainer.global_step == 0:
                policy = pl_module.policy
                layers = [m for n, m in policy.named_modules() if n.endswith("language_model.layers.0")]
                visual = [m for n, m in policy.named_modules() if n.endswith("model.visual")]
                seen.append({"layer": layers[0].training, "checkpointing": layers[0].gradient_checkpointing,
                             "visual": visual[0].training})  # fmt: skip

    extra_callbacks(_Modes())
    cfg = _cfg(run_overrides, tmp_path, "model.gradient_checkpointing=true", "eval.splits=[]",
               "stages=[{kind: sft, max_steps: 1}, {kind: grpo, max_steps: 1}]")  # fmt: skip
    fit.fit(cfg)
    assert seen == [{"layer": True, "checkpointing": True, "visual": False}] * 2
