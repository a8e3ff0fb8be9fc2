"""The GRPO stage on the tiny model: rewards line up with their own prompts, equal rewards move nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from lit3drft import fit
from lit3drft.config import load_config
from lit3drft.modules import grpo as grpo_module

ROOT = Path(__file__).resolve().parents[2]


def _grpo_cfg(run_overrides, tmp_path, *extra):
    return load_config(
        ROOT / "experiments" / "sft_tiny.yaml",
        [*run_overrides, f"output_dir={tmp_path}", "experiment=grpo_test", "eval.splits=[]",
         "stages=[{kind: grpo, max_steps: 2, lr: 1.0e-3}]", *extra],
    )  # fmt: skip


def test_every_completion_is_scored_against_its_own_prompt(run_overrides, tmp_path, monkeypatch) -> None:
    seen: list[tuple] = []
    real_score = grpo_module.score_completions
    real_step = grpo_module.GRPOModule.training_step

    def spy_step(self, batch, batch_idx):
        real_generate = self.policy.generate_group

        def spy_generate(samples, **kwargs):
            # shuffle the prompts: the rollout must still carry each row's own prompt index
            rollout = real_generate(samples, **kwargs)
            seen.append(("rollout", samples, batch["targets"], rollout))
            return rollout

        self.policy.generate_group = spy_generate
        try:
            return real_step(self, batch, batch_idx)
        finally:
            del self.policy.generate_group

    def spy_score(texts, targets, cfg):
        seen.append(("score", texts, targets))
        return real_score(texts, targets, cfg)

    monkeypatch.setattr(grpo_module.GRPOModule, "training_step", spy_step)
    monkeypatch.setattr(grpo_module, "score_completions", spy_score)
    cfg = _grpo_cfg(run_overrides, tmp_path, "data.batch_size=3", "grpo.num_generations=3")
    fit.fit(cfg)
    rollouts = [s for s in seen if s[0] == "rollout"]
    scores = [s for s in seen if s[0] == "score"]
    assert len(rollouts) == len(scores) == 2
    for (_, samples, targets, rollout), (_, texts, scored_targets) in zip(rollouts, scores):
        assert texts == rollout.texts and len(texts) == 3 * len(samples)
        tok = fit.build_policy(cfg.model).processor.tokenizer
        for r, target in enumerate(scored_targets):
            g = int(rollout.group[r])
            assert target is targets[g]  # the very target object of the row's own prompt
            prompt_text = tok.decode(rollout.prompt_inputs["input_ids"][g])
            assert samples[g].prompt.split("\n")[0][:40] in prompt_text


def test_equal_rewards_leave_the_weights_untouched(run_overrides, tmp_path) -> None:
    cfg = _grpo_cfg(run_overrides, tmp_path, "reward.format_weight=0", "reward.task_weight=0", "grpo.beta=0",
                    "stages.0.weight_decay=0")  # fmt: skip
    policy = fit.build_policy(cfg.model)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    module, _ = fit.run_stages(cfg, policy, fit.run_dir_of(cfg), resume=False)
    after = dict(module.policy.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    log = pd.read_csv(fit.run_dir_of(cfg) / "csv" / "0-grpo" / "metrics.csv")
    assert log["train/zero_std_groups"].dropna().eq(1.0).all()
    values = log.drop(columns=["epoch", "step"]).stack().dropna()  # the CSV is sparse: one row per log call
    assert len(values) > 10
    assert torch.isfinite(torch.tensor(values.astype(float).to_numpy())).all()


def test_grpo_step_logs_and_changes_weights(run_overrides, tmp_path) -> None:
    cfg = _grpo_cfg(run_overrides, tmp_path, "grpo.beta=0.04", "reward.task_weight=1")
    policy = fit.build_policy(cfg.model)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    fit.run_stages(cfg, policy, fit.run_dir_of(cfg), resume=False)
    log = pd.read_csv(fit.run_dir_of(cfg) / "csv" / "0-grpo" / "metrics.csv")
    for key in ("train/reward", "train/kl", "train/entropy", "train/clip_ratio/low", "train/completion_length", "train/zero_std_groups",
                "time/generation_s", "time/generated_tokens_per_s", "train/reward/format"):  # fmt: skip
        assert key in log.columns, key
    # every step logs every task's group count and zero-variance count; they add up to the batch's prompts
    steps = log.dropna(subset=["train/groups/detection"])
    groups = sum(steps[f"train/groups/{t}"] for t in ("detection", "grounding", "spatial"))
    prompts = cfg.stages[0].batch_size or cfg.data.batch_size
    assert len(steps) and (groups == prompts).all()
    zero = sum(steps[f"train/zero_std_count/{t}"] for t in ("detection", "grounding", "spatial"))
    assert (zero == steps["train/zero_std_groups"] * groups).all()
    # with non-zero advantages somewhere, every trainable tensor moved unless all groups were flat
    if (log["train/zero_std_groups"].dropna() < 1).any():
        changed = [not torch.equal(before[n], p) for n, p in policy.named_parameters() if p.requires_grad]
        assert any(changed)
