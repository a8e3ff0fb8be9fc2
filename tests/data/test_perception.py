"""Perception pretraining data: rooms rendered on the fly, deterministic per index, dense targets per token."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lit3drft.data.config import SynthConfig
from lit3drft.data.perception import CATEGORY_NAMES, CELL, NUM_CLASSES, PerceptionDataset, PretrainConfig, token_targets


def _brute_force(inst, depth, own, first, classes):
    """One cell at a time, in raster order: the reference for ``token_targets``."""
    rows = []
    for gy in range(inst.shape[0] // CELL):
        for gx in range(inst.shape[1] // CELL):
            cell = inst[gy * CELL : (gy + 1) * CELL, gx * CELL : (gx + 1) * CELL].ravel()
            d = depth[gy * CELL : (gy + 1) * CELL, gx * CELL : (gx + 1) * CELL]
            mix = np.zeros(NUM_CLASSES)
            for v in cell:
                mix[0 if v in (0, 255) else classes[v - 1]] += 1 / len(cell)
            per_obj = [int(np.sum(cell == i + 1)) for i in range(len(classes))]
            k = int(np.argmax(per_obj))
            rows.append((mix, np.log(np.maximum(d, 0.05)).mean(), own[k], first[k], per_obj[k] >= len(cell) // 4))
    return rows


def test_token_targets_equal_a_cell_by_cell_loop() -> None:
    rng = np.random.default_rng(0)
    inst = rng.choice([0, 1, 2, 3, 255], size=(56, 84), p=[0.4, 0.3, 0.15, 0.1, 0.05]).astype(np.uint8)
    inst[:28, :28] = 2  # one cell owned by object 2 entirely
    depth = rng.uniform(0.01, 6.0, size=inst.shape).astype(np.float32)
    own, first = rng.normal(size=(3, 6)), rng.normal(size=(3, 6))
    classes = np.array([5, 1, 16])
    got = token_targets(inst, depth, own, first, classes)
    want = _brute_force(inst, depth, own, first, classes)
    assert got["cls"].shape == (6, NUM_CLASSES)
    for t, (mix, d, o, f, has) in enumerate(want):
        np.testing.assert_allclose(got["cls"][t], mix, atol=1e-6)
        assert got["depth"][t] == pytest.approx(d, abs=1e-5)
        np.testing.assert_allclose(got["own"][t], o, atol=1e-6)
        np.testing.assert_allclose(got["first"][t], f, atol=1e-6)
        assert bool(got["has_obj"][t]) == has
    assert got["cls"][0].argmax() == 1 and got["has_obj"][0]


def test_clips_are_deterministic_per_index_and_targets_match_the_frames() -> None:
    cfg = PretrainConfig(levels=[1, 3])
    a = PerceptionDataset(cfg, SynthConfig(), seed=11, length=10)
    b = PerceptionDataset(cfg, SynthConfig(), seed=11, length=10)
    (s1, d1), (s2, d2) = a[3], b[3]
    assert s1.answer == s2.answer and [f.tobytes() for f in s1.frames] == [f.tobytes() for f in s2.frames]
    assert all(torch.equal(d1[k], d2[k]) for k in d1)
    s3, _ = PerceptionDataset(cfg, SynthConfig(), seed=12, length=10)[3]
    assert [f.tobytes() for f in s3.frames] != [f.tobytes() for f in s1.frames]
    tokens = len(s1.frames) * (112 // CELL) ** 2
    assert {k: len(v) for k, v in d1.items()} == dict.fromkeys(d1, tokens)
    assert torch.allclose(d1["cls"].sum(1), torch.ones(tokens))
    # every answered label has pixels somewhere in the clip's class maps
    present = {CATEGORY_NAMES[c - 1] for c in torch.nonzero(d1["cls"].sum(0))[:, 0].tolist() if c > 0}
    assert set(s1.target["labels"]) <= present
    assert a[0][0].meta["level"] == 1 and a[1][0].meta["level"] == 3


def test_detection_answers_list_objects_left_to_right(bench) -> None:
    """The benchmark's and the pretraining stream's answers share one order a model can read off the frames."""
    root, _ = bench
    rows = [json.loads(line) for line in (root / "tasks" / "train" / "detection_4f.jsonl").read_text().splitlines()]
    xs = [[b["bbox_3d"][0] for b in r["boxes"]] for r in rows]
    assert any(len(x) > 2 for x in xs) and all(x == sorted(x) for x in xs)
    s, _ = PerceptionDataset(PretrainConfig(), SynthConfig(), seed=5, length=3)[1]
    x = [b[0] for b in s.target["boxes"]]
    assert len(x) > 1 and x == sorted(x)


def test_box2d_questions_ask_for_the_first_frames_pixel_boxes_of_the_same_clip() -> None:
    """``pretrain.box2d_share``: a share of the stream is asked Qwen2.5-VL's 2D grounding of the first frame; the
    rest of the stream, frames and dense targets are those of the stream without it."""
    from lit3drft.data.perception import BOX2D_PROMPT

    plain = PerceptionDataset(PretrainConfig(), SynthConfig(), seed=21, length=40)
    mixed = PerceptionDataset(PretrainConfig(box2d_share=0.5), SynthConfig(), seed=21, length=40)
    asked = 0
    for i in range(40):
        (a, da), (b, db) = plain[i], mixed[i]
        assert [f.tobytes() for f in a.frames] == [f.tobytes() for f in b.frames]
        assert all(torch.equal(da[k], db[k]) for k in da)
        if b.target["task"] == "detection":
            assert b.answer == a.answer
            continue
        asked += 1
        assert BOX2D_PROMPT in b.prompt and ('"bbox_2d"' in b.answer or b.answer == "<answer>[]</answer>")
        boxes, labels = b.target["boxes2d"], b.target["labels"]
        assert json.loads(b.answer.removeprefix("<answer>").removesuffix("</answer>")) == [
            {"label": lab, "bbox_2d": box} for box, lab in zip(boxes, labels)
        ]
        assert [x[0] for x in boxes] == sorted(x[0] for x in boxes)
        assert set(labels) <= set(a.target["labels"])  # objects of the first frame are among the clip's
        # every first-frame cell that an object covers a quarter of overlaps a 2D box of its category that much
        side = 112 // CELL
        for t in torch.nonzero(da["has_obj"][: side * side])[:, 0].tolist():
            name = CATEGORY_NAMES[int(da["cls"][t, 1:].argmax())]
            cx, cy = (t % side) * CELL, (t // side) * CELL
            overlap = [max(0, min(x2, cx + CELL) - max(x1, cx)) * max(0, min(y2, cy + CELL) - max(y1, cy))
                       for (x1, y1, x2, y2), lab in zip(boxes, labels) if lab == name]  # fmt: skip
            assert max(overlap, default=0) >= CELL * CELL // 4, (i, t, name)
    assert 10 <= asked <= 30


def test_grounding_questions_are_the_benchmarks_question_on_the_same_clip() -> None:
    """``pretrain.grounding_share``: a share of the stream is asked the benchmark's grounding question; frames and
    dense targets are those of the stream without it. The answer frame is a clip frame in which the described
    object owns visual tokens whose own-camera box (the dense targets, computed per frame) is the answer's box,
    and the answer scores frame 1 and IoU 1 through the benchmark's own scorer (poses to world)."""
    from lit3drft.data import prompts as P
    from lit3drft.rewards.grounding import grounding_scores

    plain = PerceptionDataset(PretrainConfig(), SynthConfig(), seed=21, length=40)
    mixed = PerceptionDataset(PretrainConfig(grounding_share=0.5), SynthConfig(), seed=21, length=40)
    asked, matched, tokens = 0, 0, (112 // CELL) ** 2
    for i in range(40):
        (a, da), (b, db) = plain[i], mixed[i]
        assert [f.tobytes() for f in a.frames] == [f.tobytes() for f in b.frames]
        assert all(torch.equal(da[k], db[k]) for k in da)
        if b.task == "detection":
            assert b.answer == a.answer and b.target["task"] == "detection"
            continue
        asked += 1
        assert b.task == "grounding" and b.frame_labels == [P.frame_label(j) for j in range(4)]
        assert (
            b.prompt.startswith(P.GROUNDING_PROMPT.split("{")[0]) and b.meta["grounding"]["description"][1:] in b.prompt
        )
        frame, box = b.target["frame"], b.target["bbox_3d"]
        assert json.loads(b.answer.removeprefix("<answer>").removesuffix("</answer>")) == {"frame": frame,
                                                                                            "bbox_3d": box}  # fmt: skip
        own = db["own"][frame * tokens : (frame + 1) * tokens]  # the box of each token's majority object
        matched += bool(((own - torch.tensor(box[:6])).abs().max(1).values < 0.006).any())
        f, iou, parsed = grounding_scores([b.answer], [b.target])
        assert parsed.item() and f.item() == 1 and iou.item() > 0.999
    assert 10 <= asked <= 30
    assert matched >= 0.8 * asked  # the rest: objects too small to be any token's majority


def test_task_shares_that_do_not_fit_are_refused() -> None:
    from lit3drft.data.perception import PerceptionDataModule

    with pytest.raises(ValueError, match=r"inventory_share=0.6, pretrain.box2d_share=0.5"):
        PerceptionDataModule(PretrainConfig(inventory_share=0.6, box2d_share=0.5), SynthConfig(), 2, 2, list)
    with pytest.raises(ValueError, match=r"box2d_share=0.5, pretrain.grounding_share=0.6"):
        PerceptionDataModule(PretrainConfig(box2d_share=0.5, grounding_share=0.6), SynthConfig(), 2, 2, list)
