"""Intra-op threads of the decode loop (issue 16): completion tokens/s of ``generate_group`` and of plain
``model.generate`` on G copies at 1 and 2 torch threads, alternated in one process (tiny preset, 2 prompts x 4
frames, G=8, 64 tokens, as ``benchmarks/bench_generation.py``). A decode step of 16 rows is ~150 tiny ops; with
2 OpenMP threads each op pays a fork/join, which can cost more than the second core gives back.

    OMP_NUM_THREADS=2 .venv/bin/python dev/decode_threads_probe.py [--size 112] [--repeats 5]
"""

import argparse
import os
import statistics
import sys

import torch

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from bench_generation import make_samples, run_group, run_plain

from lit3drft.models import ModelConfig, build_policy

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=112)
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()
torch.manual_seed(0)
policy = build_policy(ModelConfig(preset="tiny")).eval()  # LoRA unmerged: the benchmark's `ratio` setting
samples = make_samples(2, 4, args.size)
rates: dict[str, list[float]] = {}
with torch.no_grad():
    for rep in range(args.repeats + 1):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            for name, fn in (("group", lambda: run_group(policy, samples, 8, 64)),
                             ("plain", lambda: run_plain(policy, samples, 8, 64))):  # fmt: skip
                t, k = fn()
                if rep:  # the first round warms every shape up
                    rates.setdefault(f"{name}@{threads}", []).append(k / t)
for key, vals in rates.items():
    print(f"{key}: {statistics.median(vals):,.0f} tok/s (runs: {', '.join(f'{v:,.0f}' for v in vals)})")
