"""The fast log-prob path (shared prompt prefix, visual features from sampling, merged-adapter sampling) against
one plain HF forward over prompt + completion: same log-probs (1e-5, float32) and the same LoRA gradients."""

from __future__ import annotations

import pytest
import torch

from lit3drft.models.generation import Rollout


def plain_logprobs(policy, rollout: Rollout, rows: list[int]) -> torch.Tensor:
    """Independent reference: the unwrapped HF ``*ForConditionalGeneration`` over prompt + completion per row,
    raw pixels, full-vocabulary logits, ``log_softmax(logits / T)`` with the vision tokens masked."""
    g = rollout.group[rows].tolist()
    prompts = rollout.prompt_inputs
    pix_rows, grids = [], []
    counts = prompts["image_counts"].tolist()
    patches = prompts["image_grid_thw"].prod(-1).tolist()
    for i in g:
        first = sum(counts[:i])
        start = sum(patches[:first])
        stop = start + sum(patches[first : first + counts[i]])
        pix_rows.append(prompts["pixel_values"][start:stop])
        grids.append(prompts["image_grid_thw"][first : first + counts[i]])
    comp, cmask = rollout.completion_ids[rows], rollout.completion_mask[rows]
    ids = torch.cat([prompts["input_ids"][g], comp], 1)
    mask = torch.cat([prompts["attention_mask"][g], cmask], 1)
    types = torch.cat([prompts["mm_token_type_ids"][g], torch.zeros_like(comp)], 1)
    grid = torch.cat(grids)
    hf = policy.hf_model
    pos, _ = hf.model.get_rope_index(ids, mm_token_type_ids=types, attention_mask=mask, image_grid_thw=grid)
    logits = hf(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=torch.cat(pix_rows),
                image_grid_thw=grid, use_cache=False).logits.float()  # fmt: skip
    logits = logits[:, prompts["input_ids"].shape[1] - 1 : -1]  # the logits that predict each completion token
    logits[..., policy.suppressed_token_ids] = float("-inf")
    logp = (logits / rollout.temperature).log_softmax(-1).gather(-1, comp[..., None]).squeeze(-1)
    return logp.masked_fill(cmask == 0, 0.0)


def ragged_rollout(policy, samples, G: int = 3, T: int = 7, seed: int = 0) -> Rollout:
    """A sampled rollout whose completions are cut at different lengths (stop token, then pad, mask 0)."""
    torch.manual_seed(seed)
    r = policy.generate_group(samples, num_generations=G, max_new_tokens=T, temperature=0.9)
    end = policy.tokenizer.convert_tokens_to_ids("<|im_end|>")
    lengths = [T, 1, 3, T, 5, 2][: len(r.texts)]
    for row, n in enumerate(lengths):
        r.completion_ids[row, n - 1] = end if n < T else r.completion_ids[row, n - 1]
        r.completion_ids[row, n:] = policy.pad_token_id
        r.completion_mask[row, n:] = 0
    r.completion_mask[:, 0] = 1
    return r


def lora_grads(policy, logp: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in policy.parameters() if p.requires_grad]
    weights = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    return list(torch.autograd.grad((logp * weights).sum(), params))


@pytest.mark.parametrize("adapter", ["lora", "no-lora"])
@pytest.mark.parametrize("rows", [[0, 1, 2, 3, 4, 5], [4, 0, 5], [3], [2, 1]])
def test_shared_prefix_equals_plain_forward(lora_policy, samples, perturb_lora, adapter, rows):
    """Two prompts of different lengths (left padding), ragged completions, rows in any order, with the LoRA
    update on and off (adapter disabled): log-probs and LoRA gradients equal the plain forward's."""
    perturb_lora(lora_policy, seed=3, scale=0.3)
    try:
        r = ragged_rollout(lora_policy, samples)
        assert r.visual_features is not None  # frozen vision tower: features kept from sampling
        assert r.prompt_inputs["attention_mask"].eq(0).any()  # the shorter prompt is left-padded
        with lora_policy.model.disable_adapter() if adapter == "no-lora" else torch.enable_grad():
            expected = plain_logprobs(lora_policy, r, rows)
            fast = lora_policy.sequence_logprobs(r, rows=rows, chunk_size=3)
            full = lora_policy.sequence_logprobs(r, rows=rows, chunk_size=3, shared_prefix=False)
            torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(full, expected, atol=1e-5, rtol=0)
            if adapter == "lora":
                for a, b in zip(lora_grads(lora_policy, fast), lora_grads(lora_policy, expected)):
                    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    finally:
        perturb_lora(lora_policy, scale=0.0)


