"""A lean single-token decode step for Qwen2.5-VL language models (issue 16).

``transformers``' forward of one decode step spends most of a small model's time outside arithmetic: the
dynamic cache grows by concatenation, the causal mask is rebuilt, multimodal positions are re-derived, and every
module is dispatched through hooks and output wrappers. ``LeanDecoder`` runs the *same modules* (so LoRA layers,
merged or not, and 4-bit layers work unchanged) with:
- a **preallocated KV cache** of the rollout's final length (``prompt + max_new_tokens``), filled from the
  prefill's cache once (repeated G times) and written in place;
- the **key mask computed once** (prompt padding + generated positions) and sliced per step;
- **text positions** only: a completion token has equal temporal/height/width mrope positions, so its rotary
  angle is the text one at ``next_pos + t`` (``rope_deltas`` folded in by the caller), computed for every ``t``
  once per rollout;
- **stopped rows dropped** (``select``, ``model.compact_decode``): the caller shrinks the batch to the rows still
  decoding once enough have stopped;
- **direct calls** (``direct_linear``): a projection that is a plain ``nn.Linear``, or a peft LoRA layer over one
  (adapters disabled or merged, or vanilla unmerged adapters), runs as ``F.linear`` on its own weight tensors, the same ops in the same
  order as the module's forward, without ``nn.Module`` dispatch and peft's per-call Python; anything else (4-bit
  layers, DoRA and other LoRA variants, hooks) is called as the module.

The maths is HF's own: its rotary module and ``apply_rotary_pos_emb``, RMSNorms, MLPs and projections; the
attention of the single query is softmax(q k^T * scaling) v over the unmasked keys with grouped heads folded
into the query axis (``_attend``: two small matmuls, cheaper on CPU than ``scaled_dot_product_attention`` with a
mask over a strided cache; equal up to float rounding, tested against HF's step).
``supports`` says when the lean step applies (else the caller keeps HF's forward).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

LEAN_ATTENTION = {"Qwen2_5_VLAttention"}
"""Attention classes whose decode step ``LeanDecoder`` reproduces (full attention, q/k/v bias, GQA, mrope).
Qwen2-VL composes its rotary angles in the attention rather than in the rotary module: it keeps HF's forward."""


def language_model(hf: Any) -> Any:
    """The text decoder (``embed_tokens``, ``layers``, ``norm``, ``rotary_emb``) of a Qwen-VL model."""
    return hf.model.language_model


def supports(hf: Any) -> bool:
    """True when every decoder layer is a full-attention Qwen2.5-VL layer (no sliding window)."""
    try:
        lm = language_model(hf)
    except AttributeError:
        return False
    cfg = lm.config
    if getattr(cfg, "use_sliding_window", False):
        return False
    return all(type(layer.self_attn).__name__ in LEAN_ATTENTION for layer in lm.layers)


def direct_linear(module: nn.Module) -> Any:
    """A callable equal to ``module(x)`` for a projection: ``F.linear`` on the weights of a plain ``nn.Linear``, or of
    a peft LoRA ``Linear`` over one (adapters disabled or merged: the base alone, as peft's forward; unmerged: ``+ B(A(x)) * scaling`` per
    active vanilla adapter, peft's order). Falls back to the module itself for anything else (quantised layers,
    LoRA variants such as DoRA, dropout in training mode, forward hooks, mixed dtypes)."""
    if module._forward_hooks or module._forward_pre_hooks:
        return module
    if type(module) is nn.Linear:
        w, b = module.weight, module.bias
        return lambda x: F.linear(x, w, b)
    from peft.tuners.lora import Linear as LoraLinear

    base = getattr(module, "base_layer", None)
    if type(module) is not LoraLinear or type(base) is not nn.Linear or base._forward_hooks:
        return module
    w, b = base.weight, base.bias
    if getattr(module, "disable_adapters", True):  # the base alone (``Policy.merged_adapter`` samples this way)
        # a merged layer with adapters disabled is unmerged by peft's forward first: keep its semantics
        return module if module.merged else lambda x: F.linear(x, w, b)
    if module.merged:
        return lambda x: F.linear(x, w, b)
    loras = []
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        a, bb, drop = module.lora_A[name], module.lora_B[name], module.lora_dropout[name]
        vanilla = name not in getattr(module, "lora_variant", {}) and type(a) is nn.Linear and type(bb) is nn.Linear
        if not vanilla or a.weight.dtype != w.dtype or (drop.training and not isinstance(drop, nn.Identity)):
            return module
        loras.append((a.weight, a.bias, bb.weight, bb.bias, module.scaling[name]))
    if not loras:
        return lambda x: F.linear(x, w, b)

    def forward(x: Tensor) -> Tensor:
        out = F.linear(x, w, b)
        for wa, ba, wb, bb_, scale in loras:
            out = out + F.linear(F.linear(x, wa, ba), wb, bb_) * scale
        return out

    return forward


