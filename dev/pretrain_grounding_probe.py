"""What does a pretraining checkpoint write for the held-out grounding clips? (issue 14)

``python dev/pretrain_grounding_probe.py RUN_DIR_OR_CKPT [--level L] [--n N] [key=value ...]``: the held-out
pretraining clips (seed + 1) at ``level`` asked the grounding question, answered greedily; per clip the target's
frame and box (answered frame's camera), the answer, its world IoU (the metric), and the IoU of the answered box
with every object of the room when read in the answered frame's camera and in the target frame's camera (is it
another object's box? the right object's box in the wrong camera?). Then the same means over the clips.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from lit3drft.data.perception import PerceptionDataset, clip_cfg, grounding_sample
from lit3drft.data.scene import make_scene
from lit3drft.data.synth import knobs_of, scene_rng
from lit3drft.evaluate import resolve_target
from lit3drft.fit import load_trainable
from lit3drft.models import build_policy
from lit3drft.probe import swap_gap
from lit3drft.rewards.boxes import box3d_iou
from lit3drft.rewards.grounding import _to_world
from lit3drft.rewards.parsing import extract_answer, parse_grounding


def _ious(box: list[float], frame: int, target: dict, objs: torch.Tensor) -> torch.Tensor:
    """IoU of ``box`` read in clip frame ``frame``'s camera with every object of the room (world boxes)."""
    p = _to_world(box, frame, target)
    if p is None:
        return torch.zeros(len(objs))
    return box3d_iou(p[None].expand(len(objs), -1), objs, paired=True)


def _listing(text: str) -> tuple[int, list[tuple[str, list[float]]]] | None:
    """The frame and entries of a listing think's detection list (``listing``: ``Frame-k, which shows [...]. So:``;
    ``clip_listing`` / ``clip_detection``: ``in Frame-0's camera, [...]. So:``), or None. Lenient: every ``{"label": "..", "bbox_3d":
    [9 numbers]`` between the list's start and ``So:`` (or the think's end) is an entry, whatever JSON around it
    is broken."""
    lo = max(text.find("which shows ["), text.find("camera, ["))
    if lo < 0:
        return None
    hi = text.find("So:", lo)
    hi = hi if hi >= 0 else len(text)
    frame = re.findall(r"Frame-(\d+)", text[:lo])
    out = []
    entry = r'(?:"color": "([^"]*)", )?"label": "([^"]*)", "bbox_3d": \[([^\]]*)\]'  # clip_detection: a colour key
    for colour, label, nums in re.findall(entry, text[lo:hi]):
        label = f"{colour} {label}" if colour else label
        try:
            box = [float(v) for v in nums.split(",")]
        except ValueError:
            continue
        if len(box) == 9:
            out.append((label, box))
    return (int(frame[-1]) if frame else 0), out


