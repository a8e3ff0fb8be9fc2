from __future__ import annotations

import pytest
import torch

from lit3drft.models import build_policy
from tests.models.test_reference import check_reference_is_the_sft_policy


def test_qlora_forward_and_backward_on_cpu(make_cfg, samples):
    try:
        import bitsandbytes as bnb  # noqa: F401

        policy = build_policy(make_cfg(finetune="qlora"))
    except Exception as e:  # bitsandbytes without a usable backend on this machine
        pytest.skip(f"bitsandbytes 4-bit unavailable here: {type(e).__name__}: {e}")
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules())
    assert not any(isinstance(m, bnb.nn.Linear4bit) for n, m in policy.named_modules() if ".visual." in n)
    # frozen non-quantised weights stay bf16 (peft's prepare_model_for_kbit_training casts them to fp32):
    # only the LoRA weights, which train, are fp32
    dtypes = {n: p.dtype for n, p in policy.named_parameters() if "geometry" not in n}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16, torch.uint8}  # uint8: packed 4-bit
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    out = policy(policy.collate(samples, with_answer=True))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for n, p in policy.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad(), policy.reference():
        assert torch.isfinite(policy(policy.collate(samples)).logits).all()


def test_qlora_reference_after_sft_is_the_sft_policy_not_the_base(make_cfg, samples, perturb_lora):
    try:
        policy = build_policy(make_cfg(finetune="qlora")).eval()
    except Exception as e:
        pytest.skip(f"bitsandbytes 4-bit unavailable here: {type(e).__name__}: {e}")
    check_reference_is_the_sft_policy(policy, policy.collate(samples), perturb_lora)