class LeanDecoder:
    """Decode steps over a preallocated cache: ``step(tokens, t) -> logits`` of the next token, ``(N, V)``.

    Args:
        hf: the Qwen-VL model (``policy.hf_model``), in eval mode.
        cache: the prefill's ``DynamicCache`` for the B prompts (``(B, kv_heads, P, head_dim)`` per layer).
        prompt_mask: ``(B, P)`` attention mask of the prompts (left padding 0).
        repeats: G rows per prompt (the cache is repeated, not recomputed).
        max_new_tokens: the completion budget (the cache holds ``P + max_new_tokens`` positions).
        next_pos: ``(N, 1)`` text position of each row's first completion token (``rope_deltas`` included).
    """

    def __init__(self, hf: Any, cache: Any, prompt_mask: Tensor, repeats: int, max_new_tokens: int,
                 next_pos: Tensor) -> None:  # fmt: skip
        lm = language_model(hf)
        self.lm, self.lm_head = lm, hf.lm_head
        first = cache.layers[0].keys
        b, kv_heads, p, head_dim = first.shape
        n, total = b * repeats, p + max_new_tokens
        self.p, self.n = p, n
        shape = (len(lm.layers), n, kv_heads, total, head_dim)
        self.k = first.new_zeros(shape)
        self.v = first.new_zeros(shape)
        for i, layer in enumerate(cache.layers):
            self.k[i, :, :, :p] = layer.keys.repeat_interleave(repeats, dim=0)
            self.v[i, :, :, :p] = layer.values.repeat_interleave(repeats, dim=0)
        mask = torch.ones(n, 1, 1, total, dtype=torch.bool, device=first.device)
        mask[:, 0, 0, :p] = prompt_mask.repeat_interleave(repeats, dim=0).bool()
        self.mask = mask
        # rotary angles of every completion position at once (elementwise maths: equal to computing them per step)
        pos = (next_pos.view(n, 1) + torch.arange(max_new_tokens, device=first.device)).expand(3, n, max_new_tokens)
        self.cos, self.sin = lm.rotary_emb(first.new_zeros(1, dtype=lm.embed_tokens.weight.dtype), pos)
        self.scaling = [layer.self_attn.scaling for layer in lm.layers]
        self.head_dim = head_dim
        self.proj = [
            {name: direct_linear(getattr(layer.self_attn, name)) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
            | {name: direct_linear(getattr(layer.mlp, name)) for name in ("gate_proj", "up_proj", "down_proj")}
            for layer in lm.layers
        ]
        self.head = direct_linear(hf.lm_head)

    def select(self, rows: Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows) from now on: cache, key mask and angles shrink."""
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)
        self.mask = self.mask.index_select(0, rows)
        self.cos, self.sin = self.cos.index_select(0, rows), self.sin.index_select(0, rows)
        self.n = len(rows)

    @torch.no_grad()
    def step(self, tokens: Tensor, t: int) -> Tensor:
        """Logits ``(N, V)`` after the completion token ``tokens`` ``(N,)`` at completion index ``t``."""
        lm, n, at = self.lm, self.n, self.p + t
        x = lm.embed_tokens(tokens[:, None])  # (N, 1, D)
        cos, sin = self.cos[:, t : t + 1], self.sin[:, t : t + 1]
        mask = self.mask[..., : at + 1]
        for i, layer in enumerate(lm.layers):
            proj = self.proj[i]
            h = layer.input_layernorm(x)
            q = proj["q_proj"](h).view(n, 1, -1, self.head_dim).transpose(1, 2)
            k = proj["k_proj"](h).view(n, 1, -1, self.head_dim).transpose(1, 2)
            v = proj["v_proj"](h).view(n, 1, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i, :, :, at] = k[:, :, 0]
            self.v[i, :, :, at] = v[:, :, 0]
            out = _attend(q, self.k[i, :, :, : at + 1], self.v[i, :, :, : at + 1], mask, self.scaling[i])
            x = x + proj["o_proj"](out.reshape(n, 1, -1))
            h = layer.post_attention_layernorm(x)
            x = x + proj["down_proj"](layer.mlp.act_fn(proj["gate_proj"](h)) * proj["up_proj"](h))
        return self.head(lm.norm(x))[:, -1]


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """One query per row against its cache: ``q (N, H, 1, d)``, ``k, v (N, Hkv, L, d)``, ``mask (N, 1, 1, L)`` ->
    ``(N, H, d)``. Softmax attention with grouped heads folded into the query axis (no repeated keys); the
    masked keys get ``-inf`` as in ``scaled_dot_product_attention``."""
    n, h, _, d = q.shape
    g = h // k.shape[1]
    scores = torch.matmul(q.view(n, k.shape[1], g, d), k.transpose(-1, -2)) * scale  # (N, Hkv, g, L)
    scores = scores.masked_fill(~mask.view(n, 1, 1, -1), float("-inf"))
    probs = scores.float().softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).view(n, h, d)
