from __future__ import annotations

import pytest
import torch

from lit3drft.models import build_policy
from lit3drft.models.generation import filter_logits, sample_categorical


def greedy_without_cache(policy, samples, max_new_tokens):
    """Independent greedy decoder: one full forward over the whole sequence per token, no KV cache."""
    batch = policy.collate(samples)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
    stop = set(policy.stop_token_ids)
    out, done = [[] for _ in samples], [False] * len(samples)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = policy({**batch, "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}).logits
            logits = logits[:, -1].float()
            logits[:, policy.suppressed_token_ids] = float("-inf")
            tok = logits.argmax(-1)
            for i, t in enumerate(tok.tolist()):
                if not done[i]:
                    out[i].append(t)
                    done[i] = t in stop
            if all(done):
                break
            ids = torch.cat([ids, tok[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            types = torch.cat([types, torch.zeros_like(types[:, :1])], 1)
    return [policy.tokenizer.decode(o, skip_special_tokens=True) for o in out]


def test_greedy_kv_cache_equals_no_cache(lora_policy, samples, perturb_lora):
    perturb_lora(lora_policy, seed=1)
    try:
        cached = lora_policy.generate(samples, max_new_tokens=12)
        assert cached == greedy_without_cache(lora_policy, samples, 12)
        assert all(len(t) > 0 for t in cached)
    finally:
        perturb_lora(lora_policy, scale=0.0)


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, None, 1.0), (0.7, 20, 0.9)])
def test_generation_logprobs_equal_sequence_logprobs(lora_policy, samples, temperature, top_k, top_p):
    torch.manual_seed(0)
    G = 3
    r = lora_policy.generate_group(samples, num_generations=G, temperature=temperature, top_k=top_k, top_p=top_p,
                                   max_new_tokens=10)  # fmt: skip
    n, T = r.completion_ids.shape
    assert n == len(samples) * G and r.logprobs.shape == (n, T) and r.completion_mask.shape == (n, T)
    assert r.group.tolist() == [i // G for i in range(n)]
    with torch.no_grad():
        full = lora_policy.sequence_logprobs(r)
        sub = lora_policy.sequence_logprobs(r, rows=[4, 0, 5])  # a micro-batch in any order
    m = r.completion_mask.bool()
    assert (full - r.logprobs)[m].abs().max() < 1e-4
    assert (full[~m] == 0).all() and (r.logprobs[~m] == 0).all()
    assert torch.allclose(sub, full[[4, 0, 5]], atol=1e-5)


def test_rollout_stops_and_masks(lora_policy, samples):
    """With <|im_end|> made likely (about 1/8 per step), some rows stop early and some are truncated."""
    end = lora_policy.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def boost(module, inputs, out):
        out = out.clone()
        out[..., end] = out.logsumexp(-1) - 2.0
        return out

    handle = lora_policy.hf_model.lm_head.register_forward_hook(boost)
    torch.manual_seed(1)
    try:
        r = lora_policy.generate_group(samples, num_generations=4, max_new_tokens=6)
    finally:
        handle.remove()
    assert r.truncated.any() and not r.truncated.all()
    stop = torch.tensor(lora_policy.stop_token_ids)
    for ids, mask, trunc in zip(r.completion_ids, r.completion_mask, r.truncated):
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # contiguous from the start
        ended = bool(torch.isin(ids[length - 1], stop))
        assert ended != bool(trunc)
        assert not torch.isin(ids[:length], torch.tensor(lora_policy.suppressed_token_ids)).any()
        assert (ids[length:] == lora_policy.pad_token_id).all()


def test_frames_encoded_once_per_prompt(lora_policy, samples):
    calls = []
    visual = lora_policy.core.visual
    handle = visual.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    try:
        G = 4
        r = lora_policy.generate_group(samples, num_generations=G, max_new_tokens=4)
        n_patches = lora_policy.collate(samples)["pixel_values"].shape[0]
        assert calls == [n_patches]  # one vision pass over B prompts, not B*G
        calls.clear()
        lora_policy.sequence_logprobs(r, rows=list(range(2 * G)))
        assert calls == []  # frozen vision tower: the features kept from sampling are reused
        r.visual_features = None
        lora_policy.sequence_logprobs(r, rows=list(range(2 * G)))
        assert calls == [n_patches]  # otherwise once per distinct prompt, not per row
    finally:
        handle.remove()


def test_vision_tokens_are_suppressed(lora_policy, samples):
    """Make the image pad token overwhelmingly likely: it must still never be sampled."""
    lm_head = lora_policy.hf_model.lm_head
    image_id = lora_policy.hf_model.config.image_token_id
    handle = lm_head.register_forward_hook(lambda m, i, o: o.index_fill(-1, torch.tensor([image_id]), 1e4))
    try:
        r = lora_policy.generate_group(samples[:1], num_generations=2, max_new_tokens=3)
    finally:
        handle.remove()
    assert not (r.completion_ids == image_id).any()


def test_sequence_logprobs_backward_reaches_lora(lora_policy, samples):
    r = lora_policy.generate_group(samples, num_generations=2, max_new_tokens=5)
    lora_policy.zero_grad()
    lp = lora_policy.sequence_logprobs(r, rows=[0, 3], chunk_size=2)
    (lp.sum()).backward()
    grads = [p.grad for n, p in lora_policy.named_parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    lora_policy.zero_grad()


def test_inverse_cdf_sampling_has_the_law_of_its_probabilities():
    """``sample_categorical`` (what sampling draws with): Pearson's chi-square test (scipy's) of 40,000 draws per row
    against the row's probabilities, zero-mass tokens (suppressed or filtered: -inf logits) never drawn, an
    unnormalised row drawn by its proportions, and a row with no mass or a NaN refused."""
    from scipy.stats import chisquare

    torch.manual_seed(0)
    logits = torch.randn(3, 12) * 2
    logits[0, [0, 5, 11]] = float("-inf")  # suppressed tokens, the first and last among them
    logits[2] = filter_logits(logits[2:], top_k=4, top_p=1.0)[0]
    probs = logits.softmax(-1)
    draws = torch.stack([sample_categorical(probs) for _ in range(40_000)], 1)  # (3, 40000)
    for row, p in zip(draws, probs, strict=True):
        counts = torch.bincount(row, minlength=12)
        assert counts[p == 0].sum() == 0
        keep = p > 0
        expected = p[keep].double().numpy()
        assert chisquare(counts[keep].numpy(), expected / expected.sum() * len(row)).pvalue > 1e-3
    weights = torch.tensor([[1.0, 3.0, 0.0]])
    frac = torch.stack([sample_categorical(weights) for _ in range(20_000)]).float().mean()  # P(1) = 0.75
    assert abs(frac - 0.75) < 0.015
    assert sample_categorical(torch.tensor([[0.0, 0.0, 1.0]])).item() == 2
    for bad in ([[0.0, 0.0]], [[float("nan"), 1.0]]):
        with pytest.raises(ValueError, match="not finite or has no mass"):
            sample_categorical(torch.tensor(bad))


def test_filter_logits_against_brute_force():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    for top_p in (0.3, 0.8):
        kept = filter_logits(logits, None, top_p) > float("-inf")
        for row, keep in zip(logits, kept):
            probs, order = row.softmax(-1).sort(descending=True)
            n = int((probs.cumsum(0) < top_p).sum()) + 1  # smallest prefix with mass >= top_p
            assert set(order[:n].tolist()) == set(keep.nonzero().flatten().tolist())
    kept = filter_logits(logits, 5, 1.0) > float("-inf")
    assert (kept.sum(-1) == 5).all() and torch.equal(
        kept, torch.zeros_like(kept).scatter(1, logits.topk(5).indices, True)
    )


def test_raw_pixel_path_matches_feature_reuse(lora_policy, samples, monkeypatch):
    """The per-row raw-pixel path (used for Qwen3-VL) gives the same log-probs as reusing per-prompt features."""
    torch.manual_seed(2)
    r = lora_policy.generate_group(samples, num_generations=2, max_new_tokens=5)
    with torch.no_grad():
        reused = lora_policy.sequence_logprobs(r, rows=[3, 0])
        monkeypatch.setattr(type(lora_policy), "reuses_visual_features", property(lambda self: False))
        raw = lora_policy.sequence_logprobs(r, rows=[3, 0])
    assert torch.allclose(reused, raw, atol=1e-5)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_generation_in_train_mode_with_checkpointing(make_cfg, samples, finetune):
    """A GRPO step samples while its module is in train mode; with activation checkpointing on, transformers then
    turns the KV cache off (``use_cache=False``) inside the decoder layers. Sampling must not depend on that state:
    same greedy text as in eval mode, a KV cache all the same, the train/eval flags of every module restored."""
    torch.manual_seed(0)
    policy = build_policy(make_cfg(finetune=finetune, gradient_checkpointing=True, freeze_vision=True))
    policy.eval()
    expected = policy.generate(samples, max_new_tokens=8)
    policy.train()
    flags = {name: m.training for name, m in policy.named_modules()}
    assert any(flags.values()) and any(getattr(m, "gradient_checkpointing", False) for m in policy.modules())
    assert policy.generate(samples, max_new_tokens=8) == expected
    torch.manual_seed(1)
    r = policy.generate_group(samples, num_generations=2, max_new_tokens=6)
    assert r.completion_ids.shape[0] == 2 * len(samples)
    assert {name: m.training for name, m in policy.named_modules()} == flags
    with torch.no_grad():  # the log-prob pass keeps train mode (checkpointing) and agrees with the sampler
        full = policy.sequence_logprobs(r)
    m = r.completion_mask.bool()
    assert (full - r.logprobs)[m].abs().max() < 1e-4


def _same_decoding_both_ways(policy, samples, key: str, seed: int, generations: int, tokens: int, merge: bool):
    """Greedy text and a sampled group under one seed with ``policy.cfg.<key>`` on and off: the same greedy text,
    tokens and masks, log-probs within 1e-5. Returns the group sampled with the setting on."""
    from dataclasses import replace

    out = {}
    for on in (True, False):
        policy.cfg = replace(policy.cfg, **{key: on})
        torch.manual_seed(seed)
        r = policy.generate_group(samples, num_generations=generations, max_new_tokens=tokens, merge_adapter=merge)
        out[on] = (policy.generate(samples, max_new_tokens=tokens), r)
    assert out[True][0] == out[False][0], key
    a, b = out[True][1], out[False][1]
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-5
    return a


@pytest.mark.parametrize(("finetune", "merge"), [("lora", False), ("lora", True), ("full", False)])
def test_lean_decoder_equals_the_transformers_step(make_cfg, samples, perturb_lora, finetune, merge):
    """``model.lean_decode`` (preallocated cache, one mask) against one transformers forward per token: the same
    greedy text and the same sampled tokens and log-probs under the same seed, LoRA merged and unmerged, and a full
    fine-tuning policy (no peft layers)."""

    from lit3drft.models import decode

    policy = build_policy(make_cfg(finetune=finetune)).eval()
    if finetune == "lora":
        perturb_lora(policy, seed=7, scale=0.2)
    assert decode.supports(policy.hf_model)
    _same_decoding_both_ways(policy, samples, "lean_decode", seed=3, generations=3, tokens=10, merge=merge)


@pytest.mark.parametrize("merge", [False, True])
def test_dropping_stopped_rows_changes_nothing(make_cfg, samples, perturb_lora, monkeypatch, merge):
    """``model.compact_decode``: with rows that stop at different steps (a quarter of the vocabulary made stop
    tokens), the decode batch shrinks (``LeanDecoder.select`` runs) and the sampled tokens, masks and log-probs are
    those of the decoder that runs every row to the end, under the same seed; the log-probs still equal
    ``sequence_logprobs``; greedy text is unchanged."""

    from lit3drft.models import decode

    policy = build_policy(make_cfg()).eval()
    perturb_lora(policy, seed=5, scale=0.2)
    vocab = policy.hf_model.lm_head.out_features
    stops = [t for t in range(0, vocab, 4) if t not in set(policy.suppressed_token_ids)]
    monkeypatch.setattr(policy, "stop_token_ids", stops)
    selected = []
    original = decode.LeanDecoder.select
    monkeypatch.setattr(decode.LeanDecoder, "select", lambda self, rows: (selected.append(len(rows)),
                                                                          original(self, rows))[1])  # fmt: skip
    a = _same_decoding_both_ways(policy, samples, "compact_decode", seed=11, generations=6, tokens=24, merge=merge)
    lengths = a.completion_mask.sum(1)
    assert selected and len(set(lengths.tolist())) > 3, (selected, lengths)
    with torch.no_grad():
        full = policy.sequence_logprobs(a)
    m = a.completion_mask.bool()
    assert (full - a.logprobs)[m].abs().max() < 1e-4


def test_direct_linear_equals_the_module_and_falls_back_where_it_cannot():
    """``decode.direct_linear``: ``F.linear`` on the weights of a plain linear and of a peft LoRA layer (unmerged,
    adapters disabled, merged) gives the module's output bit for bit and skips the module; a DoRA layer or a layer
    with a forward hook is returned as the module itself."""
    from peft import LoraConfig, get_peft_model

    from lit3drft.models.decode import direct_linear

    torch.manual_seed(0)
    x = torch.randn(5, 1, 16)
    plain = torch.nn.Linear(16, 12)
    fn = direct_linear(plain)
    assert fn is not plain and torch.equal(fn(x), plain(x))

    def lora_layer(**kw):
        net = get_peft_model(torch.nn.Sequential(torch.nn.Linear(16, 12)), LoraConfig(r=4, target_modules=["0"], **kw))
        layer = net.base_model.model[0]
        torch.nn.init.normal_(layer.lora_B["default"].weight)  # a non-zero update
        return net.eval(), layer

    net, layer = lora_layer()
    fn = direct_linear(layer)
    assert fn is not layer and torch.equal(fn(x), layer(x))
    assert not torch.equal(fn(x), layer.base_layer(x))  # the update is in it
    with net.disable_adapter():
        fn = direct_linear(layer)
        assert fn is not layer and torch.equal(fn(x), layer(x)) and torch.equal(fn(x), layer.base_layer(x))
    layer.merge()
    fn = direct_linear(layer)
    assert fn is not layer and torch.equal(fn(x), layer(x))
    layer.unmerge()

    _, dora = lora_layer(use_dora=True)
    assert direct_linear(dora) is dora
    hooked = torch.nn.Linear(16, 12)
    hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert direct_linear(hooked) is hooked
