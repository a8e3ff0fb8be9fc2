"""GRPO with in-loop generation (manual optimisation): the 3D-RFT RL stage, readable top to bottom.

One ``training_step`` = one rollout batch of B prompts:
  1. sample G completions per prompt (frames encoded and prompt prefilled once per prompt, KV cache reused;
     the frozen vision tower's features are kept for step 4);
  2. score each completion against its own prompt's target with the reward registry;
  3. group advantages;
  4. mu passes over micro-batches of completions (loss backward chunking): policy log-probs (each distinct
     prompt of a micro-batch runs once, its completions through its KV cache), reference log-probs through
     the disabled adapter when beta > 0, clipped loss + beta * KL, backward;
     clip, optimiser step, scheduler step after each pass.
All maths lives in ``lit3drft.algorithms.grpo``; all reward logic in ``lit3drft.rewards``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lit3drft.algorithms.config import GRPOConfig
from lit3drft.algorithms.grpo import group_advantages, grpo_loss, zero_variance_groups
from lit3drft.data.sample import TASKS
from lit3drft.modules.base import PolicyModule
from lit3drft.rewards import score_completions


class GRPOModule(PolicyModule):
    """RL stage: batches carry ``samples`` and ``targets``; optimiser steps = rollout batches x mu."""

    no_grad_chunk_factor: int = 4
    """The no-grad log-prob passes (reference, pi_old) take this many micro-batches per forward: they keep no
    activations for backward (only the KV cache while the forward runs), so fewer, larger forwards save time
    at a peak memory that stays bounded by the chunk, independent of B*G."""

    def __init__(self, grpo_cfg: GRPOConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grpo = grpo_cfg
        self.automatic_optimization = False

    def setup(self, stage: str) -> None:
        """Freeze the KL reference before any checkpoint is restored, so a resumed run keeps the same one: the
        policy this stage starts from (the SFT model after an SFT stage), in every fine-tuning mode. Full
        fine-tuning: a frozen copy; LoRA/QLoRA: a frozen copy of the adapter (``Policy.snapshot_reference``).
        On ``--resume`` the previous stages' weights are loaded before this runs, so the snapshot is the same.
        """
        if stage == "fit" and self.grpo.beta > 0:
            self.policy.snapshot_reference()

    # ------------------------------------------------------------------ one rollout batch
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        cfg, G = self.grpo, self.grpo.num_generations
        samples, targets = batch["samples"], batch["targets"]
        t0 = time.perf_counter()
        with torch.no_grad():
            rollout = self.policy.generate_group(
                samples,
                num_generations=G,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                max_new_tokens=cfg.max_new_tokens,
                merge_adapter=cfg.merge_adapter_for_sampling,
            )
        t1 = time.perf_counter()
        # row r of the rollout belongs to prompt r // G: each completion is scored against its own target
        row_targets = [targets[r // G] for r in range(len(rollout.texts))]
        rewards = score_completions(rollout.texts, row_targets, self.reward_cfg)
        t2 = time.perf_counter()

        device = rollout.completion_ids.device
        total = rewards.total.to(device=device, dtype=torch.float32)  # (B*G,)
        advantages = group_advantages(total, G, cfg.scale_rewards)  # (B*G,)
        mask = rollout.completion_mask.float()  # (B*G, T)
        if cfg.mask_truncated_completions:
            mask = mask * (~rollout.truncated).float().unsqueeze(1)
        zero_std = zero_variance_groups(total, G)  # (B,)
        keep = torch.ones_like(total, dtype=torch.bool)
        if cfg.dynamic_sampling == "skip":
            keep = (~zero_std).repeat_interleave(G)
        distributed = self._trainer is not None and self.trainer.world_size > 1
        if distributed:
            # every rank must run the same number of backward passes and optimiser steps (DDP all-reduces in
            # each): skipped rows are masked out instead of dropped, and a rank with nothing left still steps
            mask = mask * keep.float().unsqueeze(1)
            rows = list(range(len(total)))
            if cfg.scale_rewards == "batch":  # the std over every rank's rewards, as one process would use
                everyone = self.all_gather(total)  # (W, B*G): ranks hold equal batches (distributed sampler)
                advantages = group_advantages(everyone.flatten(), G, "batch").view_as(everyone)[self.global_rank]
        else:
            rows = keep.nonzero().flatten().tolist()

        stats = (
            self._optimise(rollout, advantages, mask, rows, int(keep.sum()))
            if distributed or (rows and mask[rows].sum() > 0)
            else {}
        )
        t3 = time.perf_counter()
        self._log_step(rollout, rewards, advantages, zero_std, stats, (t0, t1, t2, t3))
        self._log_groups_per_task(zero_std, [str(t.get("task", "")) for t in targets])

    def _log_groups_per_task(self, zero_std: torch.Tensor, tasks: list[str]) -> None:
        """Per task, every step (0 when absent, so no logger carries a stale value over): the groups in the batch
        and how many had no reward variance (no gradient). Their sums over steps give the share per task."""
        logs = {}
        for task in TASKS:
            mask = torch.tensor([t == task for t in tasks], device=zero_std.device)
            logs[f"train/groups/{task}"] = mask.sum().float()
            logs[f"train/zero_std_count/{task}"] = (zero_std & mask).sum().float()
        self.log_dict(logs, batch_size=len(tasks))

    def _optimise(self, rollout: Any, advantages: torch.Tensor, mask: torch.Tensor, rows: list[int], kept: int) -> dict:
        """μ passes over micro-batches of ``rows``; ``kept`` = completions that count (dynamic sampling)."""
        cfg = self.grpo
        opt = self.optimizers()
        sched = self.lr_schedulers()
        old_logp = None
        if cfg.num_iterations > 1:  # off-policy after the first pass: keep pi_old's log-probs
            with torch.no_grad():
                old_logp = self._logprobs_in_chunks(rollout, rows)
        ref_logp = None
        if cfg.beta > 0:
            with torch.no_grad(), self.policy.reference():
                ref_logp = self._logprobs_in_chunks(rollout, rows)
        n_tokens, n_sequences, scale = mask[rows].sum(), float(kept), 1.0
        if self._trainer is not None and self.trainer.world_size > 1:
            # normalise by the *global* token / completion counts and undo DDP's gradient averaging: the update
            # equals one process's on the union of the ranks' rollouts, for every loss type
            n_tokens = self.all_gather(n_tokens).sum()
            n_sequences = float(self.all_gather(torch.tensor(float(kept), device=mask.device)).sum())
            scale = float(self.trainer.world_size)
        # chunk losses add up to the batch loss; other stats are token means, so weight them by tokens
        loss_sum = torch.zeros((), device=mask.device)
        acc: dict[str, list[torch.Tensor]] = {}
        weights: list[torch.Tensor] = []
        for _ in range(cfg.num_iterations):
            for start in range(0, len(rows), cfg.micro_batch_size):
                chunk = rows[start : start + cfg.micro_batch_size]
                idx = torch.tensor(chunk, device=mask.device)
                logp = self.policy.sequence_logprobs(rollout, rows=chunk)  # (b, T)
                old = old_logp[idx] if old_logp is not None else logp.detach()
                ref = ref_logp[idx] if ref_logp is not None else None
                loss, st = grpo_loss(
                    logp,
                    old,
                    ref,
                    advantages[idx],
                    mask[idx],
                    cfg,
                    num_items_in_batch=n_tokens,
                    num_sequences=max(int(n_sequences), 1),
                )
                self.manual_backward(loss * scale)
                loss_sum += loss.detach().float() * scale / cfg.num_iterations
                weights.append(st.pop("num_tokens").detach().float())
                st.pop("loss", None)
                for k, v in st.items():
                    acc.setdefault(k, []).append(v.detach().float())
            if self.stage.gradient_clip_val > 0:
                self.clip_gradients(opt, gradient_clip_val=self.stage.gradient_clip_val, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        w = torch.stack(weights)
        stats = {k: (torch.stack(v) * w).sum() / w.sum().clamp(min=1) for k, v in acc.items()}
        return {"loss": loss_sum, **stats}

    def _logprobs_in_chunks(self, rollout: Any, rows: list[int]) -> torch.Tensor:
        """No-grad log-probs of every rollout row (rows not in ``rows`` stay 0), ``no_grad_chunk_factor``
        micro-batches per forward."""
        out = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32, device=rollout.completion_ids.device)
        size = self.grpo.micro_batch_size * self.no_grad_chunk_factor
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            out[torch.tensor(chunk, device=out.device)] = self.policy.sequence_logprobs(rollout, rows=chunk).float()
        return out

    # ------------------------------------------------------------------ logging
    def _log_step(self, rollout: Any, rewards: Any, advantages: torch.Tensor, zero_std: torch.Tensor,
                  stats: dict, times: tuple[float, float, float, float]) -> None:  # fmt: skip
        t0, t1, t2, t3 = times
        lengths = rollout.completion_mask.sum(dim=1).float()
        n = len(rollout.texts)
        mask = rollout.completion_mask.float()
        # Monte Carlo entropy: the mean negative log-prob of the sampled tokens under the sampling policy
        entropy = -(rollout.logprobs.float() * mask).sum() / mask.sum().clamp(min=1)
        logs = {
            "train/reward": rewards.total.float().mean(),
            "train/reward_std": rewards.total.float().std() if n > 1 else torch.tensor(0.0),
            "train/advantage_abs_mean": advantages.abs().mean(),
            "train/advantage_std": advantages.std() if n > 1 else torch.tensor(0.0),
            "train/entropy": entropy,
            "train/completion_length": lengths.mean(),
            "train/completion_length_max": lengths.max(),
            "train/truncated_share": rollout.truncated.float().mean(),
            "train/zero_std_groups": zero_std.float().mean(),
            "time/generation_s": torch.tensor(t1 - t0),
            "time/reward_s": torch.tensor(t2 - t1),
            "time/optimisation_s": torch.tensor(t3 - t2),
            "time/generated_tokens_per_s": lengths.sum() / max(t1 - t0, 1e-9),
        }
        for name, value in rewards.components.items():
            m = rewards.masks[name]
            if bool(m.any()):
                logs[f"train/reward/{name}"] = value[m].float().mean()
        logs.update({f"train/{k}": v for k, v in stats.items()})
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in logs.items()}, batch_size=n)
