"""Group generation with one prefill per prompt, and the matching batched log-prob pass.

``generate_group`` encodes each prompt's frames and prefills its prompt **once**, then repeats the KV cache
(and the per-row ``rope_deltas``) G times and samples all B*G rows together. Naive GRPO (a batch of G
copies through ``model.generate``) runs the vision tower and the prompt G times. When the vision tower is
frozen, the rollout keeps the visual features, so the training passes of the step do not run it again.

``sequence_logprobs`` shares the prompt the same way (with gradients): each distinct prompt of the rows runs
through the language model once, its KV cache is gathered to its rows, and only the completion tokens run
per row: P + b*T tokens instead of b*(P + T). Causal attention makes this the same function as one forward
over prompt + completion (values and gradients; ``tests/models/test_shared_prefix.py``).

Log-prob conventions (shared by sampling and ``sequence_logprobs``, so the two agree to float precision):
``log_softmax(logits / temperature)`` with the vision special tokens masked out (when suppressed); top-k
and top-p only restrict *sampling*, as in TRL and verl, they do not renormalise the recorded log-probs.
A completion ends with its stop token (``<|im_end|>`` / EOS), which is inside ``completion_mask``;
positions after it hold the pad token and mask 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from lit3drft.models.config import SAMPLING, ModelConfig
from lit3drft.models.decode import LeanDecoder
from lit3drft.models.decode import supports as supports_lean

if TYPE_CHECKING:
    from lit3drft.data.sample import Sample


class Policy(Protocol):
    """What sampling and the log-prob pass need of a policy (``lit3drft.models.policy.Policy`` has it): the one
    direction of dependency is policy -> generation; this module never imports the policy."""

    cfg: ModelConfig
    hf_model: Any
    """The Hugging Face model (``lm_head``, ``generate``, the language model)."""
    core: Any
    """The Qwen-VL core under any peft wrapper (``rope_deltas``, modules)."""
    tokenizer: Any
    stop_token_ids: list[int]
    pad_token_id: int
    suppressed_token_ids: list[int]
    reuses_visual_features: bool
    visual_frozen: bool

    def collate(self, samples: list[Sample], with_answer: bool = False) -> dict[str, Tensor]: ...
    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]: ...
    def positions(self, input_ids: Tensor, mm_token_type_ids: Tensor, attention_mask: Tensor,
                  batch: dict[str, Any]) -> tuple[Tensor, Tensor]: ...  # fmt: skip
    def encode_visual(self, batch: dict[str, Any]) -> dict[str, list[Tensor]]: ...
    def encoder_outputs(self, feats: dict[str, list[Tensor]] | None) -> Any: ...
    def visual_kwargs(self, batch: dict[str, Any]) -> dict[str, Any]: ...
    def merged_adapter(self) -> contextlib.AbstractContextManager[None] | Iterator[None]: ...


@dataclass
class Rollout:
    """G completions for each of B prompts; row ``r`` belongs to prompt ``r // G``."""

    prompt_inputs: dict[str, Tensor]
    """The B prompts' model inputs from ``Policy.collate`` (left-padded, on the policy's device)."""
    completion_ids: Tensor
    """``(B*G, T)`` sampled token ids, pad after the stop token; T = longest completion."""
    completion_mask: Tensor
    """``(B*G, T)`` 1 on completion tokens up to and including the stop token, 0 after."""
    logprobs: Tensor
    """``(B*G, T)`` float32 log-probs of the sampled tokens under the sampling policy (0 where masked)."""
    texts: list[str]
    """Decoded completions (special tokens dropped)."""
    truncated: Tensor
    """``(B*G,)`` bool: no stop token within ``max_new_tokens``."""
    group: Tensor
    """``(B*G,)`` prompt index of each row (``r // G``)."""
    num_generations: int = 1
    """G."""
    temperature: float = SAMPLING.temperature
    """Sampling temperature; ``sequence_logprobs`` uses the same by default."""
    visual_features: dict[str, list[Tensor]] | None = None
    """Per-entry visual features of the B prompts (``Policy.encode_visual``, no grad), computed while sampling
    and reused by ``sequence_logprobs``; None unless the features depend on the pixels only
    (``Policy.visual_frozen``) and the model takes precomputed features (``Policy.reuses_visual_features``)."""


def filter_logits(logits: Tensor, top_k: int | None, top_p: float) -> Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf; the argmax always survives.

    Example:
        >>> filter_logits(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), top_k=2, top_p=1.0)
        tensor([[3., 2., -inf, -inf]])
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # tokens after the nucleus is complete
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


