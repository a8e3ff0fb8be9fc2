"""``model.compact_decode`` on real rollouts (issue 16): tokens/s of ``generate_group`` with the stopped rows
dropped vs every row run to the end, on the embedded benchmark's detection prompts and the embedded base, where
completions stop at different lengths (the random model of ``benchmarks/bench_generation.py`` rarely stops).

    OMP_NUM_THREADS=2 .venv/bin/python dev/compact_decode_probe.py [--prompts 2] [--repeats 3] [--task detection]

Alternates the two settings under the same seeds; prints completion lengths and the median tokens/s of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from lit3drft.config import load_config
from lit3drft.fit import build_datamodule
from lit3drft.models import build_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/quickstart.yaml")
    ap.add_argument("--task", default="detection")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=420)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load_config(args.config)
    policy = build_policy(cfg.model).eval()
    dm = build_datamodule(cfg, policy, None)
    dm.prepare_data()
    dm.setup("test")
    data = dm.datasets["test"]
    samples = [s for s in (data[i] for i in range(len(data))) if s.task == args.task][: args.prompts]
    rates: dict[bool, list[float]] = {True: [], False: []}
    lengths = None
    with torch.no_grad():
        for rep in range(args.repeats + 1):  # the first round warms up
            for compact in (True, False):
                policy.cfg = dataclasses.replace(policy.cfg, compact_decode=compact)
                torch.manual_seed(rep)
                start = time.perf_counter()
                r = policy.generate_group(samples, num_generations=args.generations, max_new_tokens=args.new_tokens)
                elapsed = time.perf_counter() - start
                if rep:
                    rates[compact].append(float(r.completion_mask.sum()) / elapsed)
                    lengths = r.completion_mask.sum(1).tolist()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"task": args.task, "prompts": len(samples), "G": args.generations, "lengths_last": lengths,
                      "compact_tok_s": round(med[True], 1), "all_rows_tok_s": round(med[False], 1),
                      "threads": torch.get_num_threads()}))  # fmt: skip
    print(f"compact vs all rows: {med[True] / med[False]:.2f}x")


if __name__ == "__main__":
    main()
