"""How large the geometry prior's tokens are next to the visual tokens they are added to (issue 14).

    .venv/bin/python dev/geometry_norm_probe.py runs/pretrain_tiny/points/stages/0-pretrain/checkpoints/last.ckpt

Loads a ``pretrain_tiny`` checkpoint run with ``model.geometry=points`` onto the embedded base, encodes two held-out
clips (seed 7920) and prints the mean token norm of visual + prior, of the prior alone, and the spread over tokens
of each (a zero-started prior measured 9 next to ~98 after 300 steps: invisible).
"""

from __future__ import annotations

import sys

import torch

from lit3drft.config import load_config
from lit3drft.data.perception import PerceptionDataset
from lit3drft.models import build_policy


def main(ckpt: str) -> None:
    overrides = ["model.preset=", "model.pretrained=results/pretrain_tiny/base", "model.geometry=points"]
    cfg = load_config("experiments/pretrain_tiny.yaml", overrides)
    policy = build_policy(cfg.model)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    policy.load_state_dict({k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")},
                           strict=False)  # fmt: skip
    data = PerceptionDataset(cfg.pretrain, cfg.data.synth, seed=cfg.pretrain.seed + 1, length=4)
    batch = policy.collate([data[i][0] for i in range(2)], with_answer=True)
    with torch.no_grad():
        total = torch.cat(policy.encode_visual(batch)["image"])
        prior = policy.geometry(grid_thw=batch["image_grid_thw"], geometry_values=batch["geometry_values"])
    print(f"visual+prior norm {total.norm(dim=-1).mean():.2f}, prior norm {prior.norm(dim=-1).mean():.2f}, "
          f"prior spread {prior.std(0).norm():.2f}, visual spread {(total - prior).std(0).norm():.2f}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1])
