"""The detection probe of a blind answer on the pretraining stage's held-out clips (issue 14).

Each of a clip's objects (its true count) is put, in left-to-right order, at the training stream's mean centre of
objects at that place in the list, with the mean size, labelled ``table``: a prediction that reads nothing off the
pixels. Scored with ``lit3drft.algorithms.dense.detection_probe``, the figures the pretraining stage logs
(``val/miou``, ``val/label_acc``, ``val/centre_err``). The same for the first frame's 2D boxes
(``pretrain.box2d_share``; ``box2d_probe``, ``val/box2d/*``): the k-th box left to right at the mean k-th 2D box.

    .venv/bin/python dev/blind_baseline.py [--train 300]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from lit3drft.algorithms.dense import box2d_probe, detection_probe
from lit3drft.config import load_config
from lit3drft.data.perception import PerceptionDataset, box2d_sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/pretrain_tiny.yaml")
    ap.add_argument("--train", type=int, default=300, help="training-stream clips the means are taken over")
    args = ap.parse_args()
    cfg = load_config(args.config)
    train = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed, args.train)
    held = PerceptionDataset(cfg.pretrain, cfg.data.synth, cfg.pretrain.seed + 1, cfg.pretrain.val_samples,
                             training=False)  # fmt: skip
    by_place: dict[int, list[np.ndarray]] = {}
    by_place_2d: dict[int, list[np.ndarray]] = {}
    sizes = []
    for i in range(len(train)):
        sample = train[i][0]
        for k, box in enumerate(sample.target["boxes"]):
            by_place.setdefault(k, []).append(np.asarray(box[:3]))
            sizes.append(box[3:6])
        for k, box in enumerate(sample.meta["box2d"]["boxes"]):
            by_place_2d.setdefault(k, []).append(np.asarray(box, float))
    mean_2d = {k: np.mean(v, 0).round().astype(int).tolist() for k, v in by_place_2d.items()}
    centre = {k: np.mean(v, 0) for k, v in by_place.items()}
    overall, size = np.concatenate([np.stack(v) for v in by_place.values()]).mean(0), np.mean(sizes, 0)
    targets, completions, targets_2d, completions_2d = [], [], [], []
    for i in range(len(held)):
        flat = box2d_sample(held[i][0])
        boxes_2d = [mean_2d.get(k, [0, 0, 1, 1]) for k in range(len(flat.target["boxes2d"]))]
        targets_2d.append(flat.target)
        completions_2d.append(
            "<answer>" + json.dumps([{"label": "table", "bbox_2d": b} for b in boxes_2d]) + "</answer>"
        )
        target = held[i][0].target
        boxes = [[*map(float, centre.get(k, overall)), *map(float, size), 0.0, 0.0, 0.0]
                 for k in range(len(target["boxes"]))]  # fmt: skip
        targets.append(target)
        completions.append("<answer>" + json.dumps([{"label": "table", "bbox_3d": b} for b in boxes]) + "</answer>")
    print(json.dumps({k: round(v, 3) for k, v in detection_probe(completions, targets).items()}))
    print(json.dumps({f"box2d/{k}": round(v, 3) for k, v in box2d_probe(completions_2d, targets_2d).items()}))


if __name__ == "__main__":
    main()
