"""Every file under ``experiments/`` runs end to end (issue 15 section 2), as litgpt runs every shipped recipe.

Each file (for a grid: points that together take every value of every swept key once, at the first seed) runs
for two steps per stage on the CPU through ``lit3drft.fit`` to ``metrics.json``, with **every setting as
shipped** except:
- the model: the tests' small random tiny preset instead of ``model.pretrained`` (a real checkpoint or the base);
- the data: the session's embedded benchmark instead of ``data.root``; a real file's sources keep their task,
  name and frame count and read the benchmark's rows of the same task;
- size knobs: steps, batch sizes, eval samples, generated tokens, group size;
- ``trainer.accelerator: gpu`` becomes ``cpu`` (bf16-mixed, bf16 weights, QLoRA, checkpointing stay as shipped;
  the CUDA-only paths are in ``tests/test_gpu.py``);
- ``init_from: runs/sft_tiny/run`` points at this session's two-step run of ``experiments/sft_tiny.yaml``.
The first point of every file runs in the default suite; the other points of the grids are ``slow``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lit3drft import fit
from lit3drft.config import RunConfig, load_config, run_dir_of
from lit3drft.sweep import point_overrides

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))
EMBEDDED = {  # the session benchmark's rows per task (tests/conftest.py: TINY)
    "detection": ("vgllm", "tasks/{split}/detection_4f.jsonl"),
    "grounding": ("vgllm", "tasks/{split}/grounding_8f.jsonl"),
    "spatial": ("vsibench", "tasks/{split}/vsibench.jsonl"),
}
STEPS = 2


def covering_points(sweep: dict | None) -> list[list[str]]:
    """Overrides of grid points that together take every value of every swept key once (first seed only):
    as many points as the longest axis, not the product."""
    if not sweep:
        return [[]]
    axes = {k: (list(v) if isinstance(v, dict) else v) for k, v in sweep.items() if k != "seed"}
    seed = {"seed": sweep["seed"][0]} if "seed" in sweep else {}
    n = max((len(v) for v in axes.values()), default=1)
    return [point_overrides(sweep, {**{k: v[i % len(v)] for k, v in axes.items()}, **seed}) for i in range(n)]


CASES = [
    pytest.param(
        path, i, overrides, id=f"{path.relative_to(ROOT / 'experiments')}#{i}", marks=[pytest.mark.slow] if i else []
    )  # fmt: skip
    for path in EXPERIMENTS
    for i, overrides in enumerate(covering_points(load_config(path).sweep))
]


def shrink(cfg: RunConfig) -> RunConfig:
    """Size knobs only: two steps a stage, two prompts a step, two held-out pretraining clips."""
    stages = [
        dataclasses.replace(s, max_steps=STEPS, batch_size=min(s.batch_size, 2) if s.batch_size else 0)
        for s in cfg.stages
    ]
    pretrain = dataclasses.replace(cfg.pretrain, val_samples=2,
                                   vision_warmup_steps=min(cfg.pretrain.vision_warmup_steps, 1))  # fmt: skip
    trainer = cfg.trainer
    if trainer.accelerator == "gpu":
        trainer = dataclasses.replace(trainer, accelerator="cpu")
    sources = [
        dataclasses.replace(s, format=EMBEDDED[s.task][0], path=EMBEDDED[s.task][1], media_root="", split="train")
        if (s.format, s.path) != EMBEDDED[s.task]
        else s
        for s in cfg.data.sources
    ]
    return dataclasses.replace(cfg, stages=stages, pretrain=pretrain, trainer=trainer,
                               data=dataclasses.replace(cfg.data, sources=sources))  # fmt: skip


@pytest.fixture(scope="module")
def sft_run(run_overrides, tmp_path_factory) -> Path:
    """A two-step run of ``experiments/sft_tiny.yaml``: what ``init_from: runs/sft_tiny/run`` names."""
    out = tmp_path_factory.mktemp("init-run")
    cfg = shrink(load_config(ROOT / "experiments" / "sft_tiny.yaml", [*run_overrides, f"output_dir={out}"]))
    fit.fit(cfg)
    return out / "sft_tiny" / "run"


@pytest.mark.parametrize(("path", "index", "point"), CASES)
def test_every_shipped_experiment_runs(path, index, point, run_overrides, sft_run, tmp_path) -> None:
    shipped = load_config(path, point)
    overrides = [*run_overrides, *point, f"output_dir={tmp_path}"]
    if shipped.init_from:
        assert shipped.init_from == "runs/sft_tiny/run", f"{path}: a new init_from to stand in for: {shipped.init_from}"
        overrides.append(f"init_from={sft_run}")
    cfg = shrink(load_config(path, overrides))
    # every setting but the substituted ones is as shipped
    for section in ("grpo", "reward", "eval"):
        a, b = dataclasses.asdict(getattr(shipped, section)), dataclasses.asdict(getattr(cfg, section))
        changed = {k for k in a if a[k] != b[k]}
        assert changed <= {"max_new_tokens", "num_generations", "micro_batch_size"}, (section, changed)
    for key in ("finetune", "gradient_checkpointing", "geometry", "dtype", "frames_as", "lora_r"):
        assert getattr(cfg.model, key) == getattr(shipped.model, key), key
    assert cfg.trainer.precision == shipped.trainer.precision
    assert [s.kind for s in cfg.stages] == [s.kind for s in shipped.stages]

    payload = fit.fit(cfg)
    run = run_dir_of(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == payload
    for i, stage in enumerate(cfg.stages):
        name = fit.stage_name(i, stage)
        assert (run / "stages" / name / "trainable.pt").exists(), name
    for split in cfg.eval.splits:
        assert f"{split}/format_rate" in metrics["metrics"], (split, sorted(metrics["metrics"]))
