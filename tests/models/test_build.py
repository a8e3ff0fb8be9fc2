from __future__ import annotations

import re

import pytest
import torch

from lit3drft.models import ModelConfig, build_policy, tiny
from lit3drft.models.build import lora_target_regex, resolve_checkpoint


def test_tiny_builds_offline_and_is_cached(make_cfg, monkeypatch):
    cfg = make_cfg()
    path = resolve_checkpoint(cfg)
    assert (path / "config.json").exists() and (path / "tokenizer.json").exists()
    assert (path / "processor_config.json").exists() or (path / "preprocessor_config.json").exists()

    def fail(*a, **k):
        raise AssertionError("tiny preset rebuilt although it is cached")

    monkeypatch.setattr(tiny, "build_tiny_checkpoint", fail)
    assert resolve_checkpoint(cfg) == path
    policy = build_policy(cfg)  # same loader as a real checkpoint, no network (HF_HUB_OFFLINE=1 in conftest)
    assert type(policy.hf_model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(policy.processor).__name__ == "Qwen2_5_VLProcessor"
    assert tiny.tiny_key(make_cfg(tiny_seed=1)) != tiny.tiny_key(cfg)  # another config, another cache entry


def test_tiny_tokenizer_has_qwen_specials_and_template(lora_policy):
    tok = lora_policy.tokenizer
    for t in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>", "<|endoftext|>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    text = '<answer>[{"label": "chair", "bbox_3d": [1.25, -0.5]}]</answer>'
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_default_tiny_size_is_in_range():
    cfg = ModelConfig()
    ids = {t: i for i, t in enumerate(tiny.SPECIAL_TOKENS)}
    with torch.device("meta"):
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration(tiny.tiny_model_config(cfg, cfg.tiny_vocab_size, ids))
    n = sum(p.numel() for p in model.parameters())
    assert 5e6 <= n <= 30e6, n


def test_missing_checkpoint_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Qwen/Qwen2.5-VL"):
        build_policy(ModelConfig(preset="", pretrained=str(tmp_path / "nowhere")))


def test_lora_targets_only_language_model(lora_policy):
    rx = lora_target_regex(["q_proj", "down_proj"])
    assert re.fullmatch(rx, "base_model.model.model.language_model.layers.3.mlp.down_proj")
    assert not re.fullmatch(rx, "model.visual.blocks.0.mlp.down_proj")
    trainable = [n for n, p in lora_policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert any("mlp.down_proj.lora" in n for n in trainable) and any("self_attn.q_proj.lora" in n for n in trainable)


def test_full_finetune_freezing(make_cfg):
    policy = build_policy(
        make_cfg(finetune="full", freeze_vision=True, freeze_merger=False, gradient_checkpointing=True)
    )
    grad = {n: p.requires_grad for n, p in policy.named_parameters()}
    assert all(not g for n, g in grad.items() if ".visual." in n and ".merger." not in n)
    assert all(g for n, g in grad.items() if ".visual.merger." in n)
    assert all(g for n, g in grad.items() if "language_model" in n)
    hf = policy.hf_model
    assert getattr(hf, "is_activation_checkpointing", None) or hf.is_gradient_checkpointing


def test_mrope_section_override_moves_visual_positions_only(make_cfg, samples):
    """``model.mrope_section``: the same weights with other M-RoPE sections give the same logits on text (t/h/w
    positions are equal there) and different ones on frames; a split that does not fill the head is refused."""
    plain = build_policy(make_cfg(finetune="full")).eval()
    moved = build_policy(make_cfg(finetune="full", mrope_section=[1, 3, 12])).eval()
    assert moved.hf_model.model.language_model.rotary_emb.mrope_section == [1, 3, 12]
    assert plain.hf_model.model.language_model.rotary_emb.mrope_section != [1, 3, 12]
    ids = plain.tokenizer("left or right of the bed?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(plain.hf_model(input_ids=ids).logits, moved.hf_model(input_ids=ids).logits)
        batch = plain.to_device(plain.collate(samples[:2], with_answer=True))
        gap = (plain(batch).logits - moved(batch).logits).abs().max()
    assert gap > 1e-4
    with pytest.raises(ValueError, match=r"model.mrope_section=\[1, 3, 11\].*half the head size \(16\)"):
        build_policy(make_cfg(mrope_section=[1, 3, 11]))
