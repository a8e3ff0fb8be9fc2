"""Perception pretraining data: detection clips of rooms rendered on the fly, with dense per-token targets.

What Qwen2.5-VL's pretraining (and VG-LLM's 3D SFT) is to the paper, this is to the embedded default: a
stream of rooms drawn by the embedded benchmark's own generator under a seed of their own (never the
benchmark's scenes), rendered at training time (clip ``i`` depends only on ``(seed, i)``), each a
VG-LLM-style detection sample plus, for every visual token (one 28x28-pixel cell of a frame: a 14-pixel
patch merged 2x2), targets read off the renderer's instance and depth maps:

- ``cls``  ``(17,)`` the share of the cell's pixels per class (0 = room or occluder, ``1 + k`` category k);
- ``depth`` mean log-depth of the cell (metres);
- ``own``  ``(6,)`` centre and size of the object covering most of the cell, in this frame's camera;
- ``first`` ``(6,)`` the same box in the first frame's camera (the detection answer's frame);
- ``has_obj`` whether an object covers at least a quarter of the cell.

They give the randomly initialised vision tower a direct gradient (``lit3drft.algorithms.dense``) instead of
one that has to pass through the digits of a JSON answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from lit3drft.data import prompts as P
from lit3drft.data.config import LEVELS, SynthConfig
from lit3drft.data.geometry import world_box_to_camera
from lit3drft.data.prompts import CATEGORY_NAMES  # class 1 + k of the dense targets; 0 is the room and occluders
from lit3drft.data.render import render_frame, scene_parts
from lit3drft.data.sample import Sample
from lit3drft.data.scene import make_scene
from lit3drft.data.synth import knobs_of, scene_rng
from lit3drft.data.tasks import (
    CLIP_THINKS,
    clip_think,
    describe,
    frame_listing_think,
    grounding_think,
    left_to_right,
    walk_frames,
)

NUM_CLASSES = 1 + len(CATEGORY_NAMES)
CELL = 28
"""Pixels per visual token side: Qwen2.5-VL's 14-pixel patches merged 2x2."""


