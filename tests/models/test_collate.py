from __future__ import annotations

import torch


def test_labels_cover_answer_and_im_end_only(lora_policy, samples):
    batch = lora_policy.collate(samples, with_answer=True)
    tok = lora_policy.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for i, s in enumerate(samples):
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        keep = labels != -100
        answer_ids = tok(s.answer, add_special_tokens=False)["input_ids"] + [end]
        assert labels[keep].tolist() == answer_ids  # exactly the answer + <|im_end|>
        assert ids[keep].tolist() == answer_ids
        assert keep[-len(answer_ids) :].all() and int(keep.sum()) == len(answer_ids)  # at the end, contiguous
        assert (batch["mm_token_type_ids"][i][keep] == 0).all()
    # left padding: pads only at the start of a row
    mask = batch["attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask.diff(dim=1) >= 0).all()
    assert (batch["labels"][mask == 0] == -100).all()


def test_prompt_rows_match_between_sft_and_generation(lora_policy, samples):
    """SFT trains on exactly the prompt tokens the model sees when generating."""
    gen = lora_policy.collate(samples)
    sft = lora_policy.collate(samples, with_answer=True)
    for i in range(len(samples)):
        p = gen["input_ids"][i][gen["attention_mask"][i].bool()]
        row = sft["input_ids"][i][sft["attention_mask"][i].bool()]
        assert torch.equal(row[: len(p)], p)
    assert torch.equal(gen["pixel_values"], sft["pixel_values"])


def test_frames_as_images_with_labels_and_no_upscaling(lora_policy, make_sample):
    s = make_sample(3, frames=3, size=56, labels=True)
    batch = lora_policy.collate([s])
    text = lora_policy.tokenizer.decode(batch["input_ids"][0])
    assert text.count("<|vision_start|>") == 3
    assert text.index("Frame-0: ") < text.index("<|vision_start|>") < text.index("Frame-1: ")
    assert text.index(s.prompt) > text.rindex("<|vision_end|>")
    # 56x56 frames stay 56x56: a 4x4 patch grid, 2x2 = 4 visual tokens each (not upscaled)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    assert int((batch["input_ids"] == lora_policy.hf_model.config.image_token_id).sum()) == 12


def test_frames_as_video(make_cfg, make_sample):
    from lit3drft.models import build_policy

    policy = build_policy(make_cfg(frames_as="video")).eval()
    batch = policy.collate([make_sample(0, frames=4), make_sample(1, frames=2)], with_answer=True)
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4], [1, 4, 4]]
    assert "pixel_values" not in batch
    out = policy(batch)
    assert torch.isfinite(out.loss)
    rollout = policy.generate_group([make_sample(0, frames=4)], num_generations=2, max_new_tokens=4)
    lp = policy.sequence_logprobs(rollout)
    assert torch.allclose(lp, rollout.logprobs, atol=1e-4)
