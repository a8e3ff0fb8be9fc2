"""Completion tokens/s of ``Policy.generate_group`` vs plain ``model.generate`` on G copies of each prompt.

GRPO needs G completions per prompt. ``generate_group`` runs the vision tower and the prompt prefill once
per prompt and repeats the KV cache G times; the naive way (what TRL does without vLLM) puts G copies of
every prompt, frames included, through ``model.generate``. Both run here in the same process on the same
model (the tiny preset by default, LoRA attached), sampling at temperature 1 with the vision special tokens
suppressed, and the ratio is printed (last line: ``ratio: N.NNx``, generate_group over plain generate). Also
timed: generate_group with ``model.lean_decode`` off (one transformers forward per token: the decode loop before
issue 16), and generate_group with the LoRA update merged into the base weights for sampling, as ``GRPOModule``
samples by default (``grpo.merge_adapter_for_sampling``; ``ratio_merged``); plain generate runs unmerged, as TRL's
does without vLLM. Repeats alternate the four; medians are reported.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_generation.py            # G=8, 64 tokens, 4 frames
    .venv/bin/python benchmarks/bench_generation.py --pretrained /path/Qwen2.5-VL-3B-Instruct --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import numpy as np
import torch
from PIL import Image

from lit3drft.data.sample import Sample
from lit3drft.models import ModelConfig, build_policy


def make_samples(n: int, frames: int, size: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [
        Sample(
            id=f"bench/{i}",
            task="spatial",
            frames=[Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(frames)],
            prompt="These are frames of a video. How many chairs are in this room? "
            "Please answer the question using a single word or phrase. Output the final answer inside "
            "<answer> </answer> tags.",
            answer="<answer>3</answer>",
            target={},
        )
        for i in range(n)
    ]


def repeat_prompts(batch: dict, g: int) -> dict:
    """G copies of every prompt, frames included (the naive GRPO batch)."""
    out = {k: batch[k].repeat_interleave(g, dim=0) for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    per_image = batch["image_grid_thw"].prod(-1)
    pix = batch["pixel_values"].split(per_image.tolist())
    counts = batch["image_counts"].tolist()
    starts = np.cumsum([0, *counts])
    rows, grids = [], []
    for i, c in enumerate(counts):
        for _ in range(g):
            rows += pix[starts[i] : starts[i] + c]
            grids.append(batch["image_grid_thw"][starts[i] : starts[i] + c])
    out["pixel_values"], out["image_grid_thw"] = torch.cat(rows), torch.cat(grids)
    return out


def run_group(policy, samples, g: int, new_tokens: int, lean: bool = True, merge: bool = False) -> tuple[float, int]:
    policy.cfg = dataclasses.replace(policy.cfg, lean_decode=lean)
    t = time.perf_counter()
    r = policy.generate_group(samples, num_generations=g, max_new_tokens=new_tokens, temperature=1.0,
                              merge_adapter=merge)  # fmt: skip
    return time.perf_counter() - t, int(r.completion_mask.sum())


def run_plain(policy, samples, g: int, new_tokens: int) -> tuple[float, int]:
    t = time.perf_counter()
    batch = policy.to_device(repeat_prompts(policy.collate(samples), g))
    policy.core.rope_deltas = None
    out = policy.hf_model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                   max_new_tokens=new_tokens, suppress_tokens=policy.suppressed_token_ids,
                                   eos_token_id=policy.stop_token_ids, pad_token_id=policy.pad_token_id)  # fmt: skip
    elapsed = time.perf_counter() - t
    comp = out[:, batch["input_ids"].shape[1] :]
    stop = torch.isin(comp, torch.tensor(policy.stop_token_ids, device=comp.device))
    # tokens up to and including the first stop token (HF pads after it)
    after_stop = stop.long().cumsum(1) - stop.long() > 0
    return elapsed, int((~after_stop).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrained", default="", help="local checkpoint (default: the tiny preset)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(preset="" if args.pretrained else "tiny", pretrained=args.pretrained)
    policy = build_policy(cfg).to(args.device).eval()
    samples = make_samples(args.prompts, args.frames, args.size)
    g, n = args.generations, args.new_tokens
    with torch.no_grad():
        for lean, merge in ((True, False), (False, False), (True, True)):  # warm-up (first use of a shape is slow)
            run_group(policy, samples, g, n, lean, merge)
        run_plain(policy, samples, g, n)
        group, hf_step, plain, merged = [], [], [], []
        for _ in range(args.repeats):  # the four alternate, so load drifts hit them alike
            t, k = run_group(policy, samples, g, n, lean=True)
            group.append(k / t)
            t, k = run_group(policy, samples, g, n, lean=True, merge=True)
            merged.append(k / t)
            t, k = run_group(policy, samples, g, n, lean=False)
            hf_step.append(k / t)
            t, k = run_plain(policy, samples, g, n)
            plain.append(k / t)
    med = statistics.median
    res = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "prompts": args.prompts,
        "G": g,
        "new_tokens": n,
        "frames": args.frames,
        "frame_size": args.size,
        "generate_group_tok_s": round(med(group), 1),
        "generate_group_hf_step_tok_s": round(med(hf_step), 1),
        "generate_group_merged_tok_s": round(med(merged), 1),
        "plain_generate_tok_s": round(med(plain), 1),
        "lean_vs_hf_step": round(med(group) / med(hf_step), 2),
        "ratio_merged": round(med(merged) / med(plain), 2),
        "ratio": round(med(group) / med(plain), 2),
    }
    print(json.dumps(res))
    print(f"ratio_merged: {res['ratio_merged']:.2f}x")  # as GRPOModule samples: LoRA merged for sampling
    print(f"ratio: {res['ratio']:.2f}x")  # generate_group (lean decode, unmerged) vs plain model.generate on G copies


if __name__ == "__main__":
    main()