@dataclass
class PretrainConfig:
    """The perception pretraining stage (``kind: pretrain``): its on-the-fly data and its dense losses."""

    seed: int = 7919
    """Seed of the pretraining rooms; any seed but the benchmark's (``data.synth.seed``) keeps its val/test scenes
    unseen. Held-out pretraining curves use ``seed + 1``."""
    levels: list[int] = field(default_factory=lambda: [3])
    """Benchmark difficulty levels to draw training rooms from (clip ``i`` uses ``levels[i % len(levels)]``): a
    curriculum mix such as ``[1, 2, 3]``. Held-out clips use ``val_level``."""
    val_level: int = 0
    """Level of the held-out clips; 0: the benchmark's own (``data.synth.level``), where the figures are reported."""
    clip_len: int = 4
    """Frames per detection clip."""
    stride: int = 3
    """Frames between clip frames, on the benchmark's 32-frame walk (as its detection clips)."""
    scenes: int = 1_000_000
    """Length of the (virtual) training stream; rooms are never repeated within it."""
    val_samples: int = 32
    """Held-out clips (seed + 1) scored at each validation: greedy detection metrics and the image-swap gap."""
    dense_weight: float = 1.0
    """Weight of the dense per-token losses. 0: answer cross-entropy only, the heads then train on detached tokens
    as linear probes of what the tokens encode (their losses are logged, no gradient reaches the policy)."""
    dense_on_llm: bool = True
    """Also predict the dense targets from the language model's last hidden state at the visual tokens (boxes in
    the first frame's camera), not only from the visual embeddings."""
    answer_weight: float = 1.0
    """Weight of the detection answer's cross-entropy."""
    center_weight: float = 1.0
    """Weight of ``token_mean_ratio`` on the visual tokens: the part every token shares must stay small next to the
    content (0 turns it off). A stage also starts by folding the merger's output mean and scale into its last
    layer (``standardise_merger``) when the ratio is above 1."""
    answer_box_weight: float = 0.0
    """Weight of an L1 loss (``BOX_SCALE`` units) on the box (centre + size, first camera) of the object whose numbers
    the answer is writing, read by a linear head off the language model's last hidden state at each of those
    positions (the state that emits the next digit): a gradient from the answer straight to where the object is.
    0: off (no head)."""
    answer_box_at: Literal["all", "first"] = "all"
    """Where ``answer_box_weight``'s loss reads the box: ``all`` the positions that write its numbers, or ``first``
    only the state that writes each box's first number, before any of them is in the text (later positions can
    copy what is already written, which carries the box without looking at the frames)."""
    inventory_share: float = 0.0
    """Share of training clips asked for an inventory (categories and counts, a short answer) instead of boxes."""
    box2d_share: float = 0.0
    """Share of training clips asked for Qwen2.5-VL's 2D grounding of the first frame instead (``"bbox_2d"``, pixel
    corners, ``BOX2D_PROMPT``): where each object is on the image, which the visual tokens' grid tells directly.
    Above 0, validation also scores the held-out clips' 2D answers (``val/box2d/*``). With ``inventory_share``
    it must sum to at most 1."""
    grounding_share: float = 0.0
    """Share of training clips asked the benchmark's grounding question instead (``P.GROUNDING_PROMPT``, frames
    prefixed "Frame-i: "): a referring expression that singles out one visible object (the benchmark's own
    generator of them), answered with the clip frame where the object is drawn largest and its box in that frame's
    camera. A clip without such an object stays a detection clip. Above 0, validation also asks the held-out
    clips (those with a describable object) and scores them (``val/grounding/*``: Acc@0.25, mIoU, frame accuracy,
    swap gap). With the other shares it must sum to at most 1."""
    grounding_mode: Literal["da", "ta"] = "da"
    """Answer mode of the grounding clips, training and held-out: ``da`` (direct answer) or ``ta``: think, then answer,
    the think the benchmark's own grounding trace (``tasks.grounding_think``: which object is meant, by category,
    colour and anchor, then the frame it looks largest in and its depth), which names the target right before the
    box is written, as a detection answer's label precedes its box. Detection clips stay direct answers."""
    grounding_think: Literal[
        "benchmark",
        "description",
        "listing",
        "clip_listing",
        "clip_detection",
        "clip_select",
        "clip_entry",
        "clip_name",
    ] = "benchmark"
    """The think of ``ta`` grounding clips: ``benchmark`` (``tasks.grounding_think``: a count of the target's kind and
    its distance to the anchor, in room coordinates the frames do not show) or ``description``: the referring
    expression copied, then the frame and depth ("The grey bed closest to the grey cabinet looks largest in Frame-3,
    1.67 m in front of the camera."), every token of which but the last numbers is a copy of the question, or
    ``listing`` (``tasks.listing_think``): detect, then select: the copied expression and frame, every object that
    frame shows as a detection answer in its camera (labels with colour), then the referred entry restated, whose
    box the answer copies; ``clip_listing``, ``clip_detection`` and ``clip_select``: the clip's objects as its
    detection answer in the first frame's camera, answered with ``"frame": 0`` (``data.sources[i].think``'s rows
    of the same names; ``tasks.clip_listing_think``, ``tasks.clip_select_think``); ``clip_entry``: no listing, the
    answer the referred object's own entry in that camera (``tasks.clip_entry_think``); ``clip_name``: its think and
    box, the answer ``{"object": "<colour> <category>", "bbox_3d": .., "frame": 0}`` (``tasks.clip_name_think``)."""
    grounding_clip: Literal["clip", "benchmark"] = "clip"
    """The frames a grounding question is asked on: ``clip`` the clip's own (``clip_len`` frames ``stride`` apart, as
    the detection clips), ``benchmark`` ``grounding_frames`` frames spread over the whole walk by the benchmark's
    grounding rows' rule (``tasks.walk_frames``), rendered for it, so that training and held-out grounding clips
    are drawn as the rows the policy is scored on (on the clip's own frames the target is visible in Frame-0 about
    two thirds of the time, on the benchmark's rows about half; a ``clip_*`` think answers in Frame-0's camera).
    Training and held-out detection clips are unchanged. Not with ``pointer_weight`` or ``attend_weight``."""
    grounding_frames: int = 8
    """Frames of a ``grounding_clip=benchmark`` question (the benchmark's ``grounding_8f`` rows: 8)."""
    pointer_weight: float = 0.0
    """Weight of a pointer loss on grounding clips: a query read off the language model's last hidden state where
    the answer starts is scored (scaled dot product, softmax over the clip's visual tokens) against keys read off
    its last hidden states at those tokens; cross-entropy onto the tokens the referred object owns (``owner`` of
    the dense targets). A direct gradient for binding the referring expression to the pixels, which the answer's
    digits give only through the box. Logged as ``dense/pointer`` and ``dense/pointer_acc`` (the argmax token is
    the object's). 0: off (no head)."""
    attend_weight: float = 0.0
    """Weight of an attention-supervision loss on grounding clips: one head of the language model itself
    (``attend_layer``, ``attend_head``) is asked, at every answer position that writes a digit (the think's frame
    and depth, the answer's frame and box), to put its softmax mass on the visual tokens the referred object owns in
    the answered frame (``-log`` of that mass, averaged). Unlike ``pointer_weight``'s separate head, this trains the
    head the answer is written through: the box's digits read the object's own tokens (which the dense losses fill
    with its depth and box) instead of a template. Logged as ``dense/attend`` and ``dense/attend_mass``. 0: off."""
    attend_layer: int = -2
    """The language-model layer of ``attend_weight``'s head (Python index: -2 is the last but one)."""
    attend_head: int = 0
    """The query head of ``attend_layer`` that ``attend_weight`` supervises."""
    attend_at: Literal["digits", "box", "first"] = "digits"
    """Where ``attend_weight``'s loss asks for the mass: ``digits`` every answer position that writes a digit (the
    think's too), ``box`` the states that write the answer box's numbers, ``first`` only the state that writes the
    box's first number (where nothing of the box is in the text yet, so the head alone can bring it)."""
    vision_warmup_steps: int = 0
    """First optimiser steps that train the vision tower, its merger and the vision head on the dense losses only
    (no language-model forward: a step costs a fraction of a full one)."""
    vision_lr_scale: float = 1.0
    """Learning-rate multiplier of the vision tower, its merger, the geometry prior and the dense heads."""
    geometry_init_ratio: float = 0.0
    """Above 0, a fresh geometry prior (output layer all zero) starts instead with a random output layer scaled so
    that its tokens' mean norm is this fraction of the visual tokens' (measured on one batch before the first step):
    added at zero, the prior is invisible next to visual tokens of norm ~100 and its gradient is noise (measured:
    output norm 2.6 after 300 steps at 10x lr). 0 keeps the zero start (the model unchanged at step 0)."""
    text_weight: float = 0.0
    """Weight of a text-only copy loss added to every full step: ``text_batch`` sequences of ``copy_text_sample``
    (no frames), each "Repeat the text." with a ``Text:`` line of the benchmark's words or a referring expression,
    answered with that text. The tiny base's language model never had to read its prompt (a fixed detection
    question for ~10k steps) and cannot copy from it (``dev/copy_probe.py``): a grounding answer needs exactly that
    skill. 0: off."""
    text_batch: int = 16
    """Text-only copy sequences per step when ``text_weight`` is above 0."""
    copy_share: float = 0.0
    """Share of training clips asked a copy question instead: a ``copy_text_sample`` (its own stream, ``text_gap``
    applies) after the clip's frames, labelled "Frame-i: " as grounding clips are, so that reading the prompt back
    is learnt with visual tokens in the context (text-only copying does not survive them: ``ground_l1_gap``).
    Above 0, validation also logs the held-out clips' copy question-swap gap (``val/copy_frames/*``). With the
    other shares it must sum to at most 1."""
    category_share: float = 0.0
    """Share of training clips asked for the boxes of one category only (``CATEGORY_PROMPT``: the benchmark's
    detection question naming a category that is in the clip; the answer lists that category's objects): the answer
    then depends on a word of the question, which no other pretraining question asks (grounding needs exactly
    that: the question picks the object, the pixels give its box). With the other shares at most 1."""
    text_gap: int = 0
    """Up to this many sentences of the benchmark's own instructions (``FILLER``; uniform in 0..``text_gap`` per
    sample) between a copy sample's ``Text:`` line and its answer: the grounding question puts ~70 tokens of them
    there, and a copy learned right after the text does not reach across them (``ground_l1_text``). 0: none."""
    geometry_lr_scale: float = 1.0
    """A further multiplier for the geometry prior (``model.geometry``): its output layer starts at zero and must
    grow to the scale of the visual tokens it is added to (norm ~100 in the embedded base) to be seen at all."""


