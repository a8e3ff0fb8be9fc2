"""The arithmetic floor of a decode step on this CPU (issue 16): how fast could ``generate_group`` be?

Times, in one process on the tiny preset (2 prompts x 4 frames of 112 px, G = 8, 64 tokens, as
``benchmarks/bench_generation.py``):
- ``group``: a whole ``generate_group`` rollout (lean decode, full fine-tuning so no LoRA ops);
- ``prefill``: the vision tower + prompt prefill of the 2 prompts (``use_cache``), once;
- ``gemm``: per decode step, only the step's weight GEMMs at its shapes (16 rows: q, k, v, o, gate, up, down of
  every layer and the LM head, ``F.linear`` on preallocated inputs);
- ``attn``: per decode step, only the attention matmuls over a cache of the rollout's length (every layer);
- ``plain``: ``model.generate`` on G copies of every prompt (the benchmark's baseline).
The floor of a rollout is ``prefill + steps * (gemm + attn)``: nothing but the arithmetic that no decode loop can
skip. ``plain / floor`` is the best ratio any decode loop could reach here with float32 weights.

    OMP_NUM_THREADS=2 .venv/bin/python dev/decode_floor_probe.py [--size 112] [--repeats 5]
"""

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_generation import make_samples, run_plain

from lit3drft.models import ModelConfig, build_policy
from lit3drft.models.decode import _attend, language_model

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=112)
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()
torch.manual_seed(0)
G, STEPS = 8, 64
policy = build_policy(ModelConfig(preset="tiny", finetune="full")).eval()
samples = make_samples(2, 4, args.size)
lm, head = language_model(policy.hf_model), policy.hf_model.lm_head
n = 2 * G
batch = policy.to_device(policy.collate(samples))
prompt_len = batch["input_ids"].shape[1]
x = torch.randn(n, 1, lm.config.hidden_size)
wide = torch.randn(n, 1, lm.config.intermediate_size)
kv, hd = lm.config.num_key_value_heads, lm.config.hidden_size // lm.config.num_attention_heads
cache = torch.randn(n, kv, prompt_len + STEPS, hd)
q = torch.randn(n, lm.config.num_attention_heads, 1, hd)
mask = torch.ones(n, 1, 1, prompt_len + STEPS, dtype=torch.bool)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def gemms() -> None:
    for layer in lm.layers:
        a, m = layer.self_attn, layer.mlp
        for proj in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj):
            F.linear(x, proj.weight, proj.bias)
        F.linear(wide, m.down_proj.weight, m.down_proj.bias)
    F.linear(x, head.weight)


def attention(t: int) -> None:
    at = prompt_len + t + 1
    for layer in lm.layers:
        _attend(q, cache[:, :, :at], cache[:, :, :at], mask[..., :at], layer.self_attn.scaling)


def prefill() -> None:
    policy.core.rope_deltas = None
    pos, _ = policy.positions(batch["input_ids"], batch["mm_token_type_ids"], batch["attention_mask"], batch)
    policy.hf_model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                              "image_grid_thw")},
                    position_ids=pos, use_cache=True, logits_to_keep=1)  # fmt: skip


rows: dict[str, list[float]] = {}
with torch.no_grad():
    for rep in range(args.repeats + 1):
        r = {
            "group": timed(lambda: policy.generate_group(samples, num_generations=G, max_new_tokens=STEPS)),
            "prefill": timed(prefill),
            "gemm": timed(lambda: [gemms() for _ in range(STEPS)]) / STEPS,
            "attn": timed(lambda: [attention(t) for t in range(STEPS)]) / STEPS,
            "plain": run_plain(policy, samples, G, STEPS)[0],
        }
        if rep:
            for k, v in r.items():
                rows.setdefault(k, []).append(v)
med = {k: statistics.median(v) for k, v in rows.items()}
floor = med["prefill"] + STEPS * (med["gemm"] + med["attn"])
print(f"threads {torch.get_num_threads()}, {n} rows, prompt {prompt_len} tokens, {STEPS} steps, {args.size} px")
print(
    f"rollout: group {med['group'] * 1e3:.0f} ms, plain {med['plain'] * 1e3:.0f} ms (ratio {med['plain'] / med['group']:.2f}x)"
)
print(
    f"per step: gemm {med['gemm'] * 1e3:.2f} ms, attention {med['attn'] * 1e3:.2f} ms; prefill {med['prefill'] * 1e3:.0f} ms"
)
print(
    f"floor rollout {floor * 1e3:.0f} ms: group is {med['group'] / floor:.2f}x the floor; best ratio {med['plain'] / floor:.2f}x"
)