COMPACT_AT = 0.75
"""``model.compact_decode``: the decode batch shrinks to its live rows once they are at most this share of it
(each shrink copies the live rows' cache: at most ~log(N)/log(4/3) copies per rollout)."""


def sample_categorical(probs: Tensor) -> Tensor:
    """One draw per row of ``probs`` ``(N, V)`` (non-negative, not necessarily normalised) by inverse CDF: the
    first token whose cumulative mass exceeds ``u * total``, ``u ~ U[0, 1)`` from torch's generator.

    The same law as ``torch.multinomial(probs, 1)`` (a zero-mass token is never drawn: its cumulative mass equals its
    predecessor's), ~2.7x cheaper on CPU for the tiny model's rows (16 x 897, 1 thread, idle: 162 us vs 432 us
    a draw, ``dev/sampling_probe.py``; on CPU ``multinomial`` draws an exponential per vocabulary entry). Rows with a non-finite or zero total are refused.

    Example:
        >>> sample_categorical(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])).tolist()
        [1, 2]
    """
    cum = probs.cumsum(-1)
    total = cum[:, -1:]
    if probs.device.type == "cpu" and not bool(((total > 0) & torch.isfinite(total)).all()):  # no sync off the CPU
        raise ValueError("sample_categorical: a row of the sampling distribution is not finite or has no mass")
    u = torch.rand(total.shape, device=probs.device, dtype=cum.dtype) * total
    tok = torch.searchsorted(cum, u, right=True).squeeze(1)
    # u rounded up to the total: fall back to the last token with mass
    last = probs.shape[-1] - 1 - (probs > 0).flip(-1).int().argmax(-1)
    return torch.minimum(tok, last)


def _scaled_logits(policy: Policy, logits: Tensor, temperature: float) -> Tensor:
    logits = logits.float()
    if policy.cfg.suppress_vision_tokens and policy.suppressed_token_ids:
        logits[..., policy.suppressed_token_ids] = float("-inf")
    return logits / temperature


