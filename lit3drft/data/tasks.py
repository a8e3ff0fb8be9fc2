"""Task rows in the real formats (VG-LLM detection / ScanRefer grounding, VSI-Bench) built from a scene.

Rows carry the direct answer in ``conversations`` (``<answer>..</answer>``) and a short reasoning trace
built from the scene in ``think``; the readers turn them into DA or TA samples. Image and depth paths
are relative to the benchmark root.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np

from lit3drft.data import prompts as P
from lit3drft.data.geometry import rect_distance, world_box_to_camera
from lit3drft.data.records import BadSampleError, Record
from lit3drft.data.scene import Scene, SceneObject

DATASET = "synth3d"


def _m(x: np.ndarray) -> list:
    return np.round(np.asarray(x, dtype=np.float64), 6).tolist()


def _pos(o: SceneObject) -> str:
    return f"({o.center[0]:.1f}, {o.center[1]:.1f})"


def _paths(scene: Scene, frames: list[int]) -> tuple[list[str], list[str]]:
    base = f"scenes/{scene.name}"
    return [f"{base}/frames/{i:05d}.png" for i in frames], [f"{base}/depth/{i:05d}.png" for i in frames]


def _camera_rows(scene: Scene, frames: list[int]) -> dict:
    cam2img = np.eye(4)
    cam2img[:3, :3] = scene.intrinsics
    images, depths = _paths(scene, frames)
    return {
        "images": images,
        "depths": depths,
        "cam2global": [_m(m) for m in scene.cam2global[frames]],
        "axis_align_matrix": _m(scene.axis_align),
        "cam2img": _m(cam2img),
    }


def _conversation(human: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": f"<answer>{answer}</answer>"}]


def left_to_right(objects: list[SceneObject], cam2world: np.ndarray) -> tuple[list[SceneObject], list[list[float]]]:
    """Objects and their boxes in the camera of ``cam2world`` (rounded as answers are), ordered left to right
    (``x`` of the box centre, then near to far): an order a model can read off the frames, where the scene's
    placement order is arbitrary (a detection answer in that order cannot be predicted from the pixels)."""
    boxes = [P._r2(world_box_to_camera(o.box, cam2world)) for o in objects]
    order = sorted(range(len(objects)), key=lambda i: (boxes[i][0], boxes[i][2]))
    return [objects[i] for i in order], [boxes[i] for i in order]


def detection_rows(
    scene: Scene, rng: np.random.Generator, clip_len: int, n_clips: int, stride: int, min_px: int
) -> list[dict]:
    """VG-LLM detection clips: ``clip_len`` frames ``stride`` apart, boxes of the objects visible in some
    frame of the clip, in the first camera's frame."""
    n_frames = len(scene.cam2world)
    span = (clip_len - 1) * stride
    if span >= n_frames:
        return []
    starts = sorted(rng.choice(n_frames - span, size=min(n_clips, n_frames - span), replace=False).tolist())
    rows = []
    for j, s in enumerate(starts):
        frames = list(range(s, s + span + 1, stride))
        vis = np.flatnonzero(scene.visible_pixels[frames].max(0) >= min_px)
        objs, boxes = left_to_right([scene.objects[i] for i in vis], scene.cam2world[s])
        labels = [o.category for o in objs]
        counts = Counter(labels)
        think = (
            f"I see {len(objs)} objects: " + ", ".join(f"{c} x{n}" for c, n in sorted(counts.items())) + ". "
            if objs
            else "I see no furniture. "
        ) + " ".join(f"The {o.category} is {b[2]:.2f} m in front of the first camera." for o, b in zip(objs, boxes))
        rows.append(
            {
                "id": f"{scene.name}/det{clip_len}_{j}",
                "conversations": _conversation(
                    P.IMAGE_TOKEN * clip_len + "\n" + P.DETECTION_PROMPT, P.detection_answer(boxes, labels)
                ),  # fmt: skip
                **_camera_rows(scene, frames),
                "boxes": [{"bbox_3d": b, "label": lab} for b, lab in zip(boxes, labels)],
                "think": think.strip(),
                "metadata": {"dataset": DATASET, "scene_name": scene.name, "frame_indices": frames},
            }
        )
    return rows