COPY_PROMPT = "Repeat the text.\nText: {text}"
"""The text-only copy question of ``pretrain.text_weight`` (the ``Text:`` line as in ``P.GROUNDING_PROMPT``)."""
RELATIONS = ("closest to", "farthest from")
FILLER = tuple(
    dict.fromkeys(
        sentence.strip().rstrip(".") + "."
        for text in (
            P.DETECTION_PROMPT,
            P.GROUNDING_PROMPT.split("{description}")[-1],
            P.VSI_NA_POST_PROMPT,
            P.VSI_MCA_POST_PROMPT,
        )  # fmt: skip
        for sentence in text.replace("\n", " ").split(". ")
        if len(sentence.strip()) > 1
    )
)
"""Sentences of the benchmark's prompts that ``pretrain.text_gap`` puts between a copy sample's text and its answer."""


def copy_text_sample(seed: int, i: int, gap: int = 0) -> Sample:
    """Text-only sample ``i`` of the copy stream ``seed`` (no frames): half a list of 3-12 of the benchmark's words
    (categories, colours, relations), half a referring expression shaped as the benchmark's ("the red chair closest
    to the white bed"), asked back and answered verbatim (direct answer); ``gap``: up to that many ``FILLER``
    sentences after the text. Deterministic per ``(seed, i, gap)``."""
    rng = scene_rng(seed, i)
    cats = list(P.CATEGORIES)
    if rng.random() < 0.5:
        lexicon = sorted({w for c in cats for w in (*c.split(), *P.CATEGORIES[c].colors)} | {"the", "to", "from"}
                         | {w for r in RELATIONS for w in r.split()})  # fmt: skip
        text = " ".join(rng.choice(lexicon, size=int(rng.integers(3, 13))).tolist())
    else:
        t, a = rng.choice(len(cats), size=2, replace=False).tolist()
        colour = [str(rng.choice(P.CATEGORIES[cats[k]].colors)) for k in (t, a)]
        text = f"the {colour[0]} {cats[t]} {RELATIONS[int(rng.integers(2))]} the {colour[1]} {cats[a]}"
    text = text[0].upper() + text[1:]
    prompt = COPY_PROMPT.format(text=text)
    if gap > 0:
        filler = rng.choice(len(FILLER), size=int(rng.integers(0, gap + 1)), replace=False)
        prompt = "\n".join([prompt, *(FILLER[k] for k in sorted(filler.tolist()))])
    return Sample(id=f"copy{seed}/{i:07d}", task="copy", frames=[], prompt=P.full_prompt(prompt, "da"),
                  answer=P.format_answer(text, "da"), target={"task": "copy", "mode": "da", "text": text})  # fmt: skip


