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


def _logits(policy, batch) -> torch.Tensor:
    with torch.no_grad():
        return policy(batch).logits


def check_reference_is_the_sft_policy(policy, batch, perturb_lora) -> None:
    """After "SFT" (a random adapter) and a snapshot, further "GRPO" updates leave the reference at the SFT policy:
    equal to a frozen copy of it, different from the untuned base and from the current policy."""
    perturb_lora(policy, seed=5)  # the SFT stage's adapter
    sft = _logits(policy, batch)  # the SFT policy's outputs (a deepcopy of a 4-bit model does not compute alike)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    with torch.no_grad(), policy.model.disable_adapter():
        base = policy(batch).logits
    policy.snapshot_reference()
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable, (
        "the reference adapter must stay frozen (and out of trainable.pt)"
    )
    with torch.no_grad():  # GRPO moves what the optimiser holds: the trainable adapter only
        g = torch.Generator().manual_seed(6)
        for name, p in policy.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    with torch.no_grad(), policy.reference():
        ref = policy(batch).logits
    assert torch.equal(ref, sft)
    weights = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with torch.no_grad(), policy.reference(), policy.merged_adapter():  # GRPO's reference pass (merge_reference)
        merged = policy(batch).logits
    torch.testing.assert_close(merged, sft, atol=1e-5, rtol=0)
    assert all(torch.equal(weights[n], p) for n, p in policy.named_parameters())  # put back bit-identically
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable
    assert not torch.allclose(ref, base, atol=1e-3) and not torch.allclose(ref, _logits(policy, batch), atol=1e-3)
    assert any(p.requires_grad for n, p in policy.named_parameters() if "lora_B.default" in n)  # trainable again
    policy.snapshot_reference()  # a second GRPO stage: the snapshot follows the policy
    current = _logits(policy, batch)
    with torch.no_grad(), policy.reference():
        ref = policy(batch).logits
    assert torch.equal(ref, current)


def test_lora_reference_after_sft_is_the_sft_policy_not_the_base(make_cfg, samples, perturb_lora):
    policy = build_policy(make_cfg()).eval()
    check_reference_is_the_sft_policy(policy, policy.collate(samples), perturb_lora)


def test_trainable_geometry_prior_is_snapshotted_in_the_reference(make_cfg, samples, perturb_lora):
    """With ``freeze_geometry`` off, GRPO moves the prior too: the reference keeps the prior of the snapshot, in
    LoRA and full fine-tuning alike, and the snapshot stays out of ``state_dict`` (and of the trainable weights)."""
    for finetune in ("lora", "full"):
        policy = build_policy(make_cfg(finetune=finetune, geometry="points", freeze_geometry=False)).eval()
        batch = policy.collate(samples, with_answer=True)
        if finetune == "lora":
            perturb_lora(policy, seed=5)
        with torch.no_grad():  # a prior that matters (its output layer starts at zero)
            for p in policy.geometry.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
        trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
        assert any(n.startswith("geometry.") for n in trainable)
        policy.snapshot_reference()
        before = _logits(policy, batch)
        with torch.no_grad():  # "GRPO" moves the prior only
            for p in policy.geometry.parameters():
                p.add_(0.2)
        after = _logits(policy, batch)
        with torch.no_grad(), policy.reference():
            ref = policy(batch).logits
        assert torch.equal(ref, before) and not torch.allclose(after, before, atol=1e-3), finetune
        assert torch.equal(_logits(policy, batch), after)  # out of the block: the current prior again
        assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable
        assert not any(k.startswith("reference_geometry") for k in policy.state_dict())
