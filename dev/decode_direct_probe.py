"""Issue 16: ``LeanDecoder``'s direct ``F.linear`` calls (``decode.direct_linear``) vs calling the projection modules.

Times ``generate_group`` (the benchmark's setting: tiny preset with LoRA, 2 prompts x G=8, 64 tokens, 4 frames of 112
px, temperature 1) with the decoder's projections as built (direct) and replaced by the modules themselves (the
decoder before the change), merged and unmerged LoRA, alternating; prints medians and the ratios.

    OMP_NUM_THREADS=2 .venv/bin/python dev/decode_direct_probe.py [--size 112] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_generation import make_samples  # noqa: E402

from lit3drft.models import ModelConfig, build_policy, decode  # noqa: E402

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def modules_only(self, *args, **kwargs):
    """``LeanDecoder.__init__`` with every projection called as its module (no direct calls)."""
    original_init(self, *args, **kwargs)
    lm = self.lm
    self.proj = [{p: getattr(layer.self_attn if p in PROJ[:4] else layer.mlp, p) for p in PROJ} for layer in lm.layers]
    self.head = self.lm_head


original_init = decode.LeanDecoder.__init__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    policy = build_policy(ModelConfig(preset="tiny")).eval()
    samples = make_samples(2, 4, args.size)
    times: dict[tuple[str, bool], list[float]] = {}
    with torch.no_grad():
        for rep in range(args.repeats + 1):
            for how in ("direct", "modules"):
                decode.LeanDecoder.__init__ = original_init if how == "direct" else modules_only
                for merge in (False, True):
                    t = time.perf_counter()
                    r = policy.generate_group(samples, num_generations=8, max_new_tokens=64, temperature=1.0,
                                              merge_adapter=merge)  # fmt: skip
                    tok = int(r.completion_mask.sum())
                    if rep:  # the first round warms up
                        times.setdefault((how, merge), []).append(tok / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in times.items()}
    for merge in (False, True):
        d, m = med[("direct", merge)], med[("modules", merge)]
        print(f"{'merged' if merge else 'unmerged'}: direct {d:,.0f} tok/s, modules {m:,.0f} tok/s: {d / m:.2f}x")


if __name__ == "__main__":
    main()
