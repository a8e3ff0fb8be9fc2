"""The KL reference of a GRPO stage is the policy it starts from (the SFT policy), also after a kill and
``--resume`` inside the GRPO stage (issue 15 section 1): LoRA on the CPU; QLoRA where bitsandbytes runs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit3drft import fit
from lit3drft.config import load_config
from tests.models.conftest import _make_sample

ROOT = Path(__file__).resolve().parents[1]


class _Crash(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if pl_module.__class__.__name__ == "GRPOModule" and trainer.global_step == 2:
            raise RuntimeError("simulated kill inside the GRPO stage")


class _ReferenceProbe(L.Callback):
    """At the first GRPO step after the resume: reference logits, current logits, on a fixed batch."""

    def __init__(self, batch: dict) -> None:
        self.batch: dict = batch
        self.seen: dict = {}

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if pl_module.__class__.__name__ != "GRPOModule" or self.seen:
            return
        policy = pl_module.policy
        self.seen["step"] = trainer.global_step
        with torch.no_grad():
            self.seen["policy"] = policy(policy.to_device(self.batch)).logits.float()
            with policy.reference():
                self.seen["reference"] = policy(policy.to_device(self.batch)).logits.float()


def _logits(policy, batch) -> torch.Tensor:
    with torch.no_grad():
        return policy.eval()(policy.to_device(batch)).logits.float()


@pytest.mark.parametrize("finetune", ["lora", "qlora", "full", "lora+prior"])
def test_reference_after_kill_and_resume_inside_grpo_is_the_sft_policy(run_overrides, tmp_path, extra_callbacks,
                                                                       finetune) -> None:  # fmt: skip
    """``lora+prior``: the points prior trained too (``freeze_geometry`` off): the reference keeps the SFT prior."""
    finetune, _, prior = finetune.partition("+")
    prior_overrides = ["model.geometry=points", "model.freeze_geometry=false"] if prior else []
    cfg = load_config(ROOT / "experiments" / "sft_tiny.yaml", [
        *run_overrides, *prior_overrides, f"output_dir={tmp_path}", f"model.finetune={finetune}", "grpo.beta=0.04",
        "stages=[{kind: sft, max_steps: 3, lr: 2.0e-2}, {kind: grpo, max_steps: 4, lr: 1.0e-2}]",
        "trainer.checkpoint_every_n_steps=1", "eval.splits=[]",
    ])  # fmt: skip
    extra_callbacks(_Crash())
    with pytest.raises(RuntimeError, match="simulated kill"):
        fit.fit(cfg)
    run = tmp_path / "sft_tiny" / "run"
    assert (run / "stages" / "0-sft" / "trainable.pt").exists()
    assert not (run / "stages" / "1-grpo" / "trainable.pt").exists()

    base = fit.build_policy(cfg.model)
    batch = base.collate([_make_sample(0), _make_sample(1, labels=True)], with_answer=True)
    untuned = _logits(base, batch)
    sft = fit.build_policy(cfg.model)
    fit.load_trainable(sft, run / "stages" / "0-sft" / "trainable.pt")
    sft_logits = _logits(sft, batch)  # a frozen copy of the SFT policy
    assert not torch.allclose(sft_logits, untuned, atol=1e-4), "the SFT stage must have changed the policy"

    probe = _ReferenceProbe(batch)
    extra_callbacks(probe)
    fit.fit(cfg, resume=True)
    assert probe.seen["step"] == 2  # resumed inside the GRPO stage, not restarted
    assert torch.allclose(probe.seen["reference"], sft_logits, atol=1e-5)
    assert not torch.allclose(probe.seen["reference"], untuned, atol=1e-4)