FRAMED_COPY_OFFSET = 10**9
"""Index offset of the copy texts asked of clips (``copy_share``): disjoint from the per-step text-only stream."""


def framed_copy_sample(sample: Sample, seed: int, i: int, gap: int = 0) -> Sample:
    """Clip ``i``'s copy question: ``copy_text_sample(seed, FRAMED_COPY_OFFSET + i, gap)`` asked after the clip's
    frames (labelled "Frame-i: ")."""
    copy = copy_text_sample(seed, FRAMED_COPY_OFFSET + i, gap)
    return replace(sample, task="copy", prompt=copy.prompt, answer=copy.answer, target=copy.target, mode="da",
                   frame_labels=[P.frame_label(k) for k in range(len(sample.frames))])  # fmt: skip


def clip_cfg(synth: SynthConfig, seed: int, level: int) -> SynthConfig:
    """The generator config of a pretraining room: the benchmark's other knobs (frame size, categories, field of
    view) at ``level`` (which sets object counts, camera motion and occluders) under ``seed``."""
    return replace(synth, seed=seed, level=level, min_objects=None, max_objects=None, camera_motion=None,
                   occluders=None)  # fmt: skip


def clip_views(scene, frames: list[int], min_px: int) -> tuple[list, np.ndarray, np.ndarray, dict[str, Tensor]]:
    """``frames`` of ``scene`` rendered: ``(renders, instance maps, the objects of at least min_px pixels in some
    frame, dense targets over every frame's cells with boxes in the first frame's camera)``."""
    parts = scene_parts(scene)
    rendered = [render_frame(scene, scene.cam2world[f], parts=parts) for f in frames]
    insts = np.stack([r[2] for r in rendered])
    n = len(scene.objects)
    visible = np.stack([np.bincount(x.ravel(), minlength=256)[1 : n + 1] for x in insts]).max(0)
    keep = np.flatnonzero(visible >= min_px)
    classes = np.array([1 + o.category_id for o in scene.objects], np.int64)
    first6 = np.array([world_box_to_camera(o.box, scene.cam2world[frames[0]])[:6] for o in scene.objects]).reshape(n, 6)
    per_frame = []
    for f, (_, depth, inst) in zip(frames, rendered):
        own6 = np.array([world_box_to_camera(o.box, scene.cam2world[f])[:6] for o in scene.objects]).reshape(n, 6)
        per_frame.append(token_targets(inst, depth, own6, first6, classes))
    dense = {k: torch.from_numpy(np.concatenate([t[k] for t in per_frame])) for k in per_frame[0]}
    return rendered, insts, keep, dense


