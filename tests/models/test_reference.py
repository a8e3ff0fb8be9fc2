from __future__ import annotations

import torch

from lit3drft.models import build_policy
from lit3drft.models.build import load_model, resolve_checkpoint


def test_disabled_adapter_equals_base_model_exactly(make_cfg, samples, perturb_lora):
    cfg = make_cfg()
    policy = build_policy(cfg).eval()
    perturb_lora(policy, seed=2)
    batch = policy.collate(samples, with_answer=True)
    base = load_model(resolve_checkpoint(cfg), cfg).eval()  # the plain HF model, never wrapped by peft
    with torch.no_grad():
        adapted = policy(batch).logits
        with policy.reference():
            ref = policy(batch).logits
        plain = base(**{k: v for k, v in batch.items() if k not in ("labels", "image_counts")}).logits
    assert torch.equal(ref, plain)
    assert not torch.allclose(adapted, plain, atol=1e-3)  # the adapter does change the model


def test_reference_logprobs_under_lora(lora_policy, samples, perturb_lora):
    perturb_lora(lora_policy, seed=3)
    try:
        r = lora_policy.generate_group(samples, num_generations=2, max_new_tokens=6)
        with torch.no_grad():
            pol = lora_policy.sequence_logprobs(r)
            with lora_policy.reference():
                ref = lora_policy.sequence_logprobs(r)
            perturb_lora(lora_policy, scale=0.0)  # adapter at zero = base model
            base = lora_policy.sequence_logprobs(r)
        assert torch.equal(ref, base) and not torch.allclose(pol, ref)
    finally:
        perturb_lora(lora_policy, scale=0.0)


def test_adapter_save_and_load_round_trip(make_cfg, samples, perturb_lora, tmp_path):
    a = build_policy(make_cfg()).eval()
    perturb_lora(a, seed=4)
    a.save_pretrained(str(tmp_path))
    b = build_policy(make_cfg()).eval()
    batch = a.collate(samples)
    with torch.no_grad():
        assert not torch.allclose(a(batch).logits, b(batch).logits)
        b.load_adapter(str(tmp_path))
        assert torch.equal(a(batch).logits, b(batch).logits)


def test_full_finetune_reference_is_a_frozen_copy(make_cfg, samples):
    policy = build_policy(make_cfg(finetune="full")).eval()
    batch = policy.collate(samples, with_answer=True)
    with torch.no_grad():
        before = policy(batch).logits
        with policy.reference():  # snapshot taken here
            pass
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05)
        after = policy(batch).logits
        with policy.reference():
            ref = policy(batch).logits
    assert torch.equal(ref, before) and not torch.allclose(after, before)
    assert all(not p.requires_grad for p in policy.reference_model.parameters())
    assert not any(k.startswith("reference_model") for k in policy.state_dict())


def test_snapshot_reference_merges_lora_into_base(make_cfg, samples, perturb_lora):
    policy = build_policy(make_cfg()).eval()
    perturb_lora(policy, seed=5)
    batch = policy.collate(samples)
    with torch.no_grad():
        sft = policy(batch).logits
        policy.snapshot_reference()
        assert torch.allclose(policy(batch).logits, sft, atol=1e-4)  # adapter reset, merged into the base
        with policy.reference():
            assert torch.allclose(policy(batch).logits, sft, atol=1e-4)  # the reference is now the SFT model
