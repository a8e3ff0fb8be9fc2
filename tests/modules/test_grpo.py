"""The GRPO stage on the tiny model: rewards line up with their own prompts, equal rewards move nothing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from lit3drft import fit
from lit3drft.config import load_config
from lit3drft.modules import grpo as grpo_module
from lit3drft.rewards.registry import RewardOutput

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


def test_grpo_step_logs_and_changes_weights(run_overrides, tmp_path, monkeypatch) -> None:
    real_score = grpo_module.score_completions

    def with_variance(texts, targets, cfg):  # the real scores, plus a spread inside every group of 2
        out = real_score(texts, targets, cfg)
        spread = torch.tensor([0.1 * (r % 2) for r in range(len(texts))], dtype=out.total.dtype)
        return RewardOutput(total=out.total + spread, components=out.components, masks=out.masks)

    monkeypatch.setattr(grpo_module, "score_completions", with_variance)
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
    # per reward component: the groups it scores (its task's) and the flat ones among them
    sampled = [t for t in ("detection", "grounding") if steps[f"train/groups/{t}"].sum() > 0]
    assert sampled
    for task in sampled:
        scored = steps[f"train/reward_groups/{task}/iou"].fillna(0)  # NaN before the task's first step
        flat = steps[f"train/reward_zero_std/{task}/iou"].fillna(0)
        assert (scored == steps[f"train/groups/{task}"]).all() and (flat <= scored).all()
        count = steps[f"train/reward_count/{task}/iou"].fillna(0)  # completions scored, 0 in a step without it
        assert (count == scored * cfg.grpo.num_generations).all()
    # every group had variance (forced), so the update moved the weights
    assert (log["train/zero_std_groups"].dropna() == 0).all()
    changed = [not torch.equal(before[n], p) for n, p in policy.named_parameters() if p.requires_grad]
    assert any(changed)


def _scripted_scorer(flat_calls: set[int], calls: list[int]):
    """A reward that is flat (all 0) on the listed calls and varies within every group (0, 1, ...) otherwise."""

    def score(texts, targets, cfg):
        calls.append(len(texts))
        k = len(calls)
        G = 2
        values = [0.0 if k in flat_calls else float(r % G) for r in range(len(texts))]
        return RewardOutput(total=torch.tensor(values))

    return score


def test_resample_draws_batches_until_b_groups_have_variance(run_overrides, tmp_path, monkeypatch) -> None:
    """DAPO's dynamic sampling: a flat first batch is replaced by the next one of the step's prompts; an update
    uses exactly B groups with variance; the data loader hands a step max_generation_batches * B prompts."""
    calls: list[int] = []
    monkeypatch.setattr(grpo_module, "score_completions", _scripted_scorer({1}, calls))
    prompts: list[int] = []
    real_step = grpo_module.GRPOModule.training_step

    def counting(self, batch, batch_idx):
        prompts.append(len(batch["samples"]))
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(grpo_module.GRPOModule, "training_step", counting)
    cfg = _grpo_cfg(run_overrides, tmp_path, "data.batch_size=2", "grpo.num_generations=2",
                    "grpo.dynamic_sampling=resample", "grpo.max_generation_batches=3")  # fmt: skip
    fit.fit(cfg)
    assert prompts == [6, 6]  # B = 2 prompts, up to 3 batches of them per step
    assert calls == [4, 4, 4]  # step 1: flat batch, then one with variance; step 2: the first batch suffices
    log = pd.read_csv(fit.run_dir_of(cfg) / "csv" / "0-grpo" / "metrics.csv")
    assert log["train/generation_batches"].dropna().tolist() == [2.0, 1.0]
    assert log["train/kept_completions"].dropna().tolist() == [4.0, 4.0]
    assert (
        log["train/groups/detection"].dropna().sum()
        + log["train/groups/grounding"].dropna().sum()
        + log["train/groups/spatial"].dropna().sum()
        == 6
    )  # every sampled group is counted, flat ones included


def test_max_steps_counts_updates_and_a_flat_stream_stops_with_a_message(run_overrides, tmp_path, monkeypatch):
    """skip: a batch without a group with variance makes no update and does not count towards max_steps (one
    process and DDP decide alike: on the global batch); rewards flat for ever end the stage with a clear error."""
    calls: list[int] = []
    monkeypatch.setattr(grpo_module, "score_completions", _scripted_scorer({1, 3}, calls))
    cfg = _grpo_cfg(run_overrides, tmp_path, "data.batch_size=2", "grpo.num_generations=2",
                    "grpo.dynamic_sampling=skip")  # fmt: skip
    fit.fit(cfg)
    assert len(calls) == 4  # batches 1 and 3 were flat: 2 updates took 4 rollout batches
    ckpt = torch.load(fit.run_dir_of(cfg) / "stages" / "0-grpo" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2

    monkeypatch.setattr(grpo_module, "score_completions", _scripted_scorer(set(range(1, 100)), []))
    monkeypatch.setattr(grpo_module.GRPOModule, "max_idle_batches", 3)
    flat = _grpo_cfg(run_overrides, tmp_path / "flat", "data.batch_size=2", "grpo.num_generations=2",
                     "grpo.dynamic_sampling=resample", "grpo.max_generation_batches=2")  # fmt: skip
    with pytest.raises(RuntimeError, match="no update in 3 consecutive rollout batches"):
        fit.fit(flat)