def describe(scene: Scene, t: int, rng: np.random.Generator) -> tuple[str, str] | None:
    """A referring expression (category, colour, relation to a unique anchor) that singles out object ``t``."""
    target = scene.objects[t]
    same = [i for i, o in enumerate(scene.objects) if (o.category, o.color) == (target.category, target.color)]
    keys = Counter((o.category, o.color) for o in scene.objects)
    anchors = [
        i for i, o in enumerate(scene.objects) if keys[(o.category, o.color)] == 1 and o.category != target.category
    ]
    for a in rng.permutation(anchors).tolist():
        anchor = scene.objects[a]
        dist = {i: rect_distance(scene.objects[i].footprint(), anchor.footprint()) for i in same}
        order = sorted(same, key=dist.get)
        for rel, pick in (("closest to", order[0]), ("farthest from", order[-1])):
            others = [dist[i] for i in same if i != t]
            if pick != t or (others and min(abs(dist[t] - d) for d in others) < 0.3):
                continue
            desc = f"the {target.color} {target.category} {rel} the {anchor.color} {anchor.category}"
            think = (
                f"There {'is' if len(same) == 1 else 'are'} {len(same)} {target.color} {target.category}(s); "
                f"the one at {_pos(target)} is {dist[t]:.1f} m from the {anchor.color} {anchor.category} at {_pos(anchor)}."
            )
            return desc, think
    return None


def grounding_think(described: str, frame: int, bbox: list[float], description: str | None = None) -> str:
    """The think-then-answer trace of a grounding answer: ``describe``'s reasoning about which object is meant, then
    the answered frame and the box centre's depth in its camera (what the answer's box is then written from). With
    ``description`` (a referring expression), that expression copied instead of the reasoning.

    Example:
        >>> grounding_think("", 3, [0.1, 0.2, 1.234], "the red chair closest to the bed")
        'The red chair closest to the bed looks largest in Frame-3, 1.23 m in front of the camera.'
    """
    where = f"Frame-{frame}, {bbox[2]:.2f} m in front of the camera."
    if description is not None:
        return f"{description[0].upper()}{description[1:]} looks largest in {where}"
    return f"{described} It looks largest in {where}"


def listing_think(description: str, frame: int, boxes: list[list[float]], labels: list[str], target: int) -> str:
    """A detect-then-select grounding think: the referring expression copied with the answered frame, then every
    object that frame shows in its camera (``boxes``, left to right, labelled with colour and category: a detection
    answer of one frame), then entry ``target`` restated, from which the answer's box is copied. Each step is one the
    tiny policy already takes elsewhere: a detection listing, copying words of the question, and copying a box whose
    label it has just written (the entry's own text recurs right before its numbers).

    Example:
        >>> listing_think("the red chair", 2, [[0.1, 0, 2, 1, 1, 1, 0, 0, 0], [0.9, 0, 3, 1, 1, 1, 0, 0, 0]],
        ...               ["red chair", "blue bed"], 0)  # doctest: +NORMALIZE_WHITESPACE
        'The red chair looks largest in Frame-2, which shows [{"label": "red chair", "bbox_3d": [0.1, 0.0, 2.0, 1.0,
        1.0, 1.0, 0.0, 0.0, 0.0]}, {"label": "blue bed", "bbox_3d": [0.9, 0.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]}].
        So: {"label": "red chair", "bbox_3d": [0.1, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]}'
    """
    shown = P.detection_answer(boxes, labels)
    chosen = json.dumps({"label": labels[target], "bbox_3d": P._r2(boxes[target])})
    return (
        f"{description[0].upper()}{description[1:]} looks largest in Frame-{frame}, which shows {shown}. So: {chosen}"
    )


def frame_listing_think(description: str, frame: int, objects: list[SceneObject], pixels, target: int,
                        cam2world: np.ndarray, min_px: int) -> tuple[str, list[float]]:  # fmt: skip
    """``listing_think`` for object ``target`` of ``objects`` in the frame of ``cam2world``: the objects with at
    least ``min_px`` drawn ``pixels`` there (the target always), labelled with colour and category. Returns the think
    and the target's box as listed (the answer's box)."""
    shown = [o for i, o in enumerate(objects) if pixels[i] >= min_px or i == target]
    objs, boxes = left_to_right(shown, cam2world)
    at = next(n for n, o in enumerate(objs) if o is objects[target])
    labels = [f"{o.color} {o.category}" for o in objs]
    return listing_think(description, frame, boxes, labels, at), boxes[at]


