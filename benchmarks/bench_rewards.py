"""Speed of the reward library on one CPU thread: box3d_overlap pairs/s (N x M and paired) against the scipy
reference in the same run, agreement, and completions/s of the detection reward.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_rewards.py [--pairs 20000] [--ref-pairs 300] [--compiled]

``box3d_overlap`` is eager torch. ``--compiled`` also times it with the clipping step under ``torch.compile``
(an experiment, not a library option: on these CPUs inductor's code for the gather-heavy clipping was ~3x
slower than eager and took ~15 s per chunk shape to compile; see dev/LOG.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lit3drft.rewards import box3d_corners, box3d_overlap, detection_reward  # noqa: E402
from lit3drft.rewards import boxes as box_lib  # noqa: E402
from tests.rewards.reference import reference_volume  # noqa: E402


def mostly_overlapping(n: int, gen: torch.Generator) -> torch.Tensor:
    """Random 9-DoF boxes, centres in a 0.5 m cube, sizes 0.5-2 m: ~all pairs overlap."""
    centre = torch.rand(n, 3, generator=gen) * 0.5
    size = torch.rand(n, 3, generator=gen) * 1.5 + 0.5
    angles = (torch.rand(n, 3, generator=gen) - 0.5) * 2 * math.pi
    return torch.cat([centre, size, angles], 1)


def rate(fn, count: int, repeat: int = 3) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeat))
    return count / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--ref-pairs", type=int, default=300)
    parser.add_argument("--compiled", action="store_true", help="also time the clipping under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    pa, pb = mostly_overlapping(args.pairs, gen), mostly_overlapping(args.pairs, gen)
    a, b = box3d_corners(pa), box3d_corners(pb)  # float32
    side = int(math.sqrt(args.pairs))
    paired = rate(lambda: box3d_overlap(a, b, paired=True), args.pairs)
    grid = rate(lambda: box3d_overlap(a[:side], b[:side]), side * side)
    a64, b64 = box3d_corners(pa[: args.ref_pairs].double()), box3d_corners(pb[: args.ref_pairs].double())
    ra, rb = a64.numpy(), b64.numpy()
    start = time.perf_counter()
    ref = torch.tensor([reference_volume(x, y) for x, y in zip(ra, rb)], dtype=torch.float64)
    ref_rate = args.ref_pairs / (time.perf_counter() - start)
    vol32 = box3d_overlap(a[: args.ref_pairs], b[: args.ref_pairs], paired=True)[0].double()
    vol64 = box3d_overlap(a64, b64, paired=True)[0]
    # detection reward: 8 boxes per scene, 8 predictions per completion, noisy copies of the truth
    boxes = mostly_overlapping(8 * 256, gen).view(256, 8, 9) * torch.tensor([8, 8, 8, 1, 1, 1, 1, 1, 1])
    targets = [{"task": "detection", "boxes": s.tolist(), "labels": ["chair"] * 8} for s in boxes]
    noisy = boxes + 0.1 * torch.randn(boxes.shape, generator=gen)
    completions = [
        "<answer>"
        + json.dumps([{"label": "chair", "bbox_3d": [round(v, 2) for v in x]} for x in s.tolist()])
        + "</answer>"
        for s in noisy
    ]
    reward = rate(lambda: detection_reward(completions, targets), len(completions), repeat=2)
    overlap = (ref > 0).float().mean().item()
    print(f"box3d_overlap paired (float32, eager): {paired:,.0f} pairs/s")
    print(f"box3d_overlap N x M ({side}x{side}, float32, eager): {grid:,.0f} pairs/s")
    print(f"scipy reference (HalfspaceIntersection + ConvexHull): {ref_rate:,.0f} pairs/s")
    print(f"speed-up over the reference (eager): paired {paired / ref_rate:,.0f}x, N x M {grid / ref_rate:,.0f}x")
    if args.compiled:
        eager_clip = box_lib._clip_polygons
        box_lib._clip_polygons = torch.compile(eager_clip, dynamic=False)
        try:
            start = time.perf_counter()
            box3d_overlap(a, b, paired=True), box3d_overlap(a[:side], b[:side])  # one compile per chunk shape
            compile_s = time.perf_counter() - start
            paired_c = rate(lambda: box3d_overlap(a, b, paired=True), args.pairs)
            grid_c = rate(lambda: box3d_overlap(a[:side], b[:side]), side * side)
        finally:
            box_lib._clip_polygons = eager_clip
        print(
            f"box3d_overlap compiled clipping: paired {paired_c:,.0f} pairs/s ({paired_c / ref_rate:,.0f}x reference, "
            f"{paired_c / paired:.2f}x eager), N x M {grid_c:,.0f} pairs/s ({grid_c / ref_rate:,.0f}x reference, "
            f"{grid_c / grid:.2f}x eager); first calls incl. compile {compile_s:.1f} s"
        )
    print(
        f"agreement over {args.ref_pairs} pairs ({overlap:.0%} overlapping): max |vol - ref| float32 "
        f"{(vol32 - ref).abs().max():.2e}, float64 {(vol64 - ref).abs().max():.2e}"
    )
    print(f"detection reward (8 predictions x 8 boxes): {reward:,.0f} completions/s")


if __name__ == "__main__":
    main()
