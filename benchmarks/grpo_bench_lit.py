"""The lit3drft side of ``bench_grpo_step.py``: the real ``GRPOModule`` fitted by a real Lightning Trainer, and its
levers (ablations of its fast paths)."""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from grpo_bench_common import LR, TARGET, Timer, model_config, perturb_lora  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from lit3drft.algorithms import GRPOConfig, grpo_loss  # noqa: E402
from lit3drft.config import EvalConfig, StageConfig  # noqa: E402
from lit3drft.models import build_policy  # noqa: E402
from lit3drft.rewards import RewardConfig, score_completions  # noqa: E402


# ---------------------------------------------------------------------------------------------------- lit3drft
class StepBaton(Callback):
    """Lets a ``lightning.Trainer`` running in a worker thread take one training batch per ``release()``, and
    times it from ``on_train_batch_start`` to ``on_train_batch_end`` (wall and process CPU time): the benchmark
    steps through Lightning's own fit loop (manual optimisation, ``clip_gradients``, ``log_dict``) while the
    caller alternates it with TRL's steps. Only one side runs at any moment."""

    def __init__(self) -> None:
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.ready = threading.Event()  # set once the fit loop waits at its first batch (setup, hooks done)
        self.stop, self.error = False, None
        self.total = self.cpu = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ready.set()
        self.go.acquire()
        if self.stop:
            trainer.should_stop = True
            return -1  # skip the rest of the epoch: fit ends
        self._t, self._c = time.perf_counter(), time.process_time()
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.total, self.cpu = time.perf_counter() - self._t, time.process_time() - self._c
        self.done.release()

    def release(self) -> tuple[float, float]:
        """Run one batch; its ``(wall s, CPU s)``."""
        self.go.release()
        self.done.acquire()
        if self.error is not None:
            raise RuntimeError("the lit3drft Trainer failed") from self.error
        return self.total, self.cpu