def description_think(rec: Record) -> Record:
    """``rec`` with ``SourceConfig.think=description``: a grounding row's think rewritten as ``grounding_think``'s
    copied referring expression (``metadata.description``), its answered frame and box depth."""
    where = f"{rec.meta.get('file', '?')}: row {rec.id}"
    if rec.task != "grounding":
        raise BadSampleError(f"{where}: think=description is for grounding rows, this one is {rec.task}")
    desc = rec.meta.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise BadSampleError(
            f"{where}: think=description needs the row's metadata.description (a referring expression)"
        )
    return replace(rec, think=grounding_think("", rec.target["frame"], rec.target["bbox_3d"], desc.strip()))


def clip_listing_think(description: str, objects: list[SceneObject], target: int, first_c2w: np.ndarray,
                       colour_keys: bool = False) -> tuple[str, list[float]]:  # fmt: skip
    """Detect in the clip, then select: the referring expression copied, then ``objects`` (those the clip shows) as
    the clip's *detection answer* (the first frame's camera, left to right, as the detection rows write it),
    labelled with colour and category, then entry ``target`` restated. Returns the think and the target's box in
    the first frame's camera: the answer is then ``{"frame": 0, "bbox_3d": that box}``, the same world box as the
    row's (the metric reads every answer in the world), asked of the policy through the one perception task it
    does well (clip detection) and copying text.

    ``colour_keys`` (``think=clip_detection``): no copied expression, and each entry is the detection answer's own
    ``{"label": category, "bbox_3d": ...}`` with the colour in a key of its own in front (``{"color": "red",
    "label": "chair", ...}``), so that the category slot and the box are token for token a detection answer's and
    the restated entry is a prefix copy of the listed one.

    Example:
        >>> from lit3drft.data.scene import SceneObject
        >>> objs = [SceneObject("chair", "red", [1.0, 0.0, 0.5], [1, 1, 1], 0.0),
        ...         SceneObject("bed", "blue", [-1.0, 0.0, 0.5], [1, 1, 1], 0.0)]
        >>> think, box = clip_listing_think("the red chair", objs, 0, np.eye(4))
        >>> print(think)  # doctest: +NORMALIZE_WHITESPACE
        The red chair: the clip shows, in Frame-0's camera, [{"label": "blue bed", "bbox_3d": [-1.0, 0.0, 0.5, 1.0,
        1.0, 1.0, 0.0, 0.0, 0.0]}, {"label": "red chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]}].
        So: {"label": "red chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]}
        >>> box
        [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        >>> print(clip_listing_think("the red chair", objs, 0, np.eye(4), colour_keys=True)[0])
        ... # doctest: +NORMALIZE_WHITESPACE
        The clip shows, in Frame-0's camera, [{"color": "blue", "label": "bed", "bbox_3d": [-1.0, 0.0, 0.5, 1.0, 1.0,
        1.0, 0.0, 0.0, 0.0]}, {"color": "red", "label": "chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0,
        0.0]}]. So: {"color": "red", "label": "chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]}
    """
    objs, boxes = left_to_right(objects, first_c2w)
    at = next(n for n, o in enumerate(objs) if o is objects[target])
    if colour_keys:
        entries = _colour_entries(objs, boxes)
        return f"{_CLIP_SHOWS}{json.dumps(entries)}. So: {json.dumps(entries[at])}", boxes[at]
    labels = [f"{o.color} {o.category}" for o in objs]
    shown = P.detection_answer(boxes, labels)
    chosen = json.dumps({"label": labels[at], "bbox_3d": P._r2(boxes[at])})
    desc = f"{description[0].upper()}{description[1:]}"
    return f"{desc}: the clip shows, in Frame-0's camera, {shown}. So: {chosen}", boxes[at]


_CLIP_SHOWS = "The clip shows, in Frame-0's camera, "
CLIP_THINKS = ("clip_listing", "clip_detection", "clip_select", "clip_entry", "clip_name")
"""The grounding thinks answered in the first frame's camera (``{.., "frame": 0}``)."""


def _colour_entries(objs: list[SceneObject], boxes: list[list[float]]) -> list[dict]:
    """Detection-answer entries ``{"color", "label": category, "bbox_3d"}`` (boxes rounded as the answers write them)."""
    return [{"color": o.color, "label": o.category, "bbox_3d": P._r2(b)} for o, b in zip(objs, boxes)]


