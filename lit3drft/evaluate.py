"""``python -m lit3drft.evaluate RUN_DIR | CHECKPOINT [--split test] [--config CFG] [key=value ...]``.

Evaluates a finished (or interrupted) run, a trainable-weights file (``trainable.pt``, ``*.ckpt``) or a
Hugging Face checkpoint directory on a split with greedy decoding, and writes ``metrics.json`` and
``predictions.jsonl`` (id, completion, parsed answer, per-sample reward components) into ``--out``
(default ``<run_dir>/eval-<split>``), then prints the metrics table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lit3drft.config import ConfigError, RunConfig, StageConfig, load_config
from lit3drft.fit import build_datamodule, build_module, build_trainer, latest_stage_weights, load_trainable
from lit3drft.models import build_policy
from lit3drft.runinfo import device_description, format_metrics, git_commit, write_json_atomic


def resolve_target(target: Path, config: str | None, overrides: list[str]) -> tuple[RunConfig, Path | None, Path]:
    """``(config, weights file or None, default output dir)`` for a run dir, weights file or HF checkpoint."""
    if (target / "config.json").exists():  # a Hugging Face checkpoint directory
        cfg = load_config(config, [*overrides, f"model.pretrained={target}", "model.preset=''"])
        return cfg, None, Path(cfg.output_dir) / cfg.experiment / target.name
    if target.is_file():  # trainable.pt or a Lightning checkpoint inside a run dir
        run_dir = next((p for p in target.parents if (p / "config.yaml").exists()), None)
        if run_dir is None and config is None:
            raise ConfigError(f"{target}: no config.yaml above it; pass --config")
        cfg = load_config(config or run_dir / "config.yaml", overrides)
        return cfg, target, run_dir or target.parent
    if (target / "config.yaml").exists():
        cfg = load_config(config or target / "config.yaml", overrides)
        return cfg, latest_stage_weights(target), target
    raise ConfigError(f"{target}: not a run directory (config.yaml), weights file or HF checkpoint (config.json)")


def target_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    """The command line shared by the tools that read a run, weights file or HF checkpoint (evaluate, probe)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("target", help="run directory, trainable.pt / .ckpt, or HF checkpoint directory")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides (data.*, eval.*)")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--config", help="experiment YAML (needed for an HF checkpoint)")
    parser.add_argument("--out", help=out_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = target_parser("python -m lit3drft.evaluate", __doc__.splitlines()[0],
                           "output directory (default <run_dir>/eval-<split>)")  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    try:
        cfg, weights, base = resolve_target(Path(args.target), args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else base / f"eval-{args.split}"
    start = time.time()
    policy = build_policy(cfg.model)
    if weights is not None:
        load_trainable(policy, weights)
    dm = build_datamodule(cfg, policy, None)
    module = build_module(cfg, policy, StageConfig(kind="sft"), dm)
    trainer = build_trainer(cfg, out, "eval", None)
    run = trainer.validate if args.split == "val" else trainer.test
    results = run(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for row in results for k, v in row.items()}
    if args.split == "test":
        module.gather_predictions()  # every rank's share under DDP (a collective: all ranks call it)
    if not trainer.is_global_zero:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if args.split == "test":
        module.write_predictions(out / "predictions.jsonl")
    payload = {
        "metrics": metrics,
        "split": args.split,
        "target": str(args.target),
        "wall_time_s": round(time.time() - start, 1),
        "commit": git_commit(),
        "device": device_description(),
    }
    write_json_atomic(out / "metrics.json", payload)
    print(format_metrics(metrics))
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