def token_targets(inst: np.ndarray, depth: np.ndarray, boxes_own: np.ndarray, boxes_first: np.ndarray,
                  classes: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """Dense targets of one frame, one row per 28x28 cell in raster order (the merger's token order).

    Args:
        inst: ``(H, W)`` instance ids (0 room, ``i + 1`` object i, 255 occluder); ``owner`` is the index ``i`` of the
            object covering most of a cell (-1 where none covers a quarter of it, as ``has_obj``).
        depth: ``(H, W)`` metres.
        boxes_own: ``(N, 6)`` centre + size of each object in this frame's camera.
        boxes_first: ``(N, 6)`` the same in the first frame's camera.
        classes: ``(N,)`` class of each object (``1 + category index``).

    Example:
        >>> inst = np.zeros((28, 56), np.uint8); inst[:, 28:] = 1
        >>> t = token_targets(inst, np.ones((28, 56), np.float32), np.ones((1, 6)), np.ones((1, 6)), np.array([3]))
        >>> t["cls"].argmax(1).tolist(), t["has_obj"].tolist(), t["owner"].tolist()
        ([0, 3], [False, True], [-1, 0])
    """
    h, w = inst.shape
    gh, gw = h // CELL, w // CELL
    cells = inst[: gh * CELL, : gw * CELL].reshape(gh, CELL, gw, CELL).transpose(0, 2, 1, 3).reshape(gh * gw, -1)
    d = np.log(np.maximum(depth[: gh * CELL, : gw * CELL], 0.05))
    d = d.reshape(gh, CELL, gw, CELL).transpose(0, 2, 1, 3).reshape(gh * gw, -1).mean(1)
    n = len(classes)
    ids = np.where(cells == 255, 0, cells).astype(np.int64)  # occluders count as room
    counts = np.stack([np.bincount(c, minlength=n + 1) for c in ids])  # (T, N + 1)
    lut = np.concatenate([[0], classes]).astype(np.int64)
    cls = np.zeros((len(ids), NUM_CLASSES), np.float32)
    np.add.at(cls, (np.repeat(np.arange(len(ids)), n + 1), np.tile(lut, len(ids))), counts.ravel())
    cls /= cells.shape[1]
    owner = counts[:, 1:].argmax(1) if n else np.zeros(len(ids), np.int64)
    has = counts[:, 1:].max(1) >= cells.shape[1] // 4 if n else np.zeros(len(ids), bool)
    pad = np.zeros((1, 6))
    own = (boxes_own if n else pad)[owner]
    first = (boxes_first if n else pad)[owner]
    return {"cls": cls, "depth": d.astype(np.float32), "own": own.astype(np.float32),
            "first": first.astype(np.float32), "has_obj": has,
            "owner": np.where(has, owner, -1).astype(np.int64)}  # fmt: skip


INVENTORY_PROMPT = "Which objects are in these frames? List each category with its count, in alphabetical order."
"""A short perception question on a detection clip (``pretrain.inventory_share``): its answer depends on the pixels
only, so it rewards attending to the visual tokens from the first steps."""


CATEGORY_PROMPT = P.DETECTION_PROMPT.replace("Detect the 3D bounding boxes in", "Detect the 3D bounding boxes of every "
                                             "{category} in")  # fmt: skip
"""The detection question for one category (``pretrain.category_share``)."""


def category_sample(sample: Sample, category: str) -> Sample:
    """``sample`` (a detection clip) asked for the boxes of ``category`` only, in the answer's usual order."""
    t = sample.target
    keep = [k for k, lab in enumerate(t["labels"]) if lab == category]
    boxes, labels = [t["boxes"][k] for k in keep], [t["labels"][k] for k in keep]
    return replace(sample, prompt=P.full_prompt(CATEGORY_PROMPT.format(category=category), sample.mode),
                   answer=P.format_answer(P.detection_answer(boxes, labels), sample.mode),
                   target={**t, "boxes": boxes, "labels": labels})  # fmt: skip


def inventory_answer(labels: list[str]) -> str:
    """``"armchair x2, sofa x1"`` (categories in alphabetical order), or ``"none"``.

    Example:
        >>> inventory_answer(["sofa", "armchair", "armchair"])
        'armchair x2, sofa x1'
    """
    counts = {lab: labels.count(lab) for lab in sorted(set(labels))}
    return ", ".join(f"{lab} x{n}" for lab, n in counts.items()) or "none"


BOX2D_PROMPT = (
    "Locate every object in the first frame. Output a json list where each entry contains the object name in "
    '"label" and its 2D bounding box in "bbox_2d" as [x1, y1, x2, y2] in pixels.'
)
"""Qwen2.5-VL's own 2D grounding format (absolute pixel corners), on the first frame of a detection clip."""


def frame_boxes_2d(inst: np.ndarray, n: int, min_pixels: int) -> list[tuple[int, list[int]]]:
    """``(object index, [x1, y1, x2, y2])`` of every object with at least ``min_pixels`` pixels in the instance map
    ``inst`` (ids as ``token_targets``; corners in pixels, ``x2``/``y2`` exclusive), left to right (then top down).

    Example:
        >>> inst = np.zeros((8, 8), np.uint8); inst[2:4, 5:8] = 1; inst[0:6, 1:3] = 2
        >>> frame_boxes_2d(inst, 2, 4)
        [(1, [1, 0, 3, 6]), (0, [5, 2, 8, 4])]
    """
    out = []
    for k in range(n):
        ys, xs = np.nonzero(inst == k + 1)
        if len(xs) >= min_pixels:
            out.append((k, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]))
    return sorted(out, key=lambda kb: (kb[1][0], kb[1][1], kb[0]))


