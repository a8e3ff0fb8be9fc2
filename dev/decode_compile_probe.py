"""``torch.compile`` of the lean decode step, measured against the eager step (issue 16; dev/LOG.md 2026-12-02).

Patches ``LeanDecoder.step`` with a static-shape variant (attention over the whole preallocated cache, keys past
the current position masked) so that one graph could serve every step, compiles it, and prints completion tokens/s
of ``generate_group`` (tiny preset, full fine-tuning, 2 prompts x 4 frames of 112 px, G=8, 64 tokens): eager,
static eager, the first compiled rollout's seconds (compilation), compiled steady state. Not library code: the
measurement said not to adopt it.

    OMP_NUM_THREADS=2 .venv/bin/python dev/decode_compile_probe.py
"""

import os
import sys
import time

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_generation import make_samples

from lit3drft.models import ModelConfig, build_policy, decode

p = build_policy(ModelConfig(preset="tiny", finetune="full")).eval()
s = make_samples(2, 4, 112)


def run():
    t = time.perf_counter()
    r = p.generate_group(s, num_generations=8, max_new_tokens=64)
    return time.perf_counter() - t, int(r.completion_mask.sum())


run()
base = [run() for _ in range(3)]
print("eager", [round(k / t) for t, k in base])
# static-shape step: attend over the whole cache
orig = decode.LeanDecoder.step


def step_static(self, tokens, t):
    lm, n, at = self.lm, self.n, self.p + t
    x = lm.embed_tokens(tokens[:, None])
    pos = (self.next_pos + t).view(1, n, 1).expand(3, n, 1)
    cos, sin = lm.rotary_emb(x, pos)
    mask = self.mask & (torch.arange(self.mask.shape[-1]) <= at)
    idx = torch.tensor([at])
    for i, layer in enumerate(lm.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(n, 1, -1, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(n, 1, -1, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(n, 1, -1, self.head_dim).transpose(1, 2)
        q, k = decode.apply_rotary_pos_emb(q, k, cos, sin)
        self.k[i].index_copy_(2, idx, k)
        self.v[i].index_copy_(2, idx, v)
        out = decode._attend(q, self.k[i], self.v[i], mask, self.scaling[i])
        x = x + attn.o_proj(out.reshape(n, 1, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return self.lm_head(lm.norm(x))[:, -1]


decode.LeanDecoder.step = torch.no_grad()(step_static)
print("static eager", [round(k / t) for t, k in [run() for _ in range(3)]])
compiled = torch.compile(step_static, dynamic=False)
decode.LeanDecoder.step = torch.no_grad()(lambda self, tok, t: compiled(self, tok, t))
t0 = time.perf_counter()
first = run()
print("first compiled rollout s", round(time.perf_counter() - t0, 1))
print("compiled", [round(k / t) for t, k in [run() for _ in range(3)]])
