"""Per-lever CPU-time ablation of lit3drft's GRPO step pieces (issue 8), robust to a shared machine.

Same set-up as ``bench_grpo_step.py`` (tiny preset, LoRA r=8 on q/k/v/o, 2 prompts x 4 frames 112 px, G=8,
64 new tokens, fp32). Each lever's piece of the step runs with the fast path on and off, alternating, and the
medians of the process CPU time (``time.process_time``) and wall time are compared:

- shared-prefix: policy log-probs + backward over the rollout in micro-batches of ``--micro-batch``;
- visual-reuse: the same with the rollout's visual features dropped (frames encoded per micro-batch);
- ref-chunk: the no-grad reference pass (adapter disabled) in chunks of 4 micro-batches vs one micro-batch;
- merge: ``generate_group`` with the LoRA update merged vs through the LoRA layers.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_grpo_levers.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generation import make_samples  # noqa: E402
from grpo_bench_common import LORA_TARGETS, perturb_lora  # noqa: E402

from lit3drft.models import ModelConfig, build_policy  # noqa: E402


def timed(fn) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="tiny", finetune="lora", lora_r=8, lora_alpha=32,
                                      lora_target_modules=LORA_TARGETS, dtype="float32"))  # fmt: skip
    perturb_lora(policy.model)
    policy.stop_token_ids = []
    policy.train()
    samples = make_samples(2, 4, 112)
    with torch.no_grad():
        rollout = policy.generate_group(samples, num_generations=8, max_new_tokens=64)
    n, mb = len(rollout.texts), args.micro_batch
    chunks = [list(range(s, min(s + mb, n))) for s in range(0, n, mb)]
    feats = rollout.visual_features

    def train_pass(shared: bool, reuse: bool) -> None:
        rollout.visual_features = feats if reuse else None
        for rows in chunks:
            policy.sequence_logprobs(rollout, rows=rows, shared_prefix=shared).sum().backward()
        policy.zero_grad(set_to_none=True)
        rollout.visual_features = feats

    def ref_pass(factor: int) -> None:
        with torch.no_grad(), policy.reference():
            for s in range(0, n, mb * factor):
                policy.sequence_logprobs(rollout, rows=list(range(s, min(s + mb * factor, n))))

    def gen(merge: bool) -> None:
        with torch.no_grad():
            policy.generate_group(samples, num_generations=8, max_new_tokens=64, merge_adapter=merge)

    levers = {
        "shared-prefix": (lambda: train_pass(False, True), lambda: train_pass(True, True)),
        "visual-reuse": (lambda: train_pass(True, False), lambda: train_pass(True, True)),
        "ref-chunk": (lambda: ref_pass(1), lambda: ref_pass(4)),
        "merge": (lambda: gen(False), lambda: gen(True)),
    }
    results = {"load_avg": os.getloadavg(), "micro_batch": mb, "rows": n}
    for name, (off, on) in levers.items():
        off(), on()  # warm-up
        rows = {"off": [], "on": []}
        for _ in range(args.repeats):
            rows["off"].append(timed(off))
            rows["on"].append(timed(on))
        med = {k: [statistics.median(x[i] for x in v) for i in (0, 1)] for k, v in rows.items()}
        results[name] = {"off_wall_s": round(med["off"][0], 3), "on_wall_s": round(med["on"][0], 3),
                         "off_cpu_s": round(med["off"][1], 3), "on_cpu_s": round(med["on"][1], 3),
                         "on_over_off_wall": round(med["on"][0] / med["off"][0], 3),
                         "on_over_off_cpu": round(med["on"][1] / med["off"][1], 3)}  # fmt: skip
        print(name, json.dumps(results[name]), flush=True)
    results["load_avg_end"] = os.getloadavg()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