def test_shared_prefix_without_kept_features_and_raw_pixels(lora_policy, samples, perturb_lora, monkeypatch):
    """Features recomputed (no ``visual_features``) or raw pixels (Qwen3-VL path): the same log-probs."""
    perturb_lora(lora_policy, seed=4, scale=0.3)
    try:
        r = ragged_rollout(lora_policy, samples, seed=1)
        rows = [5, 1, 2]
        with torch.no_grad():
            expected = plain_logprobs(lora_policy, r, rows)
            kept = lora_policy.sequence_logprobs(r, rows=rows)
            r.visual_features = None
            recomputed = lora_policy.sequence_logprobs(r, rows=rows)
            monkeypatch.setattr(type(lora_policy), "reuses_visual_features", property(lambda self: False))
            raw = lora_policy.sequence_logprobs(r, rows=rows)
        for got in (kept, recomputed, raw):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    finally:
        perturb_lora(lora_policy, scale=0.0)


def test_full_fine_tuning_shared_prefix(make_cfg, samples):
    """Without an adapter (full fine-tuning, LLM trainable): values and gradients equal the plain forward's."""
    from lit3drft.models import build_policy

    torch.manual_seed(0)
    policy = build_policy(make_cfg(finetune="full")).eval()
    r = ragged_rollout(policy, samples, seed=2)
    rows = [0, 3, 4, 1]
    params = [p for p in policy.parameters() if p.requires_grad]
    fast = policy.sequence_logprobs(r, rows=rows)
    expected = plain_logprobs(policy, r, rows)
    torch.testing.assert_close(fast, expected, atol=1e-5, rtol=0)
    weights = torch.linspace(-1, 1, fast.numel()).view_as(fast)
    ga = torch.autograd.grad((fast * weights).sum(), params)
    gb = torch.autograd.grad((expected * weights).sum(), params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_falls_back_to_the_full_forward(make_cfg, samples):
    """HF drops KV caches inside checkpointed layers in training mode: the full-sequence path runs instead."""
    from lit3drft.models import build_policy
    from lit3drft.models.generation import _checkpointing_active

    torch.manual_seed(0)
    policy = build_policy(make_cfg(gradient_checkpointing=True)).eval()
    r = ragged_rollout(policy, samples, seed=5)
    assert not _checkpointing_active(policy)
    policy.train()
    try:
        assert _checkpointing_active(policy)
        rows = [1, 4]
        logp = policy.sequence_logprobs(r, rows=rows)
        logp.sum().backward()
        policy.eval()
        with torch.no_grad():
            torch.testing.assert_close(logp.detach(), plain_logprobs(policy, r, rows), atol=1e-5, rtol=0)
    finally:
        policy.eval()
        policy.zero_grad()


def test_merged_adapter_sampling_restores_the_weights_exactly(lora_policy, samples, perturb_lora):
    """Sampling with the adapter merged: the same log-probs up to rounding, base weights bit-identical after."""
    perturb_lora(lora_policy, seed=6, scale=0.3)
    try:
        before = {n: p.detach().clone() for n, p in lora_policy.named_parameters()}
        torch.manual_seed(0)
        r = lora_policy.generate_group(samples, num_generations=2, max_new_tokens=6, merge_adapter=True)
        assert all(torch.equal(before[n], p) for n, p in lora_policy.named_parameters())
        from peft.tuners.lora import LoraLayer

        assert not any(m.disable_adapters for m in lora_policy.model.modules() if isinstance(m, LoraLayer))
        q_proj = next(m for n, m in lora_policy.model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
        base = q_proj.get_base_layer().weight
        with torch.no_grad():
            logp = lora_policy.sequence_logprobs(r)
            with lora_policy.merged_adapter():
                assert not torch.equal(base, before[next(n for n, p in lora_policy.named_parameters() if p is base)])
                merged = lora_policy.sequence_logprobs(r)
                off = plain_logprobs(lora_policy, r, list(range(len(r.texts))))
        m = r.completion_mask.bool()
        assert (r.logprobs - logp)[m].abs().max() < 1e-5
        torch.testing.assert_close(merged, logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(off, logp, atol=1e-5, rtol=0)
        assert all(torch.equal(before[n], p) for n, p in lora_policy.named_parameters())
    finally:
        perturb_lora(lora_policy, scale=0.0)
