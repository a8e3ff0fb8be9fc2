"""Ways to run the decode step's projections on the CPU, timed at its shapes (issue 16).

``OMP_NUM_THREADS=1 python dev/linear_variants_probe.py [--rows 16] [--repeats 3] [--calls 2000]``: at M = rows,
hidden 256 (the tiny preset): ``F.linear`` vs ``addmm`` on a transposed view and on a contiguous transpose vs oneDNN's
``MkldnnLinear`` (``torch.utils.mkldnn.to_mkldnn``), for a 256x1024 projection; and q/k/v (256/128/128) and gate/up
(1024/1024) as separate GEMMs vs one fused GEMM each. Alternated in one process; prints microseconds per call
and the largest difference of each variant from ``F.linear``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F


def timed(fn, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(args.rows, 256)
    lin = torch.nn.Linear(256, 1024)
    w, b = lin.weight.detach(), lin.bias.detach()
    wt = w.t().contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.utils.mkldnn as mk

        onednn = mk.to_mkldnn(torch.nn.Sequential(lin))[0]
    wq, wk, wv = torch.randn(256, 256), torch.randn(128, 256), torch.randn(128, 256)
    bq, bk, bv = torch.randn(256), torch.randn(128), torch.randn(128)
    wg, wu = torch.randn(1024, 256), torch.randn(1024, 256)
    wqkv, bqkv, wgu = torch.cat([wq, wk, wv]), torch.cat([bq, bk, bv]), torch.cat([wg, wu])
    variants = {
        "linear": lambda: F.linear(x, w, b),
        "addmm_view": lambda: torch.addmm(b, x, w.t()),
        "addmm_contiguous": lambda: torch.addmm(b, x, wt),
        "mkldnn_linear": lambda: onednn(x),
        "qkv_gateup_apart": lambda: (
            F.linear(x, wq, bq),
            F.linear(x, wk, bk),
            F.linear(x, wv, bv),
            F.linear(x, wg),
            F.linear(x, wu),
        ),  # fmt: skip
        "qkv_gateup_fused": lambda: (F.linear(x, wqkv, bqkv).split([256, 128, 128], -1), F.linear(x, wgu).chunk(2, -1)),
    }
    with torch.no_grad():
        ref = F.linear(x, w, b)
        for name in ("addmm_view", "addmm_contiguous", "mkldnn_linear"):
            print(f"{name}: max |diff| vs F.linear {(variants[name]() - ref).abs().max().item():.2e}")
        for r in range(args.repeats):
            print(f"repeat {r}: " + ", ".join(f"{k} {timed(f, args.calls):.1f} us" for k, f in variants.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