def box2d_answer(boxes: list[list[int]], labels: list[str]) -> str:
    """JSON list ``[{"label": .., "bbox_2d": [x1, y1, x2, y2]}]``.

    Example:
        >>> box2d_answer([[1, 2, 30, 40]], ["bed"])
        '[{"label": "bed", "bbox_2d": [1, 2, 30, 40]}]'
    """
    return json.dumps([{"label": lab, "bbox_2d": [int(v) for v in b]} for b, lab in zip(boxes, labels)])


def box2d_sample(sample: Sample) -> Sample:
    """The 2D grounding question on ``sample``'s clip (its first frame), answer and target from ``meta["box2d"]``."""
    boxes, labels = sample.meta["box2d"]["boxes"], sample.meta["box2d"]["labels"]
    return replace(sample, prompt=P.full_prompt(BOX2D_PROMPT, sample.mode),
                   answer=P.format_answer(box2d_answer(boxes, labels), sample.mode),
                   target={"task": "box2d", "mode": sample.mode, "boxes2d": boxes, "labels": labels})  # fmt: skip


def grounding_question(scene, keep: np.ndarray, insts: np.ndarray, frames: list[int], rng: np.random.Generator,
                       think: str = "benchmark", min_px: int = 1) -> dict | None:  # fmt: skip
    """A grounding question on a clip: the first object of ``keep`` (visible ones, in a random order) that a
    referring expression singles out, the clip frame where its drawn area is largest and its box in that frame's
    camera (what the benchmark's grounding rows hold); None if no visible object can be singled out. ``think``:
    ``PretrainConfig.grounding_think`` (``listing``: the objects with at least ``min_px`` pixels in that frame)."""
    for t in rng.permutation(keep).tolist():
        described = describe(scene, t, rng)
        if described is None:
            continue
        k = int(np.argmax([(x == t + 1).sum() for x in insts]))
        box = P._r2(world_box_to_camera(scene.objects[t].box, scene.cam2world[frames[k]]))
        answer = None
        if think == "listing":
            pixels = np.bincount(insts[k].ravel(), minlength=len(scene.objects) + 1)[1:]
            text, _ = frame_listing_think(described[0], k, scene.objects, pixels, t, scene.cam2world[frames[k]], min_px)
        elif think in CLIP_THINKS:  # the answer: [0, the target's box in Frame-0's camera, its body]
            shown = [scene.objects[i] for i in keep]
            text, body, box0 = clip_think(think, described[0], shown, list(keep).index(t), scene.cam2world[frames[0]])
            answer = [0, box0, body]
        else:
            text = grounding_think(described[1], k, box, described[0] if think == "description" else None)
        return {"description": described[0], "think": text, "frame": k, "bbox_3d": box, "object": t,
                "cam2global": scene.cam2global[frames].tolist(), "axis_align_matrix": scene.axis_align.tolist(),
                "answer": answer}  # fmt: skip
    return None


def grounding_sample(sample: Sample, mode: str | None = None) -> Sample:
    """The grounding question of ``meta["grounding"]`` on ``sample``'s clip, in the benchmark's format, asked in
    ``mode`` (default: the sample's; ``ta`` writes the benchmark's grounding think before the answer)."""
    g, mode = sample.meta["grounding"], mode or sample.mode
    text = P.grounding_question(g["description"])
    target = {"task": "grounding", "mode": mode, "frame": g["frame"], "bbox_3d": g["bbox_3d"],
              "cam2global": g["cam2global"], "axis_align_matrix": g["axis_align_matrix"]}  # fmt: skip
    if g.get("answer"):  # the clip thinks answer Frame-0's box
        _, target["answer_bbox_3d"], body = g["answer"]  # the box the answer writes (the answer-box loss reads it)
    else:
        body = P.grounding_answer(g["frame"], g["bbox_3d"])
    answer = P.format_answer(body, mode, g.get("think"))
    if "clip" in g:  # ``grounding_clip=benchmark``: asked on frames of its own
        clip = g["clip"]
        sample = replace(sample, frames=clip["frames"], depth=clip["depth"], cam2world=clip["cam2world"],
                         meta={**sample.meta, "frame_indices": clip["frame_indices"]})  # fmt: skip
    return replace(sample, task="grounding", prompt=P.full_prompt(text, mode), answer=answer, target=target,
                   mode=mode, frame_labels=[P.frame_label(i) for i in range(len(sample.frames))])  # fmt: skip


