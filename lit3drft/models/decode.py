"""A lean single-token decode step for Qwen2.5-VL language models (issue 16).

``transformers``' forward of one decode step spends most of a small model's time outside arithmetic: the
dynamic cache grows by concatenation, the causal mask is rebuilt, multimodal positions are re-derived, and every
module is dispatched through hooks and output wrappers. ``LeanDecoder`` runs the *same modules* (so LoRA layers,
merged or not, and 4-bit layers work unchanged) with:
- a **preallocated KV cache** of the rollout's final length (``prompt + max_new_tokens``), filled from the
  prefill's cache once (repeated G times) and written in place;
- the **key mask computed once** (prompt padding + generated positions) and sliced per step;
- **text positions** only: a completion token has equal temporal/height/width mrope positions, so its rotary
  angle is the text one at ``next_pos + t`` (``rope_deltas`` folded in by the caller).

The maths is HF's own: its rotary module and ``apply_rotary_pos_emb``, RMSNorms, MLPs and projections; the
attention of the single query is softmax(q k^T * scaling) v over the unmasked keys with grouped heads folded
into the query axis (``_attend``: two small matmuls, cheaper on CPU than ``scaled_dot_product_attention`` with a
mask over a strided cache; equal up to float rounding, tested against HF's step).
On CPU (``FUSE_ON``), where a decode step of a small model is a few dozen tiny GEMMs and their dispatch, the
q/k/v projections and the MLP's gate/up projections of every layer are **fused** into one GEMM each, on weights
concatenated once per rollout; only for plain ``nn.Linear`` layers (or peft layers with the adapter merged
into them), the others keep their own modules.
``supports`` says when the lean step applies (else the caller keeps HF's forward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

FUSE_ON = {"cpu"}
"""Device types on which ``LeanDecoder`` fuses projections (a copy of those weights per rollout: cheap next to the
dispatch cost it saves on CPU; on an accelerator the copy of a 3B model's weights would cost gigabytes)."""

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
        self.next_pos = next_pos.view(n)
        self.scaling = [layer.self_attn.scaling for layer in lm.layers]
        self.head_dim = head_dim
        fuse = first.device.type in FUSE_ON
        self.qkv = [_fused(layer.self_attn, ("q_proj", "k_proj", "v_proj")) if fuse else None for layer in lm.layers]
        self.gate_up = [_fused(layer.mlp, ("gate_proj", "up_proj")) if fuse else None for layer in lm.layers]

    @torch.no_grad()
    def step(self, tokens: Tensor, t: int) -> Tensor:
        """Logits ``(N, V)`` after the completion token ``tokens`` ``(N,)`` at completion index ``t``."""
        lm, n, at = self.lm, self.n, self.p + t
        x = lm.embed_tokens(tokens[:, None])  # (N, 1, D)
        pos = (self.next_pos + t).view(1, n, 1).expand(3, n, 1)
        cos, sin = lm.rotary_emb(x, pos)
        mask = self.mask[..., : at + 1]
        for i, layer in enumerate(lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            if self.qkv[i] is not None:
                weight, bias, sizes = self.qkv[i]
                q, k, v = F.linear(h, weight, bias).split(sizes, dim=-1)
            else:
                q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
            q, k, v = (z.reshape(n, 1, -1, self.head_dim).transpose(1, 2) for z in (q, k, v))
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k[i, :, :, at] = k[:, :, 0]
            self.v[i, :, :, at] = v[:, :, 0]
            out = _attend(q, self.k[i, :, :, : at + 1], self.v[i, :, :, : at + 1], mask, self.scaling[i])
            x = x + attn.o_proj(out.reshape(n, 1, -1))
            h = layer.post_attention_layernorm(x)
            if self.gate_up[i] is not None:
                weight, bias, sizes = self.gate_up[i]
                gate, up = F.linear(h, weight, bias).split(sizes, dim=-1)
                x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
            else:
                x = x + layer.mlp(h)
        return self.lm_head(lm.norm(x))[:, -1]


def _plain_linear(module: Any) -> torch.nn.Linear | None:
    """``module`` as a plain ``nn.Linear``: itself, or a peft layer's base layer when the layer's forward is the base
    layer's alone (adapter disabled, as in ``Policy.merged_adapter``, or merged into it); ``None`` for anything else
    (an active unmerged LoRA, 4-bit layers)."""
    if type(module) is torch.nn.Linear:
        return module
    base = getattr(module, "base_layer", None)
    disabled, merged = bool(getattr(module, "disable_adapters", False)), bool(getattr(module, "merged", False))
    return base if type(base) is torch.nn.Linear and disabled != merged else None


def _fused(parent: Any, names: tuple[str, ...]) -> tuple[Tensor, Tensor | None, list[int]] | None:
    """Concatenated ``(weight, bias, output sizes)`` of ``parent``'s projections ``names`` (one GEMM for all of
    them), or ``None`` when one is not a plain linear layer or their biases disagree in presence."""
    layers = [_plain_linear(getattr(parent, name)) for name in names]
    if any(m is None for m in layers) or len({m.bias is None for m in layers}) > 1:
        return None
    weight = torch.cat([m.weight for m in layers]).detach()
    bias = None if layers[0].bias is None else torch.cat([m.bias for m in layers]).detach()
    return weight, bias, [m.out_features for m in layers]


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
