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

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from lit3drft.algorithms.config import GRPOConfig
from lit3drft.algorithms.grpo import component_variance_groups, group_advantages, grpo_loss, zero_variance_groups
from lit3drft.data.sample import TASKS
from lit3drft.modules.base import PolicyModule
from lit3drft.rewards import score_completions


class GRPOModule(PolicyModule):
    """RL stage: batches carry ``samples`` and ``targets``; optimiser steps = rollout batches x mu."""

    no_grad_chunk_factor: int = 4
    """The no-grad log-prob passes (reference, pi_old) take this many micro-batches per forward: they keep no
    activations for backward (only the KV cache while the forward runs), so fewer, larger forwards save time
    at a peak memory that stays bounded by the chunk, independent of B*G."""

    merge_reference: bool = True
    """The reference pass (beta > 0, LoRA) runs with the reference adapter folded into the base weights
    (``Policy.merged_adapter`` inside ``Policy.reference``): one matmul per projection instead of the base's plus
    the adapter's two, for a transient copy of the adapted weights (as sampling already takes)."""

    max_idle_batches: int = 100
    """Consecutive rollout batches without an update (dynamic sampling found no group with reward variance) after
    which the stage stops with an error instead of drawing batches for ever (``max_steps`` counts updates)."""

    def __init__(self, grpo_cfg: GRPOConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grpo_cfg = grpo_cfg
        self.automatic_optimization = False
        self._idle = 0
        self._components: set[str] = set()
        """Reward components seen so far (logged every step from then on)."""

    def setup(self, stage: str) -> None:
        """Freeze the KL reference before any checkpoint is restored, so a resumed run keeps the same one: the
        policy this stage starts from (the SFT model after an SFT stage), in every fine-tuning mode. Full
        fine-tuning: a frozen copy; LoRA/QLoRA: a frozen copy of the adapter (``Policy.snapshot_reference``).
        On ``--resume`` the previous stages' weights are loaded before this runs, so the snapshot is the same.
        """
        if stage == "fit" and self.grpo_cfg.beta > 0:
            self.policy.snapshot_reference()

    # ------------------------------------------------------------------ one rollout batch
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        cfg = self.grpo_cfg
        samples, targets = batch["samples"], batch["targets"]
        distributed = self._trainer is not None and self.trainer.world_size > 1
        resample = cfg.dynamic_sampling == "resample"
        B = -(-len(samples) // cfg.max_generation_batches) if resample else len(samples)
        t0 = time.perf_counter()
        parts: list[_Part] = []
        for start in range(0, len(samples), B):  # one batch of B prompts unless resampling needs more
            parts.append(self._rollout(samples[start : start + B], targets[start : start + B], distributed))
            if not resample:
                break
            have = torch.tensor(sum(int((~p.zero_std).sum()) for p in parts), device=parts[0].total.device)
            if distributed:  # every rank draws as many batches as the neediest one (equal backward passes)
                have = self.all_gather(have).min()
            if int(have) >= B:
                break
        t2 = time.perf_counter()
        budget = B if resample else None  # resample: the first B groups with variance, in the order drawn
        for p in parts:
            kept_rows = (
                torch.ones_like(p.total, dtype=torch.bool)
                if cfg.dynamic_sampling == "off"
                else (~p.zero_std).repeat_interleave(cfg.num_generations)
            )
            if budget is not None:
                groups = kept_rows.view(-1, cfg.num_generations)[:, 0]
                over = groups & (groups.cumsum(0) > budget)
                kept_rows = kept_rows & ~over.repeat_interleave(cfg.num_generations)
                budget -= int((groups & ~over).sum())
            p.kept = int(kept_rows.sum())
            if distributed:  # masked, not dropped: every rank runs the same backward passes
                p.mask, p.rows = p.mask * kept_rows.float().unsqueeze(1), list(range(len(p.total)))
            else:
                p.rows = kept_rows.nonzero().flatten().tolist()
        tokens = sum((p.mask[p.rows].sum() for p in parts), torch.zeros((), device=parts[0].total.device))
        if distributed:  # one decision for all ranks: the update happens when the global batch has a token left
            tokens = self.all_gather(tokens).sum()
        stats = self._optimise(parts) if float(tokens) > 0 else {}
        self._idle = 0 if stats else self._idle + 1
        if self._idle >= self.max_idle_batches:
            raise RuntimeError(
                f"GRPO: no update in {self._idle} consecutive rollout batches (grpo.dynamic_sampling="
                f"{cfg.dynamic_sampling}: no group had reward variance, or every completion was masked): max_steps "
                "counts updates, so the stage would never end. Check the reward config and the SFT warm-up, raise "
                "grpo.num_generations or grpo.temperature, or set grpo.dynamic_sampling: off"
            )
        t3 = time.perf_counter()
        self._log_step(parts, stats, (t0, t0 + sum(p.generation_s for p in parts), t2, t3))
        self._log_groups_per_task(parts)

    def _rollout(self, samples: list, targets: list, distributed: bool) -> _Part:
        """Sample G completions for each prompt, score each against its own prompt's target, group advantages."""
        cfg, G = self.grpo_cfg, self.grpo_cfg.num_generations
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
        device = rollout.completion_ids.device
        total = rewards.total.to(device=device, dtype=torch.float32)  # (B*G,)
        advantages = group_advantages(total, G, cfg.scale_rewards)  # (B*G,)
        if distributed and cfg.scale_rewards == "batch":  # the std over every rank's rewards, as one process
            everyone = self.all_gather(total)  # (W, B*G): ranks hold equal batches (distributed sampler)
            advantages = group_advantages(everyone.flatten(), G, "batch").view_as(everyone)[self.global_rank]
        mask = rollout.completion_mask.float()  # (B*G, T)
        if cfg.mask_truncated_completions:
            mask = mask * (~rollout.truncated).float().unsqueeze(1)
        tasks = [str(t.get("task", "")) for t in targets]
        return _Part(rollout, rewards, total, advantages, mask, zero_variance_groups(total, G), tasks, t1 - t0,
                     time.perf_counter() - t1)  # fmt: skip

    def _log_groups_per_task(self, parts: list[_Part]) -> None:
        """Per task, every step (0 when absent, so no logger carries a stale value over): the groups sampled
        and how many had no reward variance (no gradient). Their sums over steps give the share per task. Per
        reward component seen so far (``train/reward_groups/grounding/iou``, ``train/reward_zero_std/grounding/iou``,
        ``train/reward_count/grounding/iou``; 0 in a step without it): the groups it scores, how many of them it
        scores all alike, and the completions it scores. ``train/reward/<component>`` (its mean, ``_log_step``) has
        no value in a step without it, and Lightning's loggers then repeat the last one: a reader keeps it only
        where the count is > 0 (``collect.curves`` does)."""
        zero_std = torch.cat([p.zero_std for p in parts])
        tasks = [t for p in parts for t in p.tasks]
        logs = {}
        for task in TASKS:
            mask = torch.tensor([t == task for t in tasks], device=zero_std.device)
            logs[f"train/groups/{task}"] = mask.sum().float()
            logs[f"train/zero_std_count/{task}"] = (zero_std & mask).sum().float()
        G = self.grpo_cfg.num_generations
        self._components |= {k for p in parts for k in p.rewards.components}
        for name in sorted(self._components):  # e.g. grounding/iou on its own; 0 in a step without it
            counts = [component_variance_groups(p.rewards.components[name], p.rewards.masks[name], G)
                      for p in parts if name in p.rewards.components] or [(0, 0)]  # fmt: skip
            logs[f"train/reward_groups/{name}"] = torch.tensor(float(sum(c[0] for c in counts)))
            logs[f"train/reward_zero_std/{name}"] = torch.tensor(float(sum(c[1] for c in counts)))
            scored = sum(int(p.rewards.masks[name].sum()) for p in parts if name in p.rewards.components)
            logs[f"train/reward_count/{name}"] = torch.tensor(float(scored))
        self.log_dict(logs, batch_size=len(tasks))

    def _optimise(self, parts: list[_Part]) -> dict:
        """μ passes over micro-batches of every part's ``rows``; one optimiser step per pass."""
        cfg = self.grpo_cfg
        opt = self.optimizers()
        sched = self.lr_schedulers()
        old_logp: list[torch.Tensor | None] = [None] * len(parts)
        if cfg.num_iterations > 1:  # off-policy after the first pass: keep pi_old's log-probs
            with torch.no_grad():
                old_logp = [self._logprobs_in_chunks(p.rollout, p.rows) for p in parts]
        ref_logp: list[torch.Tensor | None] = [None] * len(parts)
        if cfg.beta > 0:
            merged = self.policy.merged_adapter if self.merge_reference else contextlib.nullcontext
            with torch.no_grad(), self.policy.reference(), merged():  # merged inside reference: its adapter
                ref_logp = [self._logprobs_in_chunks(p.rollout, p.rows) for p in parts]
        device = parts[0].mask.device
        num_tokens = sum((p.mask[p.rows].sum() for p in parts), torch.zeros((), device=device))
        n_sequences, scale = float(sum(p.kept for p in parts)), 1.0
        if self._trainer is not None and self.trainer.world_size > 1:
            # normalise by the *global* token / completion counts and undo DDP's gradient averaging: the update
            # equals one process's on the union of the ranks' rollouts, for every loss type
            num_tokens = self.all_gather(num_tokens).sum()
            n_sequences = float(self.all_gather(torch.tensor(n_sequences, device=device)).sum())
            scale = float(self.trainer.world_size)
        # chunk losses add up to the batch loss; other stats are token means, so weight them by tokens
        loss_sum = torch.zeros((), device=device)
        acc: dict[str, list[torch.Tensor]] = {}
        weights: list[torch.Tensor] = []
        for _ in range(cfg.num_iterations):
            for p, old_p, ref_p in zip(parts, old_logp, ref_logp):
                for start in range(0, len(p.rows), cfg.micro_batch_size):
                    chunk = p.rows[start : start + cfg.micro_batch_size]
                    idx = torch.tensor(chunk, device=device)
                    logp = self.policy.sequence_logprobs(p.rollout, rows=chunk)  # (b, T)
                    old = old_p[idx] if old_p is not None else logp.detach()
                    ref = ref_p[idx] if ref_p is not None else None
                    loss, st = grpo_loss(
                        logp,
                        old,
                        ref,
                        p.advantages[idx],
                        p.mask[idx],
                        cfg,
                        num_tokens=num_tokens,
                        num_sequences=max(int(n_sequences), 1),
                    )
                    self.manual_backward(loss * scale)
                    loss_sum += loss.detach().float() * scale / cfg.num_iterations
                    weights.append(st.pop("chunk_tokens").detach().float())
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
        size = self.grpo_cfg.micro_batch_size * self.no_grad_chunk_factor
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            out[torch.tensor(chunk, device=out.device)] = self.policy.sequence_logprobs(rollout, rows=chunk).float()
        return out

    # ------------------------------------------------------------------ logging
    def _log_step(self, parts: list[_Part], stats: dict, times: tuple[float, float, float, float]) -> None:
        t0, t1, t2, t3 = times
        lengths = torch.cat([p.rollout.completion_mask.sum(dim=1).float() for p in parts])
        total = torch.cat([p.total for p in parts])
        advantages = torch.cat([p.advantages for p in parts])
        zero_std = torch.cat([p.zero_std for p in parts])
        n = len(total)
        # Monte Carlo entropy: the mean negative log-prob of the sampled tokens under the sampling policy
        logp_sum = sum(float((p.rollout.logprobs.float() * p.rollout.completion_mask).sum()) for p in parts)
        entropy = torch.tensor(-logp_sum / max(float(lengths.sum()), 1.0))
        logs = {
            "train/reward": total.mean(),
            "train/reward_std": total.std() if n > 1 else torch.tensor(0.0),
            "train/advantage_abs_mean": advantages.abs().mean(),
            "train/advantage_std": advantages.std() if n > 1 else torch.tensor(0.0),
            "train/entropy": entropy,
            "train/completion_length": lengths.mean(),
            "train/completion_length_max": lengths.max(),
            "train/truncated_share": torch.cat([p.rollout.truncated for p in parts]).float().mean(),
            "train/zero_std_groups": zero_std.float().mean(),
            "train/generation_batches": torch.tensor(float(len(parts))),
            "train/kept_completions": torch.tensor(float(sum(p.kept for p in parts))),
            "time/generation_s": torch.tensor(t1 - t0),
            "time/reward_s": torch.tensor(sum(p.reward_s for p in parts)),
            "time/optimisation_s": torch.tensor(t3 - t2),
            "time/generated_tokens_per_s": lengths.sum() / max(t1 - t0, 1e-9),
        }
        for name in sorted({k for p in parts for k in p.rewards.components}):
            values = [p.rewards.components[name][p.rewards.masks[name]] for p in parts if name in p.rewards.components]
            value = torch.cat(values)
            if value.numel():
                logs[f"train/reward/{name}"] = value.float().mean()
        logs.update({f"train/{k}": v for k, v in stats.items()})
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float32) for k, v in logs.items()}, batch_size=n)


@dataclass
class _Part:
    """One batch of B prompts sampled within a step (several under ``dynamic_sampling: resample``)."""

    rollout: Any
    rewards: Any
    total: torch.Tensor
    """``(B*G,)`` total reward per completion."""
    advantages: torch.Tensor
    mask: torch.Tensor
    """``(B*G, T)`` tokens in the loss (float)."""
    zero_std: torch.Tensor
    """``(B,)`` groups without reward variance."""
    tasks: list[str]
    generation_s: float
    reward_s: float
    rows: list[int] = field(default_factory=list)
    """Completions in the update (all of them under DDP, the dropped ones masked)."""
    kept: int = 0
    """Completions that count (dynamic sampling)."""
