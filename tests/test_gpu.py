"""The CUDA-only settings of the shipped real files (``-m gpu``; skipped where no CUDA device is visible).

``experiments/real/*.yaml`` at smoke scale on one GPU, every setting as shipped (bf16-mixed, bf16 weights, LoRA or
QLoRA nf4 on CUDA, activation checkpointing, beta > 0), the tests' tiny random preset for the checkpoint and the
embedded benchmark for the data: one SFT step, one GRPO step, test, through ``lit3drft.fit`` to ``metrics.json``.
Run: ``python -m pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from lit3drft import fit
from lit3drft.config import load_config, run_dir_of
from tests.test_experiments_run import ROOT, shrink

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16-mixed, QLoRA on CUDA)"),
]


@pytest.mark.parametrize("name", ["detection_lora", "grounding_qlora", "vsibench_lora"])
def test_real_file_on_cuda_at_smoke_scale(name, run_overrides, tmp_path) -> None:
    path = ROOT / "experiments" / "real" / f"{name}.yaml"
    shipped = load_config(path)
    assert shipped.trainer.accelerator == "gpu" and shipped.trainer.precision == "bf16-mixed"
    cfg = shrink(load_config(path, [*run_overrides, f"output_dir={tmp_path}", "eval.splits=[test]"]))
    cfg = dataclasses.replace(cfg, stages=[dataclasses.replace(s, max_steps=1) for s in cfg.stages],
                              trainer=dataclasses.replace(cfg.trainer, accelerator="gpu"))  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    payload = fit.fit(cfg)
    metrics = json.loads((run_dir_of(cfg) / "metrics.json").read_text())
    assert metrics == payload and "test/format_rate" in metrics["metrics"]
    assert metrics["device"].startswith(torch.cuda.get_device_name(0))
    assert torch.cuda.max_memory_allocated() > 0
