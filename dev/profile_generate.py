"""Where ``generate_group``'s time goes (issue 16): a ``torch.profiler`` table of one rollout of the benchmark's shape.

    OMP_NUM_THREADS=1 .venv/bin/python dev/profile_generate.py     # 2 prompts x G=8, 64 tokens, 4 frames of 112 px

Prints the top ops by self CPU time (fourth session, 1 thread, cores idle: one rollout 0.48 s, ``aten::mm`` 42 %,
73 calls a step at ~42 us; attention ``bmm`` 15 % at ~142 us a call; beside a pretraining run: 39 % / 14 %).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_generation import make_samples  # noqa: E402

from lit3drft.models import ModelConfig, build_policy  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    policy = build_policy(ModelConfig(preset="tiny", finetune="lora")).eval()
    samples = make_samples(2, 4, 112)
    with torch.no_grad():
        policy.generate_group(samples, num_generations=8, max_new_tokens=64, temperature=1.0)  # warm-up
        start = time.perf_counter()
        policy.generate_group(samples, num_generations=8, max_new_tokens=64, temperature=1.0)
        print(f"one rollout: {time.perf_counter() - start:.3f} s")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            policy.generate_group(samples, num_generations=8, max_new_tokens=64, temperature=1.0)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
