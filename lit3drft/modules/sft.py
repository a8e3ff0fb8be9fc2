"""SFT: cross-entropy on the answer tokens only (prompt, frames and padding masked)."""

from __future__ import annotations

from typing import Any

import torch

from lit3drft.algorithms.sft import answer_only_cross_entropy
from lit3drft.modules.base import PolicyModule


class SFTModule(PolicyModule):
    """Supervised warm-up; batches carry ``inputs`` built by ``policy.collate(samples, with_answer=True)``."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        inputs = batch["inputs"]
        labels = inputs["labels"]
        logits = self.policy(inputs).logits  # (B, T, V)
        num_tokens = (labels[:, 1:] != -100).sum()
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            # DDP averages gradients over ranks: each rank's answer-token sum over the *global* token count,
            # times the world size, makes that average the token mean of the global batch (as on one process)
            n_global = self.all_gather(num_tokens).sum()
            loss = answer_only_cross_entropy(logits, labels, num_tokens=n_global) * world
        else:
            loss = answer_only_cross_entropy(logits, labels)
        if torch.isfinite(loss):  # a non-finite loss skips the step (PolicyModule.on_before_optimizer_step)
            self.log("train/loss", loss, prog_bar=True, batch_size=labels.shape[0], sync_dist=world > 1)
        self.log("train/answer_tokens", num_tokens.float(), batch_size=labels.shape[0])
        return loss
