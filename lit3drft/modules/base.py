"""What the SFT and GRPO modules share: the policy, the optimiser, evaluation and trainable-only checkpoints.

Validation and test decode greedily and feed ``TaskMetrics`` (the reward library's Metric classes), so
the numbers a run reports are computed by the same parsing and IoU code the GRPO reward uses.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from lit3drft.config import EvalConfig, StageConfig
from lit3drft.rewards import RewardConfig, TaskMetrics, parse_answer, score_completions

log = logging.getLogger(__name__)


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``.

    Example:
        >>> [round(warmup_cosine(s, 10, 2, 0.0), 3) for s in (0, 1, 2, 6, 10)]
        [0.333, 0.667, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# Frozen parts (the vision tower and merger under freeze_vision/freeze_merger, peft's base layers) stay in eval mode
# on purpose (Policy.train); PolicyModule.on_fit_start warns about any *trainable* module left in eval mode instead.
# Here, not in fit.py, so that every Trainer fitting a PolicyModule (benchmarks, notebooks) gets it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class PolicyModule(L.LightningModule):
    """Base LightningModule: holds the policy, evaluates with ``TaskMetrics``, saves trainable weights only."""

    def __init__(
        self,
        policy: torch.nn.Module,
        stage: StageConfig,
        reward_cfg: RewardConfig,
        eval_cfg: EvalConfig,
        detection_classes: list[str],
    ) -> None:
        super().__init__()
        self.policy = policy
        self.stage = stage
        self.reward_cfg = reward_cfg
        self.eval_cfg = eval_cfg
        self.val_metrics = TaskMetrics(reward_cfg, detection_classes=detection_classes)
        self.test_metrics = TaskMetrics(reward_cfg, detection_classes=detection_classes)
        self.strict_loading = False  # checkpoints hold trainable weights only
        self.predictions: list[dict[str, Any]] = []
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite gradient

    # ------------------------------------------------------------------ optimiser
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A NaN or inf anywhere in the gradient (a NaN/inf loss, a corrupt input) skips the step.

        The gradients are dropped (``grad = None``), so AdamW leaves those weights, their moments and their
        step counts untouched; the scheduler still advances. Counted in ``train/skipped_steps`` and warned.
        Runs after backward and before clipping and ``optimizer.step`` under automatic (SFT) and manual
        (GRPO) optimisation alike; under DDP the gradients are already all-reduced, so every rank agrees.
        """
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or torch.stack([torch.isfinite(g).all() for g in grads]).all():
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped_steps += 1
        log.warning("step %d: non-finite gradient, optimiser step skipped (%d so far)",
                    self.global_step, self.skipped_steps)  # fmt: skip
        self.log("train/skipped_steps", float(self.skipped_steps), rank_zero_only=True)

    def on_fit_start(self) -> None:
        """Train mode for the trainable parts before Lightning's loop starts (``Policy.train`` keeps the frozen ones
        in eval mode; a checkpoint loads in eval mode, and Lightning does not switch modes by itself)."""
        self.train()
        stray = [n for n, m in self.named_modules() if not m.training and any(p.requires_grad for p in m.parameters())]
        if stray:
            log.warning("modules with trainable parameters in eval mode at the start of training: %s", stray[:5])

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW parameter groups (one by default; a group may carry its own ``lr``)."""
        return [{"params": self.trainable_parameters()}]

    def configure_optimizers(self) -> dict[str, Any]:
        groups = [g for g in self.param_groups() if g["params"]]
        if not groups:
            raise ValueError("the policy has no trainable parameters: check model.finetune and model.freeze")
        opt = torch.optim.AdamW(groups, lr=self.stage.lr, weight_decay=self.stage.weight_decay)
        total = self.stage.max_steps
        warmup = int(round(self.stage.warmup_ratio * total))
        sched = LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup, self.stage.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Any], metrics: TaskMetrics, keep: bool) -> None:
        samples, targets = batch["samples"], batch["targets"]
        was_training = self.policy.training
        self.policy.eval()
        completions = self.policy.generate(samples, max_new_tokens=self.eval_cfg.max_new_tokens)
        self.policy.train(was_training)
        metrics.update(completions, targets)
        if keep:
            self._keep_predictions(samples, completions, targets)

    def _keep_predictions(self, samples: list, completions: list[str], targets: list[dict]) -> None:
        out = score_completions(completions, targets, self.reward_cfg)
        for i, (sample, text) in enumerate(zip(samples, completions)):
            components = {k: round(float(v[i]), 6) for k, v in out.components.items() if bool(out.masks[k][i])}
            self.predictions.append(
                {
                    "id": sample.id,
                    "task": sample.task,
                    "mode": sample.mode,
                    "completion": text,
                    "parsed": parse_answer(text, sample.task, sample.target.get("options")),
                    "reward": round(float(out.total[i]), 6),
                    "components": components,
                }
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, keep=False)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_start(self) -> None:
        self.predictions = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, keep=self.eval_cfg.write_predictions)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")

    def _log_metrics(self, metrics: TaskMetrics, prefix: str) -> None:
        values = metrics.compute()
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, sync_dist=False)
        metrics.reset()

    def gather_predictions(self) -> None:
        """Under DDP, give every rank all ranks' prediction rows in dataset order (Lightning's distributed
        sampler deals rows ``r, r + W, ...`` to rank ``r`` and pads with repeats, which are dropped by id)."""
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        shares: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shares, self.predictions)
        rows, ids = [], set()
        for group in itertools.zip_longest(*shares):
            for row in group:
                if row is not None and row["id"] not in ids:
                    ids.add(row["id"])
                    rows.append(row)
        self.predictions = rows

    def write_predictions(self, path: Path) -> None:
        """Write the last test pass's per-sample rows (``predictions.jsonl``)."""
        with open(path, "w") as fh:
            for row in self.predictions:
                fh.write(json.dumps(row, default=_jsonable) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights (LoRA adapters, geometry prior, or everything under full FT), and
        the random generators' states (GRPO sampling draws from them), which Lightning does not keep."""
        trainable = {f"policy.{n}" for n, p in self.policy.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied at the first batch, not now: whatever draws from the generators between the restore and that
        # batch (creating the loader iterator, callbacks) must not shift the samples of the resumed run
        self._pending_rng = checkpoint.get(RNG_KEY)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if getattr(self, "_pending_rng", None) is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None


RNG_KEY = "lit3drft_rng_states"


def rng_states() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and python ``random`` states of this process."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the legacy global state)
    # tensors, ints and tuples only: Lightning loads checkpoints with ``weights_only=True``
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)
