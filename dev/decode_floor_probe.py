"""The arithmetic floor of a decode step on this CPU (issue 16): how fast could ``generate_group`` be?

Times, in one process on the tiny preset with its LoRA adapter (2 prompts x 4 frames of 112 px, G = 8, 64 tokens,
as ``benchmarks/bench_generation.py``):
- ``group``: a whole ``generate_group`` rollout with the adapter merged for sampling (as ``GRPOModule`` samples);
- ``prefill``: the vision tower + prompt prefill of the 2 prompts (``use_cache``), once;
- ``gemm``: per decode step, only the step's weight GEMMs at its shapes (16 rows: q, k, v, o, gate, up, down of
  every layer and the LM head, ``F.linear`` on preallocated inputs; merged weights have the base's shapes);
- ``attn``: per decode step, only the attention matmuls over the layers' own K and V caches of the rollout's length;
- ``sample``: per decode step, the sampling every loop needs (softmax, one inverse-CDF draw, log-softmax, gather);
- ``plain``: ``model.generate`` on G copies of every prompt, adapter unmerged (the benchmark's baseline).
A rollout of T tokens runs T - 1 decode steps after the prefill and T samplings. The floor is
``prefill + (T - 1) * (gemm + attn) + T * sample``: work no decode loop can skip. ``plain / floor`` is the best
``ratio_merged`` any float32 decode loop could reach here.

    OMP_NUM_THREADS=2 .venv/bin/python dev/decode_floor_probe.py [--size 112] [--repeats 5]

Two other modes, for the levers measured against the floor (dev/LOG.md, eleventh session):
- ``--threads``: completion tokens/s of ``generate_group`` (unmerged) and plain ``generate`` at 2 and 1 intra-op
  threads, alternated (a step of 16 rows is ~230 tiny ops: does the second thread's fork/join pay?);
- ``--fusions``: microseconds of the step's fusion candidates at its shapes: HF's RMSNorm vs ``F.rms_norm``,
  q and k rotated apart vs in one call, q/k/v as three GEMMs vs one, gate/up as two vs one.
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
from bench_generation import make_samples, run_group, run_plain
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from lit3drft.models import ModelConfig, build_policy
from lit3drft.models.decode import _attend, language_model
from lit3drft.models.generation import sample_categorical

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=112)
ap.add_argument("--repeats", type=int, default=5)
mode = ap.add_mutually_exclusive_group()
mode.add_argument("--threads", action="store_true", help="compare 2 and 1 intra-op threads instead")
mode.add_argument("--fusions", action="store_true", help="time the fusion candidates instead")
args = ap.parse_args()
torch.manual_seed(0)
G, STEPS = 8, 64
policy = build_policy(ModelConfig(preset="tiny")).eval()  # LoRA, as the benchmark
samples = make_samples(2, 4, args.size)
lm, head = language_model(policy.hf_model), policy.hf_model.lm_head
n = 2 * G
batch = policy.to_device(policy.collate(samples))
prompt_len = batch["input_ids"].shape[1]
x = torch.randn(n, 1, lm.config.hidden_size)
wide = torch.randn(n, 1, lm.config.intermediate_size)
kv, hd = lm.config.num_key_value_heads, lm.config.hidden_size // lm.config.num_attention_heads
layers = len(lm.layers)
keys, values = (torch.randn(layers, n, kv, prompt_len + STEPS, hd) for _ in range(2))  # as LeanDecoder's
logits = torch.randn(n, head.weight.shape[0])
q = torch.randn(n, lm.config.num_attention_heads, 1, hd)
mask = torch.ones(n, 1, 1, prompt_len + STEPS, dtype=torch.bool)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def base(proj):
    return getattr(proj, "base_layer", proj)  # a LoRA layer's base Linear: the merged weights' shape


def gemms() -> None:
    for layer in lm.layers:
        a, m = layer.self_attn, layer.mlp
        for proj in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj):
            F.linear(x, base(proj).weight, base(proj).bias)
        F.linear(wide, base(m.down_proj).weight, base(m.down_proj).bias)
    F.linear(x, base(head).weight)


def attention(t: int) -> None:
    at = prompt_len + t + 1
    for i, layer in enumerate(lm.layers):
        _attend(q, keys[i, :, :, :at], values[i, :, :, :at], mask[..., :at], layer.self_attn.scaling)


def sample() -> None:
    tok = sample_categorical(logits.softmax(-1))
    logits.log_softmax(-1).gather(1, tok[:, None])


def prefill() -> None:
    policy.core.rope_deltas = None
    pos, _ = policy.positions(batch["input_ids"], batch["mm_token_type_ids"], batch["attention_mask"], batch)
    policy.hf_model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                              "image_grid_thw")},
                    position_ids=pos, use_cache=True, logits_to_keep=1)  # fmt: skip


def per_call_us(fn, calls: int = 2000) -> float:
    for _ in range(100):
        fn()
    return timed(lambda: [fn() for _ in range(calls)]) / calls * 1e6


def compare_threads() -> None:
    rates: dict[str, list[float]] = {}
    for rep in range(args.repeats + 1):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            for name, fn in (("group", lambda: run_group(policy, samples, G, STEPS)),
                             ("plain", lambda: run_plain(policy, samples, G, STEPS))):  # fmt: skip
                t, k = fn()
                if rep:  # the first round warms every shape up
                    rates.setdefault(f"{name}@{threads}", []).append(k / t)
    for key, vals in rates.items():
        print(f"{key}: {statistics.median(vals):,.0f} tok/s (runs: {', '.join(f'{v:,.0f}' for v in vals)})")


def compare_fusions() -> None:
    layer = lm.layers[0]
    a, m, norm = layer.self_attn, layer.mlp, layer.input_layernorm
    heads = lm.config.num_attention_heads
    qh, kh = torch.randn(n, heads, 1, hd), torch.randn(n, kv, 1, hd)
    cos, sin = torch.randn(n, 1, hd), torch.randn(n, 1, hd)
    qk = torch.cat([qh, kh], 1)
    w = {name: base(proj) for name, proj in (("q", a.q_proj), ("k", a.k_proj), ("v", a.v_proj),
                                            ("gate", m.gate_proj), ("up", m.up_proj))}  # fmt: skip
    qkv_w = torch.cat([w["q"].weight, w["k"].weight, w["v"].weight])
    qkv_b = torch.cat([w["q"].bias, w["k"].bias, w["v"].bias])
    gate_up = torch.cat([w["gate"].weight, w["up"].weight])

    def rotate_both():
        c, s_ = cos[:, None], sin[:, None]
        x1, x2 = qk.chunk(2, -1)
        return qk * c + torch.cat((-x2, x1), -1) * s_

    pairs = {
        "RMSNorm": (lambda: norm(x), lambda: F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)),
        "rotary q, k": (lambda: apply_rotary_pos_emb(qh, kh, cos, sin), rotate_both),
        "q/k/v GEMMs": (
            lambda: [F.linear(x, w[k].weight, w[k].bias) for k in "qkv"],
            lambda: F.linear(x, qkv_w, qkv_b),
        ),  # fmt: skip
        "gate/up GEMMs": (
            lambda: (F.linear(x, w["gate"].weight), F.linear(x, w["up"].weight)),
            lambda: F.linear(x, gate_up),
        ),  # fmt: skip
    }
    for name, (apart, fused) in pairs.items():
        print(f"{name}: {per_call_us(apart):.1f} us apart, {per_call_us(fused):.1f} us fused")


with torch.no_grad():
    if args.threads:
        compare_threads()
        sys.exit(0)
    if args.fusions:
        compare_fusions()
        sys.exit(0)

rows: dict[str, list[float]] = {}
with torch.no_grad():
    for rep in range(args.repeats + 1):
        r = {
            "group": timed(
                lambda: policy.generate_group(samples, num_generations=G, max_new_tokens=STEPS, merge_adapter=True)
            ),
            "prefill": timed(prefill),
            "gemm": timed(lambda: [gemms() for _ in range(STEPS - 1)]) / (STEPS - 1),
            "attn": timed(lambda: [attention(t) for t in range(STEPS - 1)]) / (STEPS - 1),
            "sample": timed(lambda: [sample() for _ in range(STEPS)]) / STEPS,
            "plain": run_plain(policy, samples, G, STEPS)[0],
        }
        if rep:
            for k, v in r.items():
                rows.setdefault(k, []).append(v)
med = {k: statistics.median(v) for k, v in rows.items()}
floor = med["prefill"] + (STEPS - 1) * (med["gemm"] + med["attn"]) + STEPS * med["sample"]
print(f"threads {torch.get_num_threads()}, {n} rows, prompt {prompt_len} tokens, {STEPS} steps, {args.size} px")
ms = {k: v * 1e3 for k, v in med.items()}
print(
    f"rollout: group (merged) {ms['group']:.0f} ms, plain {ms['plain']:.0f} ms (ratio_merged {ms['plain'] / ms['group']:.2f}x)"
)
print(
    f"per step: gemm {ms['gemm']:.2f} ms, attention {ms['attn']:.2f} ms, sampling {ms['sample']:.2f} ms; prefill {ms['prefill']:.0f} ms"
)
print(
    f"floor {floor * 1e3:.0f} ms: group is {med['group'] / floor:.2f}x the floor; best ratio_merged {med['plain'] / floor:.2f}x"
)