def clip_select_think(objects: list[SceneObject], target: int, first_c2w: np.ndarray) -> tuple[str, str, list[float]]:
    """``think=clip_select``: ``clip_listing_think(colour_keys=True)``'s list of the clip's objects without the
    restated entry; the *answer* is the referred entry itself, copied from the list, with the answered frame as a
    last key (``{"color": .., "label": .., "bbox_3d": .., "frame": 0}``: ``parse_grounding`` reads ``frame`` and
    ``bbox_3d`` and ignores the rest), so selecting and copying happen once, token for token a prefix of the
    listed entry. Returns the think, the answer and the target's box in the first frame's camera (the same world
    box as the row's).

    Example:
        >>> from lit3drft.data.scene import SceneObject
        >>> objs = [SceneObject("chair", "red", [1.0, 0.0, 0.5], [1, 1, 1], 0.0),
        ...         SceneObject("bed", "blue", [-1.0, 0.0, 0.5], [1, 1, 1], 0.0)]
        >>> think, answer, box = clip_select_think(objs, 0, np.eye(4))
        >>> print(think)  # doctest: +NORMALIZE_WHITESPACE
        The clip shows, in Frame-0's camera, [{"color": "blue", "label": "bed", "bbox_3d": [-1.0, 0.0, 0.5, 1.0, 1.0,
        1.0, 0.0, 0.0, 0.0]}, {"color": "red", "label": "chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0,
        0.0]}].
        >>> print(answer)
        {"color": "red", "label": "chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "frame": 0}
    """
    objs, boxes = left_to_right(objects, first_c2w)
    at = next(n for n, o in enumerate(objs) if o is objects[target])
    entries = _colour_entries(objs, boxes)
    return f"{_CLIP_SHOWS}{json.dumps(entries)}.", json.dumps({**entries[at], "frame": 0}), boxes[at]


def clip_entry_think(description: str, target: SceneObject, first_c2w: np.ndarray) -> tuple[str, str, list[float]]:
    """``think=clip_entry``: no listing; the think copies the referring expression, and the answer is the referred
    object's own detection-answer entry in the first frame's camera with the frame last (``{"color": .., "label":
    .., "bbox_3d": .., "frame": 0}``, ``clip_select``'s answer): colour and category copied from the question, then
    the box written as the clip's detection writes it for that label. Returns the think, the answer and the box.

    Example:
        >>> from lit3drft.data.scene import SceneObject
        >>> think, answer, box = clip_entry_think("the red chair", SceneObject("chair", "red", [1.0, 0.0, 0.5],
        ...                                       [1, 1, 1], 0.0), np.eye(4))
        >>> print(think)
        The red chair.
        >>> print(answer)
        {"color": "red", "label": "chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "frame": 0}
    """
    _, (box,) = left_to_right([target], first_c2w)
    entry = _colour_entries([target], [box])[0]
    return f"{description[0].upper()}{description[1:]}.", json.dumps({**entry, "frame": 0}), box


def clip_name_think(description: str, target: SceneObject, first_c2w: np.ndarray) -> tuple[str, str, list[float]]:
    """``think=clip_name``: ``clip_entry_think``'s think (the referring expression copied) and box, with the answer
    naming the object in one key of its own, ``{"object": "<colour> <category>", "bbox_3d": .., "frame": 0}``: the
    name is the expression's own first words, copied from the think, where ``clip_entry``'s ``"color"`` / ``"label"``
    keys are the detection listings' and get written from what the model sees (twentieth session: 24 % of those
    answers copied the think's colour and category).

    Example:
        >>> from lit3drft.data.scene import SceneObject
        >>> think, answer, box = clip_name_think("the red chair closest to the bed", SceneObject("chair", "red",
        ...                                      [1.0, 0.0, 0.5], [1, 1, 1], 0.0), np.eye(4))
        >>> print(think)
        The red chair closest to the bed.
        >>> print(answer)
        {"object": "red chair", "bbox_3d": [1.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], "frame": 0}
    """
    think, _, box = clip_entry_think(description, target, first_c2w)
    return think, json.dumps({"object": f"{target.color} {target.category}", "bbox_3d": P._r2(box), "frame": 0}), box


