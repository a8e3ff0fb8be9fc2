"""``python -m lit3drft.fit CONFIG.yaml [key=value ...] [--resume]``: run an experiment's stages, then test.

A run is a list of stages (``sft``, ``grpo``), each a ``lightning.Trainer.fit`` starting from the previous
stage's weights, followed by greedy evaluation of ``eval.splits``. The run directory
(``<output_dir>/<experiment>/<run_name>``) holds ``config.yaml``, per-stage ``checkpoints/`` and
``trainable.pt``, TensorBoard and CSV logs, ``predictions.jsonl`` and, written last, ``metrics.json``.
Re-running a finished run does nothing; ``--resume`` continues an interrupted one from its last checkpoint.
This module is the only place where config turns into objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from lit3drft import sweep
from lit3drft.config import (
    ConfigError,
    RunConfig,
    StageConfig,
    check_paths,
    describe,
    load_config,
    run_dir_of,
    to_yaml,
)
from lit3drft.data.datamodule import LitDataModule
from lit3drft.data.perception import PerceptionDataModule, collate_perception
from lit3drft.models import build_policy, export_pretrained
from lit3drft.modules.base import PolicyModule
from lit3drft.modules.csv_logger import AppendingCSVLogger
from lit3drft.modules.grpo import GRPOModule
from lit3drft.modules.pretrain import PretrainModule
from lit3drft.modules.sft import SFTModule
from lit3drft.runinfo import device_description, format_metrics, git_commit, write_json_atomic

STAGE_DONE = "trainable.pt"
PRETRAINED_DIR = "hf"
"""A ``pretrain`` stage also writes its policy here as a Hugging Face directory (bf16 safetensors + processor)."""


def stage_name(index: int, stage: StageConfig) -> str:
    return f"{index}-{stage.name or stage.kind}"


def stage_seed(seed: int, index: int) -> int:
    """The global seed stage ``index > 0`` starts from (stage 0 starts from ``seed`` itself, before the policy is
    built): the same whether the stages before it ran in this process, were loaded from disk after a kill, or were
    run once for several runs of a grid (``lit3drft.sweep``'s shared prefixes).

    Example:
        >>> stage_seed(0, 1), stage_seed(2, 1)
        (7919, 7921)
    """
    return (seed + 7919 * index) % 2**32


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file renamed into place: ``trainable.pt`` marks a finished stage, so a kill
    during the write must leave no file rather than a truncated one (which every resume then failed to load)."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def latest_stage_weights(run_dir: Path) -> Path:
    """``trainable.pt`` of the last finished stage of a run directory."""
    stages = sorted((run_dir / "stages").glob(f"*/{STAGE_DONE}"), key=lambda p: int(p.parent.name.split("-")[0]))
    if not stages:
        raise ConfigError(f"{run_dir}: no finished stage ({STAGE_DONE}) to load weights from")
    return stages[-1]


def load_trainable(policy: torch.nn.Module, path: Path) -> None:
    """Load trainable weights (``trainable.pt``, a Lightning ``.ckpt``, or a run dir's last stage) into ``policy``."""
    path = Path(path)
    if path.is_dir():
        path = latest_stage_weights(path)
    if not path.is_file():
        raise ConfigError(f"weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" in state:  # Lightning checkpoint: keys carry the module's attribute name; a pretraining
        # stage's also holds its dense heads (`heads.*`), which are not the policy's
        state = {k.removeprefix("policy."): v for k, v in state["state_dict"].items() if k.startswith("policy.")}
    own = dict(policy.named_parameters())
    foreign = [k for k in state if k not in own]
    if foreign:
        raise ValueError(f"{path}: {len(foreign)} weights do not belong to this policy, e.g. {foreign[:3]}")
    policy.load_state_dict(state, strict=False)


def precision_of(cfg: RunConfig) -> str:
    if cfg.trainer.precision != "auto":
        return cfg.trainer.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def build_datamodule(cfg: RunConfig, policy: Any, stage: StageConfig | None) -> LitDataModule | PerceptionDataModule:
    """The DataModule for a stage (its data mix and batch size) or for evaluation (``stage=None``)."""
    data = dataclasses.replace(
        cfg.data,
        seed=cfg.data.seed + cfg.seed,
        load_depth=cfg.data.load_depth or cfg.model.geometry in ("depth", "points", "points_own"),
    )
    if stage is not None and stage.batch_size:
        data = dataclasses.replace(data, batch_size=stage.batch_size)
    if stage is not None and stage.kind == "grpo" and cfg.grpo.dynamic_sampling == "resample":
        # a step receives every batch of prompts it may sample (GRPOModule.training_step takes them B at a time)
        data = dataclasses.replace(data, batch_size=data.batch_size * cfg.grpo.max_generation_batches)
    if stage is not None and stage.sources is not None:
        known = [s.name for s in cfg.data.sources]
        unknown = [n for n in stage.sources if n not in known]
        if unknown:
            raise ConfigError(f"stage {stage.name or stage.kind}: unknown sources {unknown}; valid: {', '.join(known)}")
        data = dataclasses.replace(data, sources=[s for s in cfg.data.sources if s.name in stage.sources])
    if stage is not None and stage.kind == "pretrain":  # rooms rendered on the fly, never the benchmark's scenes
        return PerceptionDataModule(cfg.pretrain, data.synth, data.batch_size, data.eval_batch_size,
                                    collate_fn=functools.partial(collate_perception, policy=policy),
                                    num_workers=data.num_workers)  # fmt: skip
    if stage is not None and stage.kind == "sft":  # teacher forcing needs the answer tokens in the batch
        return LitDataModule(data, collate_fn=lambda samples: {"inputs": policy.collate(samples, with_answer=True)})
    return LitDataModule(data)


def build_module(cfg: RunConfig, policy: Any, stage: StageConfig, dm: Any) -> PolicyModule:
    kwargs = dict(
        policy=policy,
        stage=stage,
        reward_cfg=cfg.reward,
        eval_cfg=cfg.eval,
        detection_classes=dm.detection_classes,
    )
    if stage.kind == "sft":
        return SFTModule(**kwargs)
    if stage.kind == "pretrain":
        return PretrainModule(pretrain_cfg=cfg.pretrain, **kwargs)
    return GRPOModule(grpo_cfg=cfg.grpo, **kwargs)


def build_trainer(cfg: RunConfig, run_dir: Path, name: str, stage: StageConfig | None) -> L.Trainer:
    t = cfg.trainer
    callbacks: list[Any] = []
    if t.progress_bar:
        callbacks.append(RichProgressBar())
    loggers: list[Any] = []
    kwargs: dict[str, Any] = {}
    if stage is not None:
        callbacks += [
            ModelCheckpoint(
                dirpath=run_dir / "stages" / name / "checkpoints",
                save_last=True,
                save_top_k=0,
                every_n_train_steps=t.checkpoint_every_n_steps,
            ),
            LearningRateMonitor(logging_interval="step"),
        ]
        loggers = [
            TensorBoardLogger(save_dir=run_dir, name="tb", version=name, default_hp_metric=False),
            # flushed at every logging step: a killed run loses no logged row (Lightning's default is 100 steps)
            AppendingCSVLogger(
                save_dir=run_dir, name="csv", version=name, flush_logs_every_n_steps=t.log_every_n_steps
            ),
        ]
        kwargs = dict(
            max_steps=stage.max_steps,
            max_epochs=-1,
            val_check_interval=t.val_every_n_steps or None,
            check_val_every_n_epoch=None,
            limit_val_batches=t.limit_val_batches if t.val_every_n_steps else 0,
            log_every_n_steps=t.log_every_n_steps,
            accumulate_grad_batches=stage.accumulate_grad_batches if stage.kind == "sft" else 1,
            gradient_clip_val=(stage.gradient_clip_val or None) if stage.kind == "sft" else None,
        )
    return L.Trainer(
        accelerator=t.accelerator,
        devices=_devices(t.devices),
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision_of(cfg),
        logger=loggers or False,
        callbacks=callbacks,
        enable_checkpointing=stage is not None,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        deterministic=t.deterministic,
        num_sanity_val_steps=0,
        default_root_dir=run_dir,
        **kwargs,
    )


def _devices(value: str) -> Any:
    return int(value) if value.isdigit() else value


STAGE_TEST = "test_metrics.json"
"""Test metrics of a stage that is not the last (``eval.after_stages``), written when the stage ends."""


def run_stages(cfg: RunConfig, policy: Any, run_dir: Path, resume: bool) -> tuple[PolicyModule | None, dict]:
    """Train each stage in order; a finished stage (``trainable.pt`` present) is loaded, not re-run. Returns the
    last module and, with ``eval.after_stages``, the test metrics of the earlier stages (``<stage>/test/...``)."""
    module, tested = None, {}
    for i, stage in enumerate(cfg.stages):
        if i > 0:  # a stage's randomness does not depend on what the stages before it drew (or on a kill between)
            L.seed_everything(stage_seed(cfg.seed, i), workers=True, verbose=False)
        name = stage_name(i, stage)
        stage_dir = run_dir / "stages" / name
        done = stage_dir / STAGE_DONE
        dm = build_datamodule(cfg, policy, stage)
        module = build_module(cfg, policy, stage, dm)
        test_after = cfg.eval.after_stages and i < len(cfg.stages) - 1 and stage.kind != "pretrain"
        if done.exists() and (not test_after or (stage_dir / STAGE_TEST).exists()):
            print(f"[lit3drft] stage {name}: finished earlier, loading {done}")
            load_trainable(policy, done)
            if test_after:
                tested.update({f"{name}/{k}": v for k, v in json.loads((stage_dir / STAGE_TEST).read_text()).items()})
            continue
        if done.exists():  # trained, killed before its test
            load_trainable(policy, done)
            tested.update(_test_stage(cfg, policy, module, run_dir, stage_dir, name))
            continue
        last = stage_dir / "checkpoints" / "last.ckpt"
        ckpt = str(last) if resume and last.exists() else None
        print(
            f"[lit3drft] stage {name}: {stage.kind}, {stage.max_steps} steps" + (f", resuming {last}" if ckpt else "")
        )
        trainer = build_trainer(cfg, run_dir, name, stage)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        if trainer.is_global_zero:
            if stage.kind == "pretrain":  # the perception base, loadable as model.pretrained
                export_pretrained(policy, stage_dir / PRETRAINED_DIR)
            trainable = {n: p.detach().cpu() for n, p in policy.named_parameters() if p.requires_grad}
            save_atomic(trainable, done)
        if test_after:
            tested.update(_test_stage(cfg, policy, module, run_dir, stage_dir, name))
    return module, tested


def _test_stage(cfg: RunConfig, policy: Any, module: PolicyModule, run_dir: Path, stage_dir: Path,
                name: str) -> dict[str, float]:  # fmt: skip
    """Test the policy as stage ``name`` left it; the metrics go to the stage directory and are returned prefixed."""
    print(f"[lit3drft] stage {name}: testing it before the next stage (eval.after_stages)")
    trainer = build_trainer(cfg, run_dir, "eval", None)
    results = trainer.test(module, datamodule=build_datamodule(cfg, policy, None), verbose=False)
    metrics = {k: float(v) for row in results for k, v in row.items()}
    if trainer.is_global_zero:
        write_json_atomic(stage_dir / STAGE_TEST, metrics)
    return {f"{name}/{k}": v for k, v in metrics.items()}


def side_by_side(metrics: dict[str, float], stages: list[str]) -> str:
    """The final test table with a column per earlier tested stage (``<stage>/test/...`` keys), then the rest.

    Example:
        >>> print(side_by_side({"0-sft/test/f1": 1.0, "test/f1": 2.0}, ["0-sft"]))
        metric      0-sft     final
        test/f1      1.00      2.00
    """
    cols = [s for s in stages if any(k.startswith(f"{s}/") for k in metrics)]
    final = {k: v for k, v in metrics.items() if k.startswith("test/") and "/f1/" not in k}
    width = max(map(len, final), default=10)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c:>8}" for c in [*cols, "final"])]
    for k in sorted(final):
        vals = [metrics.get(f"{c}/{k}", float("nan")) for c in cols] + [final[k]]
        lines.append(f"{k:<{width}}  " + "  ".join(f"{v:8.2f}" for v in vals))
    return "\n".join(lines)


def evaluate_splits(cfg: RunConfig, policy: Any, module: PolicyModule, run_dir: Path) -> dict[str, float]:
    """Greedy evaluation of ``cfg.eval.splits``; writes ``predictions.jsonl`` for the last split tested."""
    dm = build_datamodule(cfg, policy, None)
    trainer = build_trainer(cfg, run_dir, "eval", None)
    metrics: dict[str, float] = {}
    for split in cfg.eval.splits:
        if split == "val":
            results = trainer.validate(module, datamodule=dm, verbose=False)
        elif split == "test":
            results = trainer.test(module, datamodule=dm, verbose=False)
            if cfg.eval.write_predictions:
                module.gather_predictions()  # every rank's share (a collective under DDP)
                if trainer.is_global_zero:
                    module.write_predictions(run_dir / "predictions.jsonl")
        else:
            raise ConfigError(f"bad value {split!r} in 'eval.splits'; valid choices: val, test")
        for row in results:
            metrics.update({k: float(v) for k, v in row.items()})
    return metrics


def fit(cfg: RunConfig, resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Run ``cfg`` end to end and return what ``metrics.json`` holds."""
    run_dir = run_dir_of(cfg)
    metrics_file = run_dir / "metrics.json"
    check_paths(cfg)  # a missing init_from / model.pretrained fails here, naming the key, before any work
    if metrics_file.exists() and not force:
        print(f"[lit3drft] {run_dir} is finished (metrics.json exists): nothing to do")
        return json.loads(metrics_file.read_text())
    if launched_rank() != 0:
        # a DDP worker process that Lightning (or torchrun/SLURM) started for this run: rank 0 holds the lock,
        # owns the run directory and writes metrics.json; this process only trains and evaluates its share
        return _fit_locked(cfg, run_dir, resume=True, force=False, leader=False)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f".{run_dir.name}.lock", "w") as lock:  # one writer per run directory
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"{run_dir} is being written by another process; not starting a second one") from None
        return _fit_locked(cfg, run_dir, resume, force)


def launched_rank() -> int:
    """0 in the process a user started; non-zero in the extra ranks a launcher started (Lightning's DDP
    launcher sets ``LOCAL_RANK``/``NODE_RANK`` in the children it starts; torchrun ``RANK``; SLURM ``SLURM_PROCID``)."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", 0) or 0) + int(env.get("LOCAL_RANK", 0) or 0)


def _fit_locked(cfg: RunConfig, run_dir: Path, resume: bool, force: bool, leader: bool = True) -> dict[str, Any]:
    metrics_file = run_dir / "metrics.json"
    names = [stage_name(i, st) for i, st in enumerate(cfg.stages)]
    if leader:
        if force and run_dir.exists():
            shutil.rmtree(run_dir)  # --force: start over from nothing, never mix old stages into a new run
        if run_dir.exists() and any(run_dir.iterdir()) and not resume:
            raise SystemExit(f"{run_dir} holds an unfinished run: pass --resume to continue it or --force to restart")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    start = time.time()
    commit = git_commit()  # the code the run starts with: a commit made while it trains must not be credited
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    policy = build_policy(cfg.model)
    if cfg.init_from:
        load_trainable(policy, Path(cfg.init_from))
    module, tested = run_stages(cfg, policy, run_dir, resume)
    assert module is not None, "a run needs at least one stage"
    metrics = {**tested, **getattr(module, "last_val", {}), **evaluate_splits(cfg, policy, module, run_dir)}
    payload = {
        "metrics": metrics,
        "wall_time_s": round(time.time() - start, 1),
        "commit": commit,
        "device": device_description(),
        "experiment": cfg.experiment,
        "run_name": cfg.run_name or "run",
    }
    if not leader:
        return payload
    write_json_atomic(metrics_file, payload)
    print(format_metrics({k: v for k, v in metrics.items() if not k.startswith(tuple(f"{s}/" for s in names))}))
    if tested:
        print("[lit3drft] test metrics after each stage:\n" + side_by_side(metrics, names))
    print(f"[lit3drft] wrote {metrics_file} ({payload['wall_time_s']:.0f} s)")
    return payload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit3drft.fit", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="experiment YAML (omit with --help-config)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. grpo.beta=0.04")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--force", action="store_true", help="delete the run directory and run from scratch")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--point", action="store_true", help=argparse.SUPPRESS)  # one grid point (lit3drft.sweep)
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and doc")
    args = parser.parse_intermixed_args(argv)
    if args.help_config:
        for key, default, doc in describe():
            print(f"{key} = {default}\n    {doc}")
        return 0
    if args.config is None:
        parser.error("a config file is required")
    try:
        overrides = list(args.overrides)
        if not args.point and sweep.has_sweep(args.config):
            # a file with a sweep: block is a grid: run it (or the points the overrides pin) ...
            if not args.print_config:
                return 0 if sweep.sweep(args.config, overrides) else 1
            overrides = sweep.point_configs(args.config, overrides)[0]  # ... or show its first point
        cfg = load_config(args.config, [*overrides, *(["sweep=null"] if args.point else [])])
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg))
        return 0
    try:
        fit(cfg, resume=args.resume, force=args.force)
    except ConfigError as err:  # raised before any work: bad paths, unknown sources, bad eval splits
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
