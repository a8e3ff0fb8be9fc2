"""Chance levels of ``val/grounding/pointer_acc`` (issue 14): ``python dev/pointer_baselines.py [N]``.

Over the first ``N`` (default 32) held-out pretraining clips (seed ``pretrain.seed + 1``, the validation's) with a
describable object that owns at least one visual token: the share of the clip's tokens that object owns (the
accuracy of a random token) and how often it is the object owning the most tokens (a pointer that ignores the
referring expression and picks the biggest object).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lit3drft.config import load_config
from lit3drft.data.perception import PerceptionDataset

RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "pretrain_tiny.yaml"


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 32
    cfg = load_config(RECIPE, ["pretrain.grounding_share=1.0"])
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed + 1, n, training=False)
    random_token, biggest = [], []
    for i in range(n):
        sample, dense = data[i]
        g = sample.meta["grounding"]
        owner = dense["owner"].numpy()
        if g is None or not (owner == g["object"]).any():
            continue
        random_token.append(float((owner == g["object"]).mean()))
        ids, counts = np.unique(owner[owner >= 0], return_counts=True)
        biggest.append(float(ids[counts.argmax()] == g["object"]))
    print(f"clips {len(random_token)} of {n}: random token {np.mean(random_token):.3f}, "
          f"biggest object {np.mean(biggest):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