def _index_prompts(batch: dict[str, Tensor], idx: list[int]) -> dict[str, Tensor]:
    """The sub-batch of prompts ``idx`` (in that order; repeats allowed), slicing pixel rows per entry."""
    out = {k: batch[k][idx] for k in ("input_ids", "attention_mask", "mm_token_type_ids") if k in batch}
    for pix, grid, count in (("pixel_values", "image_grid_thw", "image_counts"),
                             ("pixel_values_videos", "video_grid_thw", "video_counts")):  # fmt: skip
        if batch.get(pix) is None:
            continue
        entry_start = torch.cat([torch.zeros(1, dtype=torch.long), batch[count].cpu().cumsum(0)])
        patches = batch[grid].prod(-1).cpu()
        patch_start = torch.cat([torch.zeros(1, dtype=torch.long), patches.cumsum(0)])
        entries = [e for i in idx for e in range(entry_start[i], entry_start[i + 1])]
        rows = torch.cat([torch.arange(patch_start[e], patch_start[e + 1]) for e in entries])
        out[pix], out[grid], out[count] = (
            batch[pix][rows.to(batch[pix].device)],
            batch[grid][entries],
            batch[count][idx],
        )
        if grid == "video_grid_thw" and batch.get("second_per_grid_ts") is not None:
            out["second_per_grid_ts"] = batch["second_per_grid_ts"][entries]
        if "geometry_values" in batch:
            out["geometry_values"] = batch["geometry_values"][rows.to(batch["geometry_values"].device)]
        if "geometry_frames" in batch:
            out["geometry_frames"] = batch["geometry_frames"][entries]
    return out


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """``module`` and every submodule in eval mode inside the block; each one's own flag restored after.

    Sampling must not depend on the caller's train/eval state: a GRPO step samples from inside
    ``training_step`` (train mode), where transformers' activation checkpointing drops the KV cache
    (``use_cache=False`` in every decoder layer) and dropout would act on the rollouts.
    """
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def _decode(policy: Policy, batch: dict[str, Tensor], repeats: int, max_new_tokens: int, temperature: float,
            top_p: float, top_k: int | None, greedy: bool,
            feats: dict[str, list[Tensor]] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Prefill B prompts once, repeat the cache ``repeats`` times, decode. Returns ids, mask, logprobs, truncated.

    ``feats``: the prompts' visual features (``Policy.encode_visual``) when already computed. Runs in eval mode
    whatever the policy's (``eval_mode``).
    """
    with eval_mode(policy):
        return _decode_loop(policy, batch, repeats, max_new_tokens, temperature, top_p, top_k, greedy, feats)


def _decode_loop(policy: Policy, batch: dict[str, Tensor], repeats: int, max_new_tokens: int, temperature: float,
                 top_p: float, top_k: int | None, greedy: bool,
                 feats: dict[str, list[Tensor]] | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    hf = policy.hf_model
    ids, mask = batch["input_ids"], batch["attention_mask"]
    pos, deltas = policy.positions(ids, batch["mm_token_type_ids"], mask, batch)
    visual = {"mm_encoder_outputs": policy.encoder_outputs(feats)} if feats is not None else policy.visual_kwargs(batch)
    out = hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **visual)
    cache, logits = out.past_key_values, out.logits[:, -1]  # (B, V)
    prompt_mask = mask
    lean = policy.cfg.lean_decode and max_new_tokens > 1 and supports_lean(hf)
    if repeats > 1:  # one prefill per prompt, shared by its G rows
        if not lean:
            cache.batch_repeat_interleave(repeats)
        logits, mask, deltas = (x.repeat_interleave(repeats, dim=0) for x in (logits, mask, deltas))
    n = logits.shape[0]
    next_pos = mask.sum(1, keepdim=True) + deltas  # (N, 1): text position of the first completion token
    decoder = LeanDecoder(hf, cache, prompt_mask, repeats, max_new_tokens, next_pos) if lean else None
    stop = torch.tensor(policy.stop_token_ids, device=ids.device)
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)
    tokens, logps, masks = [], [], []
    compact = decoder is not None and policy.cfg.compact_decode
    rows = None  # the batch rows the decoder still runs, once it has dropped some (None: all of them)
    for t in range(max_new_tokens):
        scaled = _scaled_logits(policy, logits, temperature)
        if greedy:
            tok = scaled.argmax(-1)
        else:
            tok = sample_categorical(filter_logits(scaled, top_k, top_p).softmax(-1))
        tok = torch.where(done, torch.full_like(tok, policy.pad_token_id), tok)
        logps.append(scaled.log_softmax(-1).gather(1, tok[:, None]).squeeze(1).masked_fill(done, 0.0))
        masks.append(~done)
        tokens.append(tok)
        done = done | torch.isin(tok, stop)
        live = int(n - done.sum())
        if live == 0 or t == max_new_tokens - 1:
            break
        if decoder is not None:
            if compact and live <= COMPACT_AT * decoder.n:
                keep = (~done if rows is None else ~done[rows]).nonzero().squeeze(1)
                decoder.select(keep)
                rows = keep if rows is None else rows[keep]
            if rows is None:
                logits = decoder.step(tok, t)
            else:  # stopped rows get zero logits: their draws are replaced by padding (the RNG draws stay the same)
                logits = logits.new_zeros(n, logits.shape[-1])
                logits[rows] = decoder.step(tok[rows], t).to(logits.dtype)
            continue
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        p = (next_pos + t).view(1, n, 1).expand(3, n, 1)
        out = hf(input_ids=tok[:, None], attention_mask=mask, position_ids=p, past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
    return torch.stack(tokens, 1), torch.stack(masks, 1).long(), torch.stack(logps, 1), ~done


def _texts(policy: Policy, ids: Tensor, mask: Tensor) -> list[str]:
    return policy.tokenizer.batch_decode(
        [row[m.bool()].tolist() for row, m in zip(ids, mask)], skip_special_tokens=True
    )


def generate_texts(policy: Policy, samples: list[Sample], max_new_tokens: int = SAMPLING.max_new_tokens,
                   greedy: bool = True) -> list[str]:  # fmt: skip
    """One completion per sample (greedy by default), KV cache, stop at ``<|im_end|>``/EOS."""
    batch = policy.to_device(policy.collate(samples))
    ids, mask, _, _ = _decode(policy, batch, 1, max_new_tokens, SAMPLING.temperature, SAMPLING.top_p, SAMPLING.top_k,
                              greedy)  # fmt: skip
    return _texts(policy, ids, mask)


def generate_group(policy: Policy, samples: list[Sample] | dict[str, Tensor], num_generations: int = 8,
                   temperature: float = SAMPLING.temperature, top_p: float = SAMPLING.top_p,
                   top_k: int | None = SAMPLING.top_k, max_new_tokens: int = SAMPLING.max_new_tokens,
                   merge_adapter: bool = False) -> Rollout:  # fmt: skip
    """Sample ``num_generations`` completions per prompt with one vision pass and one prefill per prompt.

    ``merge_adapter``: sample with the LoRA update folded into the base weights (``Policy.merged_adapter``;
    the same policy up to float rounding, fewer ops per decoded token). The visual features are kept in the
    rollout when they stay valid for the step (``Rollout.visual_features``).
    """
    batch = samples if isinstance(samples, dict) else policy.collate(samples)
    batch = policy.to_device({k: v for k, v in batch.items() if k != "labels"})
    reuse_features = policy.reuses_visual_features and policy.visual_frozen  # valid for the whole step
    with torch.no_grad():
        feats = policy.encode_visual(batch) if policy.reuses_visual_features else None
    with policy.merged_adapter() if merge_adapter else contextlib.nullcontext():
        ids, mask, logps, truncated = _decode(policy, batch, num_generations, max_new_tokens, temperature, top_p,
                                              top_k, greedy=False, feats=feats)  # fmt: skip
    group = torch.arange(len(batch["input_ids"]), device=ids.device).repeat_interleave(num_generations)
    return Rollout(batch, ids, mask, logps, _texts(policy, ids, mask), truncated, group, num_generations, temperature,
                   feats if reuse_features else None)  # fmt: skip


def _token_logprobs(policy: Policy, hidden: Tensor, targets: Tensor, temperature: float) -> Tensor:
    """``(b, t, D)`` hidden states -> ``(b, t)`` log-probs of ``targets``, without keeping full-vocab tensors."""
    logits = _scaled_logits(policy, policy.hf_model.lm_head(hidden), temperature)  # (b, t, V)
    return logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)


def sequence_logprobs(policy: Policy, rollout: Rollout, rows: list[int] | Tensor | None = None,
                      temperature: float | None = None, chunk_size: int = 64,
                      shared_prefix: bool | None = None) -> Tensor:  # fmt: skip
    """Log-probs ``(len(rows), T)`` of ``rollout.completion_ids[rows]`` (0 where masked).

    Differentiable when grad is enabled. ``shared_prefix`` (default: on, unless activation checkpointing is
    active, which drops KV caches): each distinct prompt among ``rows`` runs through the language model once
    and its rows' completions attend to its KV cache (``_shared_prefix_hidden``); off: one forward over
    prompt + completion per row (``_full_sequence_hidden``). Both give the same values and gradients. The
    vision tower runs once per distinct prompt, or not at all when the rollout carries its features. The LM
    head and log-softmax run ``chunk_size`` positions at a time (recomputed in backward), so no ``(b, T, V)``
    tensor is kept. ``rows`` default: all rows; ``temperature`` default: the rollout's.
    """
    rows = torch.arange(len(rollout.texts)) if rows is None else torch.as_tensor(rows).flatten()
    rows = rows.to(rollout.completion_ids.device)
    temperature = rollout.temperature if temperature is None else temperature
    if shared_prefix is None:
        shared_prefix = not _checkpointing_active(policy)
    comp, cmask = rollout.completion_ids[rows], rollout.completion_mask[rows]
    hidden_of = _shared_prefix_hidden if shared_prefix else _full_sequence_hidden
    hidden = hidden_of(policy, rollout, rows, comp, cmask)  # (b, T, D): the state before each completion token
    out = []
    for s in range(0, comp.shape[1], chunk_size):
        h, tgt = hidden[:, s : s + chunk_size], comp[:, s : s + chunk_size]
        if torch.is_grad_enabled():
            out.append(checkpoint(_token_logprobs, policy, h, tgt, temperature, use_reentrant=False))
        else:
            out.append(_token_logprobs(policy, h, tgt, temperature))
    return torch.cat(out, 1).masked_fill(cmask == 0, 0.0)


def _checkpointing_active(policy: Policy) -> bool:
    """HF's checkpointed decoder layers drop ``past_key_values`` in training mode: no prefix cache then."""
    return policy.core.training and any(getattr(m, "gradient_checkpointing", False) for m in policy.core.modules())


def _prompt_visual_kwargs(policy: Policy, rollout: Rollout, prompt_idx: list[int],
                          prompts: dict[str, Tensor]) -> dict[str, Any]:  # fmt: skip
    """What the forward over ``prompts`` (= the rollout's prompts ``prompt_idx``) takes for their frames."""
    if not policy.reuses_visual_features:  # e.g. Qwen3-VL's deepstack features: HF encodes the raw pixels
        return policy.visual_kwargs(prompts)
    if rollout.visual_features is not None:  # computed while sampling (frozen vision tower)
        per_prompt = {k: _entries_by_prompt(v, rollout.prompt_inputs, k) for k, v in rollout.visual_features.items()}
        feats = {k: [f for i in prompt_idx for f in v[i]] for k, v in per_prompt.items()}
    else:
        feats = policy.encode_visual(prompts)
    return {"mm_encoder_outputs": policy.encoder_outputs(feats)}


def _shared_prefix_hidden(policy: Policy, rollout: Rollout, rows: Tensor, comp: Tensor, cmask: Tensor) -> Tensor:
    """Last-layer states before each completion token, each distinct prompt run once (with grad when on).

    The prompts' KV cache is gathered to the rows (a differentiable index: the gradients of a prompt's G rows
    add up in its keys and values) and the completions run through it. Completion positions continue the
    prompt's text positions (``max + 1 = valid length + rope_delta``), as in ``_decode``.
    """
    uniq, inverse = torch.unique(rollout.group[rows], return_inverse=True)
    prompt_idx = uniq.tolist()
    prompts = _index_prompts(rollout.prompt_inputs, prompt_idx)
    p_mask = prompts["attention_mask"]
    pos, deltas = policy.positions(prompts["input_ids"], prompts["mm_token_type_ids"], p_mask, prompts)
    prefix = policy.core(input_ids=prompts["input_ids"], attention_mask=p_mask, position_ids=pos, use_cache=True,
                         **_prompt_visual_kwargs(policy, rollout, prompt_idx, prompts))  # fmt: skip
    last = prefix.last_hidden_state[inverse, -1:]  # (b, 1, D): predicts the first completion token
    T = comp.shape[1]
    if T == 1:
        return last
    cache = prefix.past_key_values
    if len(uniq) != len(rows) or not torch.equal(inverse, torch.arange(len(rows), device=inverse.device)):
        cache.batch_select_indices(inverse)
    mask = torch.cat([p_mask[inverse], cmask[:, :-1].to(p_mask.dtype)], 1)
    start = p_mask[inverse].sum(1, keepdim=True) + deltas[inverse].to(p_mask.device)  # (b, 1)
    c_pos = (start + torch.arange(T - 1, device=start.device)).unsqueeze(0).expand(3, -1, -1)
    # the last completion token predicts nothing: only tokens 0..T-2 run
    out = policy.core(input_ids=comp[:, :-1], attention_mask=mask, position_ids=c_pos, past_key_values=cache,
                      use_cache=True)  # fmt: skip
    return torch.cat([last, out.last_hidden_state], 1)


def _full_sequence_hidden(policy: Policy, rollout: Rollout, rows: Tensor, comp: Tensor, cmask: Tensor) -> Tensor:
    """Last-layer states before each completion token from one forward over prompt + completion per row.

    Positions come from ``get_rope_index`` over prompt + completion with ``mm_token_type_ids`` zero-extended
    over the completion, which reproduces generation-time positions exactly.
    """
    uniq, inverse = torch.unique(rollout.group[rows], return_inverse=True)
    prompts = _index_prompts(rollout.prompt_inputs, uniq.tolist())
    expanded = _index_prompts(prompts, inverse.tolist())  # grids and token types per row
    if policy.reuses_visual_features:  # features once per distinct prompt, repeated per row
        feats = _prompt_visual_kwargs(policy, rollout, uniq.tolist(), prompts)["mm_encoder_outputs"]
        per_prompt = {k: _entries_by_prompt(list(v.pooler_output), prompts, k) for k, v in feats.items()}
        rep = {k: [f for i in inverse.tolist() for f in v[i]] for k, v in per_prompt.items()}
        visual_kwargs = {"mm_encoder_outputs": policy.encoder_outputs(rep)}
    else:
        visual_kwargs = policy.visual_kwargs(expanded)
    p_len = expanded["input_ids"].shape[1]
    ids = torch.cat([expanded["input_ids"], comp], 1)
    mask = torch.cat([expanded["attention_mask"], cmask.to(expanded["attention_mask"].dtype)], 1)
    types = torch.cat(
        [expanded["mm_token_type_ids"], torch.zeros_like(comp, dtype=expanded["mm_token_type_ids"].dtype)], 1
    )
    pos, _ = policy.positions(ids, types, mask, expanded)
    hidden = policy.core(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **visual_kwargs)
    return hidden.last_hidden_state[:, p_len - 1 : -1]


def _entries_by_prompt(feats: list[Tensor], prompts: dict[str, Tensor], kind: str) -> list[list[Tensor]]:
    counts = prompts["image_counts" if kind == "image" else "video_counts"].tolist()
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [feats[s : s + c] for s, c in zip(starts, counts)]
