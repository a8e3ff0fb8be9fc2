"""``python -m lit3drft.probe RUN_DIR | CHECKPOINT [--split test] [--stage NAME] [key=value ...]``: does it see?

For the detection and grounding samples of a split (the evaluation subset ``data.max_eval_samples`` selects),
measures the **image-swap gap**: the answer cross-entropy (nats per answer token) with the frames of the next
sample of the same task minus with the sample's own frames. A policy that ignores the pixels scores 0; one
that reads them pays for another room's frames. For grounding and spatial questions, the **question-swap gap**
does the same with the next sample's prompt (its referring expression or question) on the sample's own frames:
0 for a policy that answers without reading the question. Detection answers are also decoded greedily and scored
class-agnostically (``lit3drft.algorithms.dense.detection_probe``: mIoU, label accuracy, centre error).
Writes ``<run_dir>/probe-<split>.json`` (or ``--out``) and prints it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from lit3drft.algorithms.dense import detection_probe
from lit3drft.algorithms.sft import answer_only_cross_entropy
from lit3drft.config import ConfigError
from lit3drft.data.sample import Sample
from lit3drft.evaluate import resolve_target, target_parser
from lit3drft.fit import build_datamodule, load_trainable
from lit3drft.models import build_policy
from lit3drft.runinfo import device_description, git_commit, write_json_atomic


@torch.no_grad()
def answer_ce(policy, samples: list[Sample]) -> tuple[float, int]:
    """Summed answer-token cross-entropy (nats) of ``samples`` under teacher forcing, and the token count."""
    batch = policy.collate(samples, with_answer=True)
    labels = batch["labels"]
    n = int((labels[:, 1:] != -100).sum())
    return float(answer_only_cross_entropy(policy(batch).logits, policy.to_device(batch)["labels"])) * n, n


def swap_gap(policy, samples: list[Sample], batch_size: int, swap: str = "frames") -> dict[str, float]:
    """Answer CE with the sample's own ``swap`` (``frames`` or ``prompt``), with the next sample's (same task,
    cyclic), and their difference."""
    swapped = [replace(s, **{swap: getattr(samples[(i + 1) % len(samples)], swap)}) for i, s in enumerate(samples)]
    totals = {"own": [0.0, 0], "swapped": [0.0, 0]}
    for key, rows in (("own", samples), ("swapped", swapped)):
        for start in range(0, len(rows), batch_size):
            ce, n = answer_ce(policy, rows[start : start + batch_size])
            totals[key][0] += ce
            totals[key][1] += n
    own, other = (t[0] / max(1, t[1]) for t in totals.values())
    return {"ce_own": own, "ce_swapped": other, "swap_gap": other - own, "samples": len(samples)}


def probe(policy, samples: list[Sample], batch_size: int, max_new_tokens: int) -> dict[str, dict[str, float]]:
    """Swap gap per task (detection, grounding), the question-swap gap (grounding, spatial), and class-agnostic
    detection figures from greedy answers."""
    policy.eval()
    out: dict[str, dict[str, float]] = {}
    for task in ("detection", "grounding", "spatial"):
        rows = [s for s in samples if s.task == task]
        if len(rows) < 2:
            continue
        if task != "spatial":
            out[task] = swap_gap(policy, rows, batch_size)
        if task != "detection":  # the detection prompt is one sentence for every sample: nothing to swap
            q = swap_gap(policy, rows, batch_size, swap="prompt")
            out.setdefault(task, {"ce_own": q["ce_own"], "samples": q["samples"]})
            out[task].update({"ce_question_swapped": q["ce_swapped"], "question_swap_gap": q["swap_gap"]})
        if task == "detection":
            texts = []
            for start in range(0, len(rows), batch_size):
                texts += policy.generate(rows[start : start + batch_size], max_new_tokens=max_new_tokens)
            out[task].update(detection_probe(texts, [s.target for s in rows]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = target_parser("python -m lit3drft.probe", __doc__.splitlines()[0],
                           "output file (default <run_dir>/probe-<split>[-<stage>].json)")  # fmt: skip
    parser.add_argument("--stage", help="a stage of the run (e.g. 0-sft) instead of its last finished one")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg, weights, base = resolve_target(Path(args.target), args.config, args.overrides)
        if args.stage:
            weights = base / "stages" / args.stage / "trainable.pt"
            if not weights.is_file():
                raise ConfigError(f"--stage {args.stage}: {weights} does not exist")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.time()
    policy = build_policy(cfg.model)
    if weights is not None:
        load_trainable(policy, weights)
    dm = build_datamodule(cfg, policy, None)
    dm.prepare_data()
    dm.setup("test" if args.split == "test" else "validate")
    data = dm.datasets[args.split]
    samples = [data[i] for i in range(len(data))]
    results = probe(policy, samples, cfg.data.eval_batch_size, cfg.eval.max_new_tokens)
    payload = {"probe": results, "split": args.split, "target": str(args.target), "stage": args.stage or "last",
               "wall_time_s": round(time.time() - start, 1), "commit": git_commit(), "device": device_description()}  # fmt: skip
    suffix = f"-{args.stage}" if args.stage else ""
    out = Path(args.out) if args.out else base / f"probe-{args.split}{suffix}.json"
    write_json_atomic(out, payload)
    print(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
