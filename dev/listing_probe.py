"""How long is the detect-then-select grounding think, and does every benchmark row get one? (issue 14)

``python dev/listing_probe.py [--n N] [--config experiments/sft_tiny.yaml] [--think listing|clip_listing]``:
- answer lengths in tokens (mean, 90th percentile, max) of ``N`` pretraining grounding clips asked with
  ``pretrain.grounding_think=listing`` (``experiments/pretrain_tiny.yaml``, level 3, the base's tokenizer);
- the benchmark's grounding rows of every split rebuilt with ``data.sources[1].think=THINK`` (``--think``,
  ``listing`` or ``clip_listing``): how many, that none fails (both check that the row's target box is the scene
  object's), and their answers' length in tokens (think included); for ``clip_listing``, how often the
  target's label (colour and category, or category alone) is unique among the listed entries.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lit3drft.config import load_config
from lit3drft.data.datamodule import LitDataModule
from lit3drft.data.perception import PerceptionDataset
from lit3drft.models import build_policy


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="pretraining clips to draw")
    ap.add_argument("--config", default="experiments/sft_tiny.yaml", help="experiment whose benchmark rows to rebuild")
    ap.add_argument("--think", default="listing", choices=["listing", "clip_listing"], help="the benchmark rows' think")
    args = ap.parse_args(argv)
    cfg = load_config("experiments/pretrain_tiny.yaml", [
        "pretrain.grounding_share=1.0", "pretrain.grounding_mode=ta", "pretrain.grounding_think=listing",
        "model.preset=", "model.pretrained=results/pretrain_tiny/base"])  # fmt: skip
    tok = build_policy(cfg.model).tokenizer
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, args.n)
    lengths = [len(tok(s.answer)["input_ids"]) for s, _ in (data[i] for i in range(args.n)) if s.task == "grounding"]
    print(f"pretraining listing answers: {len(lengths)} clips, tokens mean {np.mean(lengths):.0f}, "
          f"p90 {np.percentile(lengths, 90):.0f}, max {max(lengths)}")  # fmt: skip
    bench = load_config(args.config, ["data.sources.1.mode=ta", f"data.sources.1.think={args.think}"])
    dm = LitDataModule(bench.data)
    for split in ("train", "val", "test"):
        rows = [r for r, _, _ in dm.split_entries(split) if r.task == "grounding"]
        n = [len(tok(f"<think>{r.think}</think><answer>{r.answer}</answer>")["input_ids"]) for r in rows]
        print(f"benchmark {split}: {len(rows)} grounding rows with a {args.think} think; answer tokens mean "
              f"{np.mean(n):.0f}, p90 {np.percentile(n, 90):.0f}, max {max(n)}")  # fmt: skip
        if args.think == "clip_listing":  # how often does the label alone pick the target out of the listing?
            lists = [(json.loads(r.think.split("camera, ")[1].split(". So: ")[0]), json.loads(r.think.split(". So: ")[1]))
                     for r in rows]  # fmt: skip
            both = np.mean([[e["label"] for e in li].count(t["label"]) == 1 for li, t in lists])
            cat = np.mean([[e["label"].split(" ", 1)[1] for e in li].count(t["label"].split(" ", 1)[1]) == 1
                           for li, t in lists])  # fmt: skip
            print(f"  target unique among the listed by colour and category {both:.3f}, by category alone {cat:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