class PerceptionDataset(Dataset):
    """Detection clips of rooms rendered on the fly: item ``i`` is a ``(Sample, dense targets)`` pair, the same
    bytes for the same ``(seed, i)`` in any process."""

    def __init__(self, cfg: PretrainConfig, synth: SynthConfig, seed: int, length: int, mode: str = "da",
                 training: bool = True):  # fmt: skip
        self.cfg, self.synth, self.seed, self.length, self.mode = cfg, synth, seed, length, mode
        self.training = training  # held-out clips are always detection, at one level
        self.levels = cfg.levels if training else [cfg.val_level or synth.level]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Sample, dict[str, Tensor]]:
        c = self.cfg
        level = self.levels[i % len(self.levels)]
        gen = clip_cfg(self.synth, self.seed, level)
        rng = scene_rng(gen.seed, i)
        scene = make_scene(f"pre{self.seed}_{i:07d}", rng, knobs_of(gen))
        span = (c.clip_len - 1) * c.stride
        start = int(rng.integers(0, len(scene.cam2world) - span))
        frames = list(range(start, start + span + 1, c.stride))
        rendered, insts, keep, dense = clip_views(scene, frames, gen.min_visible_pixels)
        n = len(scene.objects)
        objs, boxes = left_to_right([scene.objects[k] for k in keep], scene.cam2world[start])  # the answer order
        labels = [o.category for o in objs]
        u = rng.random() if self.training else 1.0  # one draw: streams without box2d are those of before
        inventory = u < c.inventory_share
        in_first = frame_boxes_2d(insts[0], n, gen.min_visible_pixels)
        box2d = {"boxes": [b for _, b in in_first], "labels": [scene.objects[k].category for k, _ in in_first]}
        lo = c.inventory_share + c.box2d_share
        asked = c.grounding_share > 0 and (not self.training or lo <= u < lo + c.grounding_share)
        grounding = None
        if asked and c.grounding_clip == "benchmark":  # its own frames, drawn as the benchmark's grounding rows
            g_frames = walk_frames(len(scene.cam2world), c.grounding_frames, rng)
            g_rendered, g_insts, g_keep, g_dense = clip_views(scene, g_frames, gen.min_visible_pixels)
            grounding = grounding_question(scene, g_keep, g_insts, g_frames, rng, c.grounding_think,
                                           gen.min_visible_pixels)  # fmt: skip
            if grounding is not None:
                grounding["clip"] = {"frame_indices": g_frames, "frames": [Image.fromarray(r[0]) for r in g_rendered],
                                     "depth": [r[1] for r in g_rendered], "cam2world": scene.cam2world[g_frames],
                                     "dense": g_dense}  # fmt: skip
        elif asked:
            grounding = grounding_question(scene, keep, insts, frames, rng, c.grounding_think, gen.min_visible_pixels)
        sample = Sample(
            id=f"pretrain{self.seed}/{i}", task="detection", frames=[Image.fromarray(r[0]) for r in rendered],
            prompt=P.full_prompt(INVENTORY_PROMPT if inventory else P.DETECTION_PROMPT, self.mode),
            answer=P.format_answer(inventory_answer(labels) if inventory else P.detection_answer(boxes, labels),
                                   self.mode),  # fmt: skip
            target={"task": "detection", "mode": self.mode, "boxes": boxes, "labels": labels},
            mode=self.mode, meta={"scene_name": scene.name, "frame_indices": frames, "level": level, "box2d": box2d,
                                  "grounding": grounding},  # fmt: skip
            depth=[r[1] for r in rendered], intrinsics=scene.intrinsics,  # for model.geometry: depth, points
            cam2world=scene.cam2world[frames],
        )  # fmt: skip
        if c.inventory_share <= u < lo:
            sample = box2d_sample(sample)
        elif self.training and lo + c.grounding_share <= u < lo + c.grounding_share + c.copy_share:
            sample = framed_copy_sample(sample, self.seed, i, c.text_gap)
        elif self.training and labels and 0 <= u - (lo + c.grounding_share + c.copy_share) < c.category_share:
            sample = category_sample(sample, str(rng.choice(sorted(set(labels)))))
        elif grounding is not None and self.training:
            sample = grounding_sample(sample, c.grounding_mode)
            dense = grounding.get("clip", {}).get("dense", dense)  # the targets of the frames it is asked on
        return sample, dense


def collate_perception(items: list[tuple[Sample, dict[str, Tensor]]], policy) -> dict:
    """A training/validation batch: model inputs with answers, the samples, and dense targets concatenated over
    every frame of every sample (the order of the visual tokens in the batch)."""
    samples = [s for s, _ in items]
    dense = {k: torch.cat([d[k] for _, d in items]) for k in items[0][1]}
    return {"inputs": policy.collate(samples, with_answer=True), "samples": samples,
            "targets": [s.target for s in samples], "dense": dense}  # fmt: skip