def clip_think(think: str, description: str, objects: list[SceneObject], target: int,
               first_c2w: np.ndarray) -> tuple[str, str, list[float]]:  # fmt: skip
    """One of ``CLIP_THINKS`` for object ``target`` of ``objects`` (those the clip shows): the think, the answer's
    body and the target's box in the first frame's camera."""
    if think not in CLIP_THINKS:
        raise ValueError(f"think={think!r}: expected one of {CLIP_THINKS}")
    if think == "clip_select":
        return clip_select_think(objects, target, first_c2w)
    if think == "clip_entry":
        return clip_entry_think(description, objects[target], first_c2w)
    if think == "clip_name":
        return clip_name_think(description, objects[target], first_c2w)
    text, box = clip_listing_think(description, objects, target, first_c2w, think == "clip_detection")
    return text, P.grounding_answer(0, box), box


def _row_scene(rec: Record, scene: dict, think: str) -> tuple[str, int, list[int], list[SceneObject], str]:
    """A grounding row's referring expression, target object, scene frames and ``scene.json``'s objects, checked
    (``think``: the ``SourceConfig.think`` asking, for the errors)."""
    where = f"{rec.meta.get('file', '?')}: row {rec.id}"
    if rec.task != "grounding":
        raise BadSampleError(f"{where}: think={think} is for grounding rows, this one is {rec.task}")
    desc, t, frames = rec.meta.get("description"), rec.meta.get("object_id"), rec.meta.get("frame_indices")
    if not isinstance(desc, str) or not desc.strip() or not isinstance(t, int) or not isinstance(frames, list):
        raise BadSampleError(f"{where}: think={think} needs the row's metadata.description, object_id and "
                             "frame_indices (the embedded benchmark's grounding rows have them)")  # fmt: skip
    k = int(rec.target["frame"])
    objects = [SceneObject(o["category"], o["color"], list(o["bbox_3d"][:3]), list(o["bbox_3d"][3:6]), o["bbox_3d"][6])
               for o in scene["objects"]]  # fmt: skip
    n_frames = len(scene["cam2world"])
    if not (0 <= k < len(frames) and all(0 <= f < n_frames for f in frames) and 0 <= t < len(objects)):
        raise BadSampleError(f"{where}: frame {k} (of {len(frames)}: {frames}) or object {t} is not in "
                             f"{scene.get('name', 'its scene')} ({n_frames} frames, {len(objects)} objects)")  # fmt: skip
    return desc.strip(), t, frames, objects, where


def _check_target(rec: Record, scene: dict, objects: list[SceneObject], t: int, frames: list[int], where: str):
    """The row's target box must be object ``t``'s box in the answered frame's camera."""
    k = int(rec.target["frame"])
    box = P._r2(world_box_to_camera(objects[t].box, np.asarray(scene["cam2world"][frames[k]])))
    if box != P._r2(rec.target["bbox_3d"]):
        raise BadSampleError(f"{where}: object {t} of {scene.get('name', 'its scene')} in Frame-{k} is not the row's "
                             f"target box ({box} vs {rec.target['bbox_3d']}): the row and scene.json disagree")  # fmt: skip


def scene_listing_think(rec: Record, scene: dict, min_px: int) -> Record:
    """``rec`` with ``SourceConfig.think=listing``: a grounding row's think rewritten as ``listing_think``'s detect,
    then select trace, from its scene's ``scene.json`` (``scene``: objects' world boxes, colours, per-frame camera
    poses and visible pixels): the objects of at least ``min_px`` pixels in the answered frame, in its camera."""
    desc, t, frames, objects, where = _row_scene(rec, scene, "listing")
    _check_target(rec, scene, objects, t, frames, where)
    k = int(rec.target["frame"])
    c2w = np.asarray(scene["cam2world"][frames[k]])
    think, _ = frame_listing_think(desc, k, objects, scene["visible_pixels"][frames[k]], t, c2w, min_px)
    return replace(rec, think=think)


def scene_clip_listing_think(rec: Record, scene: dict, min_px: int, think: str = "clip_listing") -> Record:
    """``rec`` with ``SourceConfig.think=clip_listing``, ``clip_detection``, ``clip_select``, ``clip_entry`` or
    ``clip_name`` (``think``): ``clip_listing_think``'s trace (``clip_select_think``'s; ``clip_entry_think``,
    ``clip_name_think``: none) of the objects of at least ``min_px`` pixels in some frame
    of the row's clip (the detection rows' rule), in the first frame's camera, and the answer it leads to, the
    target's box in Frame-0's camera (``{"frame": 0, "bbox_3d": ..}``; ``clip_select``: the listed entry with
    ``"frame": 0``). ``target`` (what the metric scores) is the row's own."""
    desc, t, frames, objects, where = _row_scene(rec, scene, think)
    _check_target(rec, scene, objects, t, frames, where)
    px = np.asarray(scene["visible_pixels"])[frames].max(0)
    shown = [o for i, o in enumerate(objects) if px[i] >= min_px or i == t]
    at = next(n for n, o in enumerate(shown) if o is objects[t])
    text, answer, _ = clip_think(think, desc, shown, at, np.asarray(scene["cam2world"][frames[0]]))
    return replace(rec, think=text, answer=answer)