class LitSide:
    """The real ``GRPOModule`` fitted by a real ``lightning.Trainer`` (in a worker thread, one batch per step)."""

    def __init__(self, args: argparse.Namespace, beta: float, samples: list) -> None:
        import lightning as L

        from lit3drft.models import generation
        from lit3drft.modules import grpo as grpo_module

        self.args, self.samples = args, samples
        self.timer = Timer()
        policy = build_policy(model_config(args, args.finetune))
        if args.finetune != "qlora":  # a 4-bit model is placed by from_pretrained's device_map
            policy.to(args.device)
        perturb_lora(policy.model)
        policy.stop_token_ids = []  # no stop token: every completion is exactly --new-tokens long (equal work)
        cfg = GRPOConfig(num_generations=args.generations, beta=beta, num_iterations=1, loss_type="dapo",
                         max_new_tokens=args.new_tokens, micro_batch_size=args.micro_batch, top_k=None)  # fmt: skip
        stage = StageConfig(kind="grpo", max_steps=1000, lr=LR, warmup_ratio=0.0, gradient_clip_val=1.0)
        module = grpo_module.GRPOModule(grpo_cfg=cfg, policy=policy, stage=stage, reward_cfg=RewardConfig(),
                                        eval_cfg=EvalConfig(), detection_classes=[])  # fmt: skip
        self.module, self.policy, self.cfg = module, policy, cfg
        # phase timers: on the instance / the module namespace the step looks them up in
        policy.generate_group = self.timer.wrap(policy.generate_group, "generation")
        policy.sequence_logprobs = self.timer.wrap(policy.sequence_logprobs, "logprobs")
        self._score = grpo_module.score_completions
        grpo_module.score_completions = self.timer.wrap(score_completions, "rewards")
        self.captured: list[dict[str, Any]] | None = None
        self._grpo_module, self._generation = grpo_module, generation
        self.baton = StepBaton()
        self.trainer = L.Trainer(accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
                                 max_epochs=1, max_steps=-1, logger=False, enable_checkpointing=False,
                                 enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                                 limit_val_batches=0, callbacks=[self.baton])  # fmt: skip
        batch = self.batch()
        loader = torch.utils.data.DataLoader([batch] * 100_000, batch_size=None, collate_fn=lambda b: b)

        def fit() -> None:
            try:
                self.trainer.fit(module, train_dataloaders=loader)
            except BaseException as err:  # reported by the next release()
                self.baton.error = err
                self.baton.done.release()

        self.thread = threading.Thread(target=fit, daemon=True, name="lit3drft-trainer")
        self.thread.start()

    def close(self) -> None:
        """End the Trainer's fit (its thread returns)."""
        self.baton.stop = True
        self.baton.go.release()
        self.thread.join(timeout=60)

    def batch(self) -> dict[str, Any]:
        return {"samples": self.samples, "targets": [TARGET] * len(self.samples)}

    def step(self, lever: list[str] | None = None) -> dict[str, float]:
        """One ``GRPOModule.training_step``, timed by phase; ``lever`` (default ``--lever``) patched in meanwhile."""
        self.timer.acc.clear()
        self.timer.tokens = 0
        with levers(self, self.args.lever if lever is None else lever):
            total, cpu = self.baton.release()  # one batch of the Trainer's fit loop
        out = {"total": total, **self.timer.split(total), "cpu": cpu}
        length = float(self.trainer.callback_metrics["train/completion_length"])
        out["tokens"] = length * len(self.samples) * self.args.generations
        return out

    def check_loss(self, lever: list[str] | None = None) -> dict[str, float]:
        """Run one step recording every ``grpo_loss`` call; the micro-batch losses must sum to the full-batch loss."""
        calls: list[dict[str, Any]] = []
        rollouts: list[Any] = []
        real_loss, real_gen = self._grpo_module.grpo_loss, self.policy.generate_group

        def spy_loss(logp, old, ref, adv, mask, cfg, num_tokens=None, num_sequences=None):
            loss, st = real_loss(logp, old, ref, adv, mask, cfg, num_tokens, num_sequences)
            calls.append({"logp": logp.detach().clone(), "old": None if old is None else old.detach().clone(),
                          "ref": None if ref is None else ref.clone(), "adv": adv.clone(), "mask": mask.clone(),
                          "loss": loss.detach().clone()})  # fmt: skip
            return loss, st

        def spy_gen(*a, **k):
            rollouts.append(real_gen(*a, **k))
            return rollouts[-1]

        real_score = self._grpo_module.score_completions

        def varied_score(texts, targets, cfg):  # rewards with variance in every group: the check is not 0 == 0
            out = real_score(texts, targets, cfg)
            out.total = torch.rand(len(texts), generator=torch.Generator().manual_seed(len(texts)))
            return out

        self.baton.ready.wait()  # the Trainer has taken the KL reference: move the policy away from it
        perturb_lora(self.policy.model, seed=len(rollouts) + 1)
        self._grpo_module.grpo_loss, self.policy.generate_group = spy_loss, spy_gen
        self._grpo_module.score_completions = varied_score
        try:
            self.step(lever)
        finally:
            self._grpo_module.grpo_loss, self.policy.generate_group = real_loss, real_gen
            self._grpo_module.score_completions = real_score
        cat = {
            k: torch.cat([c[k] for c in calls]) if calls[0][k] is not None else None for k in calls[0] if k != "loss"
        }
        reference, _ = grpo_loss(cat["logp"], cat["old"], cat["ref"], cat["adv"], cat["mask"], self.cfg)
        step_loss = torch.stack([c["loss"] for c in calls]).sum()
        torch.testing.assert_close(step_loss, reference, rtol=1e-5, atol=1e-7)
        # at beta 0 with mu = 1 the loss *value* is 0 by construction (ratio 1, advantages summing to 0 per group over
        # equal-length completions; its gradient is not): there the check is that the advantages are not all 0
        assert cat["adv"].abs().max() > 0, "the loss check compared zeros (no advantage)"
        assert self.cfg.beta == 0 or reference.abs() > 1e-6, "the loss check compared zeros"
        # the rollout's sampling-time log-probs vs the training forward's (before the optimiser step)
        rollout = rollouts[-1]
        m = rollout.completion_mask.bool()
        sample_gap = (rollout.logprobs - cat["logp"])[m].abs().max().item()
        return {"step_loss": step_loss.item(), "reference_loss": reference.item(), "micro_batches": len(calls),
                "max_abs_sampling_vs_forward_logp": sample_gap}  # fmt: skip

    def check_lever(self, lever: list[str]) -> dict[str, float]:
        """Log-probs and LoRA gradients of one micro-batch with and without ``lever``, on the same rollout."""
        policy = self.policy
        with torch.no_grad():
            rollout = policy.generate_group(self.samples, num_generations=self.args.generations,
                                            max_new_tokens=self.args.new_tokens)  # fmt: skip
        rows = list(range(min(self.args.micro_batch, len(rollout.texts))))
        params = [p for p in policy.parameters() if p.requires_grad]

        def run():
            logp = policy.sequence_logprobs(rollout, rows=rows)
            weights = torch.linspace(-1, 1, logp.numel(), device=logp.device).view_as(logp)
            return logp.detach(), torch.autograd.grad((logp * weights).sum(), params)

        base_logp, base_grad = run()
        with levers(self, lever):
            logp, grad = run()
        rel = max(((a - b).norm() / b.norm().clamp(min=1e-30)).item() for a, b in zip(grad, base_grad))
        return {"max_abs_logp_diff": (logp - base_logp).abs().max().item(), "max_rel_grad_diff": rel}


@contextlib.contextmanager
def levers(side: LitSide, names: list[str]):
    """lit3drft's step with some of its fast paths switched off (ablations), undone on exit; module docstring."""
    gen, module, policy = side._generation, side.module, side.policy
    undo: list[tuple[Any, str, Any, bool]] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        undo.append((obj, name, getattr(obj, name), name in vars(obj)))
        setattr(obj, name, value)

    for lever in names:
        if lever == "no-lm-head-checkpoint":
            patch(gen, "checkpoint", lambda fn, *a, use_reentrant=False: fn(*a))
        elif lever == "no-shared-prefix":

            def full_forward(*a, _real=policy.sequence_logprobs, **k):
                return _real(*a, **{**k, "shared_prefix": False})

            patch(policy, "sequence_logprobs", full_forward)
        elif lever == "no-visual-reuse":

            def drop_features(*a, _real=policy.generate_group, **k):
                rollout = _real(*a, **k)
                rollout.visual_features = None  # the training passes encode the frames again
                return rollout

            patch(policy, "generate_group", drop_features)
        elif lever == "no-merge":
            patch(module.grpo_cfg, "merge_adapter_for_sampling", False)
        elif lever == "no-merged-reference":
            patch(module, "merge_reference", False)
        elif lever == "ref-micro-batch":
            patch(module, "no_grad_chunk_factor", 1)
        elif lever:
            raise ValueError(f"unknown lever {lever!r}")
    try:
        yield
    finally:
        for obj, name, value, own in reversed(undo):
            if own:
                setattr(obj, name, value)
            else:
                delattr(obj, name)
