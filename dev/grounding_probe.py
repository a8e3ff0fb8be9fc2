"""Why does grounding score 0? Greedy grounding answers of a checkpoint, scored four ways (issue 14).

``python dev/grounding_probe.py TARGET [--config YAML] [key=value ...]`` (TARGET as for ``lit3drft.probe``):
for each test grounding sample, the world-frame IoU of the answered box read in the answered frame's camera (the
metric), read in the first frame's camera (the detection prompt's coordinates, which the ``points`` prior carries),
and read in the best of the clip's cameras; plus frame accuracy and the IoU of the best box any frame would give.
A model that answers in the first frame's coordinates scores well only in the second column.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from lit3drft.evaluate import resolve_target
from lit3drft.fit import build_datamodule, load_trainable
from lit3drft.models import build_policy
from lit3drft.rewards.boxes import box3d_iou
from lit3drft.rewards.grounding import _to_world
from lit3drft.rewards.parsing import extract_answer, parse_grounding


def iou_in(box, frame, target, gt):
    p = _to_world(box, frame, target)
    return 0.0 if p is None else float(box3d_iou(p[None], gt[None], paired=True)[0])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--config")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg, weights, base = resolve_target(Path(args.target), args.config, args.overrides)
    policy = build_policy(cfg.model)
    if weights is not None:
        load_trainable(policy, weights)
    policy.eval()
    dm = build_datamodule(cfg, policy, None)
    dm.prepare_data()
    dm.setup("test")
    data = dm.datasets[args.split]
    rows = [data[i] for i in range(len(data)) if data[i].task == "grounding"]
    texts = []
    with torch.no_grad():
        for s in range(0, len(rows), cfg.data.eval_batch_size):
            texts += policy.generate(rows[s : s + cfg.data.eval_batch_size], max_new_tokens=cfg.eval.max_new_tokens)
    cols = {
        k: []
        for k in (
            "answered",
            "first_frame",
            "best_frame",
            "frame_acc",
            "gt_frame0_iou",
            "size_err",
            "any_object",
            "picked_target",
        )
    }
    for text, row in zip(texts, rows):
        t = row.target
        gt = _to_world(list(t["bbox_3d"]), int(t["frame"]), t)
        ans = parse_grounding(extract_answer(text))
        cols["gt_frame0_iou"].append(iou_in(list(t["bbox_3d"]), 0, t, gt))  # the gt box misread in frame 0's camera
        if ans is None:
            for k in ("answered", "first_frame", "best_frame", "frame_acc"):
                cols[k].append(0.0)
            continue
        f, box = ans
        n = len(t["cam2global"])
        cols["answered"].append(iou_in(box, f, t, gt))
        cols["first_frame"].append(iou_in(box, 0, t, gt))
        cols["best_frame"].append(max(iou_in(box, j, t, gt) for j in range(n)))
        cols["frame_acc"].append(float(f == int(t["frame"])))
        cols["size_err"].append(float(np.abs(np.array(box[3:6]) - np.array(t["bbox_3d"][3:6])).mean()))
        scene = json.loads((Path(cfg.data.root) / "scenes" / row.meta["scene_name"] / "scene.json").read_text())
        p = _to_world(box, f, t)
        if p is not None:
            objs = torch.tensor([o["bbox_3d"] for o in scene["objects"]], dtype=torch.float64)
            ious = box3d_iou(p[None].expand(len(objs), -1), objs, paired=True)
            cols["any_object"].append(float(ious.max()))
            cols["picked_target"].append(
                float(int(ious.argmax()) == int(row.meta["object_id"])) if ious.max() > 0 else 0.0
            )
    out = {k: round(float(np.mean(v)), 4) if v else None for k, v in cols.items()}
    out["acc25_answered"] = round(float(np.mean(np.array(cols["answered"]) >= 0.25)), 4)
    out["acc25_any_object"] = (
        round(float(np.mean(np.array(cols["any_object"]) >= 0.25)), 4) if cols["any_object"] else 0.0
    )
    out["acc25_best_frame"] = round(float(np.mean(np.array(cols["best_frame"]) >= 0.25)), 4)
    out["samples"] = len(rows)
    out["parsed"] = len(cols["size_err"])
    out["examples"] = texts[:3]
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