def walk_frames(total: int, n_frames: int, rng: np.random.Generator) -> list[int]:
    """The grounding rows' clip: ``n_frames`` frames spread evenly over a walk of ``total`` frames, from a random
    offset in ``[0, total // n_frames)`` to the last frame (all of them from 0 when ``n_frames >= total``)."""
    offset = int(rng.integers(0, total // n_frames)) if n_frames < total else 0
    return (np.linspace(0, total - 1 - offset, n_frames).round().astype(int) + offset).tolist()


def grounding_rows(scene: Scene, rng: np.random.Generator, n_frames: int, n_samples: int, min_px: int) -> list[dict]:
    """ScanRefer-style rows: ``n_frames`` frames prefixed "Frame-i: ", the answer frame the one where the
    target's drawn area is largest, its box in that camera's frame."""
    total = len(scene.cam2world)
    if n_frames > total:
        return []
    rows = []
    for _ in range(n_samples * 3):
        if len(rows) >= n_samples:
            break
        frames = walk_frames(total, n_frames, rng)
        px = scene.visible_pixels[frames]  # (n_frames, N)
        candidates = np.flatnonzero(px.max(0) >= min_px)
        if len(candidates) == 0:
            continue
        t = int(rng.choice(candidates))
        described = describe(scene, t, rng)
        if described is None:
            continue
        desc, think = described
        k = int(px[:, t].argmax())
        bbox = P._r2(world_box_to_camera(scene.objects[t].box, scene.cam2world[frames[k]]))
        human = "".join(P.frame_label(i) + P.IMAGE_TOKEN for i in range(n_frames))
        human += "\n" + P.grounding_question(desc)
        think = grounding_think(think, k, bbox)
        rows.append(
            {
                "id": f"{scene.name}/ground{n_frames}_{len(rows)}",
                "conversations": _conversation(human, P.grounding_answer(k, bbox)),
                **_camera_rows(scene, frames),
                "target": {"frame": k, "bbox_3d": bbox},
                "gt_bbox": _m(scene.objects[t].box),
                "think": think,
                "metadata": {
                    "dataset": DATASET,
                    "scene_name": scene.name,
                    "frame_indices": frames,
                    "object_id": t,
                    "description": desc,
                },  # fmt: skip
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# VSI-Bench questions
# ----------------------------------------------------------------------------------------------------------------------


def _dist(a: SceneObject, b: SceneObject) -> float:
    return rect_distance(a.footprint(), b.footprint())


def _angle(frm: np.ndarray, facing: np.ndarray, query: np.ndarray) -> float:
    """Signed angle (deg, + = counter-clockwise = left in a z-up world) from the facing to the query direction."""
    f, q = facing - frm, query - frm
    return math.degrees(math.atan2(f[0] * q[1] - f[1] * q[0], f @ q))


def _mc(rng: np.random.Generator, correct: str, distractors: list[str]) -> tuple[list[str], str]:
    choices = [correct, *list(dict.fromkeys(d for d in distractors if d != correct))[:3]]
    order = rng.permutation(len(choices)).tolist()
    choices = [choices[i] for i in order]
    return P.format_options(choices), P.OPTION_LETTERS[choices.index(correct)]


def _q_counting(scene, rng, unique, first_seen):
    counts = Counter(o.category for o in scene.objects)
    cats = [c for c, n in counts.items() if n >= 2] or list(counts)
    cat = str(rng.choice(cats))
    objs = [o for o in scene.objects if o.category == cat]
    think = f"I see {cat}s at " + ", ".join(_pos(o) for o in objs) + f", so {len(objs)} in total."
    return P.VSI_TEMPLATES["object_counting"].format(category=cat), None, str(len(objs)), think


def _q_abs_distance(scene, rng, unique, first_seen):
    a, b = rng.choice(len(unique), 2, replace=False)
    oa, ob = unique[a], unique[b]
    d = _dist(oa, ob)
    if d < 0.2:
        return None
    q = P.VSI_TEMPLATES["object_abs_distance"].format(a=oa.category, b=ob.category)
    think = f"The {oa.category} is at {_pos(oa)} and the {ob.category} at {_pos(ob)}; their closest points are {d:.2f} m apart."
    return q, None, P.format_number(d), think


def _q_size(scene, rng, unique, first_seen):
    o = unique[int(rng.integers(len(unique)))]
    cm = round(max(o.size) * 100)
    think = (
        f"The {o.category} measures {o.size[0]:.2f} x {o.size[1]:.2f} x {o.size[2]:.2f} m; the longest side is {cm} cm."
    )
    return P.VSI_TEMPLATES["object_size_estimation"].format(category=o.category), None, str(cm), think


def _q_room(scene, rng, unique, first_seen):
    w, length = scene.room[:2]
    area = round(w * length, 1)
    think = f"The room is about {w:.1f} m by {length:.1f} m, so its area is {area} square meters."
    return P.VSI_TEMPLATES["room_size_estimation"], None, P.format_number(area), think


def _q_rel_distance(scene, rng, unique, first_seen):
    if len(unique) < 3:
        return None
    idx = rng.permutation(len(unique)).tolist()
    target, choices = unique[idx[0]], [unique[i] for i in idx[1:5]]
    d = sorted((_dist(target, c), c.category) for c in choices)
    if d[1][0] - d[0][0] < 0.3:
        return None
    names = [c.category for c in choices]
    options = P.format_options(names)
    letter = P.OPTION_LETTERS[names.index(d[0][1])]
    q = P.VSI_TEMPLATES["object_rel_distance"].format(choices=", ".join(names), category=target.category)
    think = "Distances to the " + target.category + ": " + ", ".join(f"{n} {x:.2f} m" for x, n in d) + "."
    return q, options, letter, think


def _direction(level: str, ang: float) -> str | None:
    a = abs(ang)
    side = "left" if ang > 0 else "right"
    if level == "easy":
        return side if 15 < a < 165 else None
    if level == "medium":
        if a > 145:
            return "back"
        return side if 20 < a < 125 else None
    if min(abs(a - 90), a, 180 - a) < 12:  # hard: quadrants, away from the axes
        return None
    return ("front-" if a < 90 else "back-") + side


def _q_direction(level: str):
    def build(scene, rng, unique, first_seen):
        if len(unique) < 3:
            return None
        p, f, q = (unique[i] for i in rng.choice(len(unique), 3, replace=False))
        xy = [np.asarray(o.center[:2]) for o in (p, f, q)]
        if min(np.linalg.norm(xy[1] - xy[0]), np.linalg.norm(xy[2] - xy[0])) < 0.5:
            return None
        ang = _angle(*xy)
        ans = _direction(level, ang)
        if ans is None:
            return None
        pool = {"easy": ["left", "right"], "medium": ["left", "right", "back"],
                "hard": ["front-left", "front-right", "back-left", "back-right"]}[level]  # fmt: skip
        options, letter = _mc(rng, ans, [x for x in pool if x != ans])
        question = P.VSI_TEMPLATES[f"object_rel_direction_{level}"].format(position=p.category, facing=f.category,
                                                                           query=q.category)  # fmt: skip
        think = (f"Standing at the {p.category} {_pos(p)} facing the {f.category} {_pos(f)}, the {q.category} "
                 f"{_pos(q)} is {abs(ang):.0f} degrees to the {'left' if ang > 0 else 'right'}, so {ans}.")  # fmt: skip
        return question, options, letter, think

    return build


def _turn(ang: float) -> str | None:
    a = abs(ang)
    if a > 150:
        return "turn back"
    if 40 < a < 130:
        return "turn left" if ang > 0 else "turn right"
    return None


def _q_route(scene, rng, unique, first_seen):
    if len(unique) < 4:
        return None
    s, f, w, g = (unique[i] for i in rng.choice(len(unique), 4, replace=False))
    pts = [np.asarray(o.center[:2]) for o in (s, f, w, g)]
    turns = [_turn(_angle(pts[0], pts[1], pts[2])), _turn(_angle(pts[2], pts[2] + (pts[2] - pts[0]), pts[3]))]
    if None in turns or np.linalg.norm(pts[2] - pts[0]) < 0.5 or np.linalg.norm(pts[3] - pts[2]) < 0.5:
        return None
    steps = f"1. [please fill in] 2. Go forward until the {w.category}. 3. [please fill in] 4. Go forward until the {g.category}."
    question = P.VSI_TEMPLATES["route_planning"].format(
        start=s.category, facing=f.category, goal=g.category, steps=steps
    )
    names = ["turn left", "turn right", "turn back"]
    seqs = [", ".join(x).title() for x in itertools.product(names, repeat=2)]
    correct = ", ".join(turns).title()
    distractors = [seqs[i] for i in rng.permutation(len(seqs)).tolist()]
    options, letter = _mc(rng, correct, distractors)
    think = f"From the {s.category} facing the {f.category}, the {w.category} needs a {turns[0]}; then the {g.category} needs a {turns[1]}."
    return question, options, letter, think


def _q_order(scene, rng, unique_cats_unused, first_seen):
    gap = max(2, len(scene.cam2world) // 16)  # survives uniform sampling of half the frames
    pick: list[str] = []
    for c in rng.permutation(sorted(c for c in first_seen if first_seen[c] is not None)).tolist():
        if len(pick) < 4 and all(abs(first_seen[c] - first_seen[p]) >= gap for p in pick):
            pick.append(c)
    if len(pick) < 3:
        return None
    order = sorted(pick, key=first_seen.get)
    perms = [", ".join(p) for p in itertools.permutations(pick)]
    options, letter = _mc(rng, ", ".join(order), [perms[i] for i in rng.permutation(len(perms)).tolist()])
    question = P.VSI_TEMPLATES["obj_appearance_order"].format(categories=", ".join(pick))
    think = "First seen: " + ", ".join(f"{c} at frame {first_seen[c]}" for c in order) + "."
    return question, options, letter, think


BUILDERS = {
    "object_counting": _q_counting,
    "object_abs_distance": _q_abs_distance,
    "object_size_estimation": _q_size,
    "room_size_estimation": _q_room,
    "object_rel_distance": _q_rel_distance,
    "object_rel_direction_easy": _q_direction("easy"),
    "object_rel_direction_medium": _q_direction("medium"),
    "object_rel_direction_hard": _q_direction("hard"),
    "route_planning": _q_route,
    "obj_appearance_order": _q_order,
}


def vsi_depth_fields(scene_name: str, intrinsics: np.ndarray) -> dict:
    """lit3drft's extension of a VSI-Bench row (not in the benchmark): per-video-frame depth and camera poses for
    the geometry priors, relative to the VSI-Bench media root (``<root>/videos``), and the depth intrinsics."""
    return {"depth_dir": f"../scenes/{scene_name}/depth", "pose_dir": f"../scenes/{scene_name}/pose",
            "cam2img": _m(intrinsics)}  # fmt: skip


def spatial_rows(scene: Scene, rng: np.random.Generator, per_type: int, min_px: int) -> list[dict]:
    """VSI-Bench rows for every question type (up to ``per_type`` distinct questions each)."""
    counts = Counter(o.category for o in scene.objects)
    unique = [o for o in scene.objects if counts[o.category] == 1]
    first_seen: dict[str, int | None] = {}
    for i, o in enumerate(scene.objects):
        seen = np.flatnonzero(scene.visible_pixels[:, i] >= min_px)
        f = int(seen[0]) if len(seen) else None
        prev = first_seen.get(o.category)
        first_seen[o.category] = f if prev is None else (prev if f is None else min(prev, f))
    rows = []
    for qtype, build in BUILDERS.items():
        if qtype == "room_size_estimation":
            tries, limit = 1, 1
        else:
            tries, limit = per_type * 6, per_type
        if qtype not in ("object_counting", "room_size_estimation", "obj_appearance_order") and len(unique) < 2:
            continue
        seen_q: set[str] = set()
        for _ in range(tries):
            if len(seen_q) >= limit:
                break
            out = build(scene, rng, unique, first_seen)
            if out is None or out[0] in seen_q:
                continue
            question, options, gt, think = out
            seen_q.add(question)
            rows.append(
                {
                    "id": f"{scene.name}/{qtype}_{len(seen_q) - 1}",
                    "dataset": DATASET,
                    "scene_name": scene.name,
                    "question_type": qtype,
                    "question": question,
                    "options": options,
                    "ground_truth": gt,
                    "think": think,
                    **vsi_depth_fields(scene.name, scene.intrinsics),
                }  # fmt: skip
            )
    return rows