class PerceptionDataModule(L.LightningDataModule):
    """Training stream (``seed``, in index order; rooms are i.i.d.) and held-out clips (``seed + 1``)."""

    def __init__(self, cfg: PretrainConfig, synth: SynthConfig, batch_size: int, eval_batch_size: int,
                 collate_fn: Callable[[list], dict], num_workers: int = 0):  # fmt: skip
        super().__init__()
        self.cfg, self.synth, self.batch_size, self.eval_batch_size = cfg, synth, batch_size, eval_batch_size
        self.collate_fn, self.num_workers = collate_fn, num_workers
        if cfg.seed == synth.seed or cfg.seed + 1 == synth.seed:
            raise ValueError(f"pretrain.seed={cfg.seed}: must differ from data.synth.seed={synth.seed} (and from it "
                             "minus 1): pretraining rooms must never be the benchmark's scenes")  # fmt: skip
        shares = {"inventory_share": cfg.inventory_share, "box2d_share": cfg.box2d_share,
                  "grounding_share": cfg.grounding_share, "copy_share": cfg.copy_share,
                  "category_share": cfg.category_share}  # fmt: skip
        if not (all(v >= 0 for v in shares.values()) and sum(shares.values()) <= 1):
            raise ValueError(", ".join(f"pretrain.{k}={v}" for k, v in shares.items())
                             + ": each in [0, 1], summing to at most 1")  # fmt: skip
        if cfg.grounding_think not in ("benchmark", "description", "listing", *CLIP_THINKS):
            raise ValueError(f"pretrain.grounding_think={cfg.grounding_think!r}: must be 'benchmark', 'description', "
                             f"'listing' or one of {CLIP_THINKS}")  # fmt: skip
        if cfg.grounding_clip not in ("clip", "benchmark"):
            raise ValueError(f"pretrain.grounding_clip={cfg.grounding_clip!r}: must be 'clip' or 'benchmark'")
        if cfg.grounding_clip == "benchmark" and not cfg.grounding_frames >= 1:
            raise ValueError(f"pretrain.grounding_frames={cfg.grounding_frames}: must be at least 1")
        if cfg.grounding_clip == "benchmark" and (cfg.pointer_weight > 0 or cfg.attend_weight > 0):
            raise ValueError(f"pretrain.grounding_clip=benchmark with pretrain.pointer_weight={cfg.pointer_weight}, "
                             f"pretrain.attend_weight={cfg.attend_weight}: the pointer and attention losses read the "
                             "clip's own frames; set them to 0 or grounding_clip=clip")  # fmt: skip
        if cfg.answer_box_at not in ("all", "first"):
            raise ValueError(f"pretrain.answer_box_at={cfg.answer_box_at!r}: must be 'all' or 'first'")
        if cfg.attend_at not in ("digits", "box", "first"):
            raise ValueError(f"pretrain.attend_at={cfg.attend_at!r}: must be 'digits', 'box' or 'first'")
        if cfg.grounding_mode not in ("da", "ta"):
            raise ValueError(f"pretrain.grounding_mode={cfg.grounding_mode!r}: must be 'da' or 'ta'")
        if not cfg.geometry_init_ratio >= 0:
            raise ValueError(f"pretrain.geometry_init_ratio={cfg.geometry_init_ratio}: must be >= 0 (0: zero start)")
        if not (cfg.text_weight >= 0 and cfg.text_batch >= 1 and 0 <= cfg.text_gap <= len(FILLER)):
            raise ValueError(f"pretrain.text_weight={cfg.text_weight}, pretrain.text_batch={cfg.text_batch}, "
                             f"pretrain.text_gap={cfg.text_gap}: the weight must be >= 0 (0: off), the batch at least "
                             f"1 and the gap in 0..{len(FILLER)} sentences")  # fmt: skip
        if not cfg.attend_weight >= 0:
            raise ValueError(f"pretrain.attend_weight={cfg.attend_weight}: must be >= 0 (0: off)")
        scales = {"vision_lr_scale": cfg.vision_lr_scale, "geometry_lr_scale": cfg.geometry_lr_scale}
        for key, value in scales.items():
            if not value > 0:  # NaN fails too
                raise ValueError(f"pretrain.{key}={value}: a learning-rate multiplier must be > 0")
        bad = [lv for lv in [*cfg.levels, cfg.val_level or synth.level] if lv not in LEVELS]
        if bad or not cfg.levels:
            raise ValueError(f"pretrain.levels={cfg.levels}, pretrain.val_level={cfg.val_level}: valid levels are "
                             f"{sorted(LEVELS)} (val_level 0: data.synth.level)")  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        data = PerceptionDataset(self.cfg, self.synth, self.cfg.seed, self.cfg.scenes)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return StatefulDataLoader(data, batch_size=self.batch_size, sampler=sampler, collate_fn=self.collate_fn,
                                  num_workers=self.num_workers, persistent_workers=self.num_workers > 0)  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        data = PerceptionDataset(self.cfg, self.synth, self.cfg.seed + 1, self.cfg.val_samples, training=False)
        return DataLoader(data, batch_size=self.eval_batch_size, collate_fn=self.collate_fn)

    @property
    def detection_classes(self) -> list[str]:
        return sorted(self.synth.categories or CATEGORY_NAMES)