def attention_split(policy, samples: list) -> list[dict[str, float]]:
    """Per layer, the mean attention mass (over heads and answer positions) that the answer's tokens put on the
    visual tokens, on the referring expression's tokens (the prompt's ``Text: ...`` line) and on everything else."""
    tok = policy.tokenizer
    b = policy.collate(samples, with_answer=True)
    with torch.no_grad():
        pos, _ = policy.positions(b["input_ids"], b["mm_token_type_ids"], b["attention_mask"], b)
        att = policy.hf_model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            position_ids=pos,
            use_cache=False,
            output_attentions=True,
            **policy.visual_kwargs(b),
        ).attentions
    image_id = policy.hf_model.config.image_token_id
    rows = []
    for layer in att:  # (B, H, L, L)
        parts = {"visual": [], "expression": [], "rest": []}
        for i in range(len(samples)):
            ids = b["input_ids"][i].tolist()
            pieces = [tok.decode([t]) for t in ids]
            ends = np.cumsum([len(x) for x in pieces])
            text = "".join(pieces)
            lo = text.rfind("Text: ") + len("Text: ")
            hi = text.find("\n", lo)
            expr = torch.tensor([lo <= e - 1 < hi for e in ends])
            visual = b["input_ids"][i] == image_id
            answer = b["labels"][i] != -100
            a = layer[i].mean(0)[answer]  # (answer positions, L)
            parts["visual"].append(a[:, visual].sum(-1).mean().item())
            parts["expression"].append(a[:, expr].sum(-1).mean().item())
            parts["rest"].append(a[:, ~(visual | expr)].sum(-1).mean().item())
        rows.append({k: round(float(np.mean(v)), 4) for k, v in parts.items()})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--level", type=int, default=0, help="held-out level (0: the run's pretrain.val_level)")
    ap.add_argument("--n", type=int, default=64, help="held-out clips to draw (those with a describable object ask)")
    ap.add_argument(
        "--attention",
        action="store_true",
        help="also: where the answer's attention goes (visual tokens, the referring expression, the rest)",
    )
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    extra = ["model.attn_implementation=eager"] if args.attention else []  # attention weights need eager
    cfg, weights, _ = resolve_target(Path(args.target), None, [*args.overrides, *extra])
    policy = build_policy(cfg.model)
    if weights is not None:
        load_trainable(policy, weights)
    policy.eval()
    pc = cfg.pretrain
    if args.level:
        pc.val_level = args.level
    level = pc.val_level or cfg.data.synth.level
    data = PerceptionDataset(pc, cfg.data.synth, pc.seed + 1, args.n, training=False)
    items = [(i, data[i][0]) for i in range(args.n)]
    flat = [(i, grounding_sample(s, pc.grounding_mode)) for i, s in items if s.meta.get("grounding")]
    texts = []
    with torch.no_grad():
        for b in range(0, len(flat), 16):
            texts += policy.generate([s for _, s in flat[b : b + 16]], max_new_tokens=cfg.eval.max_new_tokens)
    cols: dict[str, list[float]] = {"metric": [], "frame_acc": [], "best_obj_answered_cam": [],
                                    "target_in_target_cam": [], "best_obj_target_cam": [], "n_objects": [],
                                    "listed": [], "listing_oracle": [], "listing_precision": [],
                                    "listing_recall": [], "listing_label_acc": [],
                                    "listing_colour_acc": []}  # fmt: skip
    for j, ((i, s), text) in enumerate(zip(flat, texts)):
        if j < 3:
            print(f"clip {i} completion: {text!r}\n  target: {s.answer!r}")
        t = s.target
        gen = clip_cfg(cfg.data.synth, pc.seed + 1, level)
        scene = make_scene(f"pre{pc.seed + 1}_{i:07d}", scene_rng(gen.seed, i), knobs_of(gen))
        objs = torch.tensor(np.array([o.box for o in scene.objects]), dtype=torch.float64)
        gt = _to_world(list(t["bbox_3d"]), int(t["frame"]), t)
        ans = parse_grounding(extract_answer(text))
        cols["n_objects"].append(len(objs))
        if ans is None:
            print(f"clip {i}: unparsed {text[:300]!r}")
            continue
        f, box = ans

        a, tt = _ious(box, f, t, objs), _ious(box, int(t["frame"]), t, objs)
        tgt = int(s.meta["grounding"]["object"])
        m = (
            float(box3d_iou(_to_world(box, f, t)[None], gt[None], paired=True)[0])
            if _to_world(box, f, t) is not None
            else 0.0
        )
        cols["metric"].append(m)
        listing = _listing(text)
        if listing is not None:  # detect, then select: how good is the detection, and would a perfect pick score?
            lf, listing = listing
            tf, truth = _listing(s.meta["grounding"]["think"]) or (0, [])  # the listing it was taught
            vis = {int(_ious(b, tf, t, objs).argmax()) for _, b in truth}
            li = [(lab, _ious(b, lf, t, objs)) for lab, b in listing]
            cols["listed"].append(len(li))
            cols["listing_oracle"].append(max((float(x[tgt]) for _, x in li), default=0.0))
            hits = [int(x.argmax()) for _, x in li if float(x.max()) >= 0.25]
            cols["listing_precision"].append(len(hits) / len(li) if li else 0.0)
            cols["listing_recall"].append(len(set(hits) & set(vis)) / len(vis) if vis else 0.0)
            cats = [scene.objects[int(x.argmax())].category for _, x in li if float(x.max()) >= 0.25]
            labs = [lab for lab, x in li if float(x.max()) >= 0.25]
            if cats:
                cols["listing_label_acc"].append(float(np.mean([c in lab for c, lab in zip(cats, labs)])))
                colours = [scene.objects[int(x.argmax())].color for _, x in li if float(x.max()) >= 0.25]
                cols["listing_colour_acc"].append(float(np.mean([lab.startswith(c) for c, lab in zip(colours, labs)])))
        cols["frame_acc"].append(float(f == int(t["frame"])))
        cols["best_obj_answered_cam"].append(float(a.max()))
        cols["target_in_target_cam"].append(float(tt[tgt]))
        cols["best_obj_target_cam"].append(float(tt.max()))
        print(f"clip {i}: {s.meta['grounding']['description']!r} n={len(objs)} target f={t['frame']} "
              f"{[round(v, 2) for v in t['bbox_3d'][:6]]} | answer f={f} {[round(v, 2) for v in box[:6]]} | "
              f"IoU {m:.2f}, best obj (answered cam) {float(a.max()):.2f} #{int(a.argmax())}, "
              f"target in target cam {float(tt[tgt]):.2f}")  # fmt: skip
    out = {k: round(float(np.mean(v)), 4) if v else None for k, v in cols.items()}
    # does the answer read the question? its cross-entropy under another clip's referring expression (same frames)
    # minus under its own: ~0 when the answer (think included) ignores the question
    samples = [s for _, s in flat]
    if len(samples) > 1:
        out["question_swap_gap"] = round(swap_gap(policy, samples, 16, swap="prompt")["swap_gap"], 4)
    if args.attention and samples:
        out["attention"] = attention_split(policy, samples)
    out["acc25"] = round(float(np.mean(np.array(cols["metric"]) >= 0.25)), 4) if cols["metric"] else 0.0
    out["clips"], out["parsed"], out["level"] = len(flat), len(cols["metric"]), level
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
