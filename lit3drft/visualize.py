"""Draw ground-truth (green) and predicted (red) 3D boxes projected onto the frames, as a PNG grid.

    python -m lit3drft.visualize --root data/synth3d --file tasks/val/detection_4f.jsonl --rows 4 --out boxes.png
    python -m lit3drft.visualize --root data/synth3d --file tasks/val/grounding_8f.jsonl \
        --predictions runs/x/y/predictions.jsonl --out grounding.png
    python -m lit3drft.visualize --root data/synth3d --scene scene00003 --out scene.png   # every object, every frame

Rows are VG-LLM detection or grounding rows; boxes are moved from their reference camera (first frame for
detection, the answer frame for grounding) to each frame's camera with the rows' ``cam2global``.
Predictions are JSONL lines with ``id`` (the row id, with or without its ``<source>/`` prefix) and
``completion`` (the model's text): its answer is read by the reward's parsers, so what is drawn is what the
reward scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lit3drft.data.geometry import BOX_EDGES, box_corners, project_points
from lit3drft.data.readers import load_rows
from lit3drft.rewards.parsing import extract_answer, parse_detections, parse_grounding

GT_COLOR, PRED_COLOR = (0, 230, 0), (255, 40, 40)


def draw_box(draw: ImageDraw.ImageDraw, corners_cam: np.ndarray, k: np.ndarray, color, width: int = 1) -> None:
    """Draw the 12 edges of a box given by its camera-frame corners ``(8, 3)``, clipped at z = 0.05 m."""
    for a, b in BOX_EDGES:
        p, q = corners_cam[a].copy(), corners_cam[b].copy()
        if p[2] < 0.05 and q[2] < 0.05:
            continue
        if p[2] < 0.05 or q[2] < 0.05:  # clip the segment to the near plane
            t = (0.05 - p[2]) / (q[2] - p[2])
            cut = p + t * (q - p)
            p, q = (cut, q) if p[2] < 0.05 else (p, cut)
        uv, _ = project_points(np.stack([p, q]), k)
        draw.line([tuple(uv[0]), tuple(uv[1])], fill=color, width=width)


def boxes_on_frames(
    frames: list[Image.Image], k: np.ndarray, cam2global: np.ndarray, ref: int, boxes: list[tuple[list[float], tuple]]
) -> list[Image.Image]:
    """Copies of ``frames`` with ``(box, colour)`` pairs drawn; boxes are in camera ``ref``'s frame."""
    out = []
    for j, frame in enumerate(frames):
        im = frame.convert("RGB").copy()
        draw = ImageDraw.Draw(im)
        ref_to_j = np.linalg.inv(cam2global[j]) @ cam2global[ref]
        for box, color in boxes:
            corners = box_corners(box) @ ref_to_j[:3, :3].T + ref_to_j[:3, 3]
            draw_box(draw, corners, k, color)
        out.append(im)
    return out


def grid(rows: list[list[Image.Image]], scale: int = 2) -> Image.Image:
    """Tile rows of frames (rows may differ in length) into one image, upscaled by ``scale``."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * w * scale, len(rows) * h * scale), (255, 255, 255))
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            canvas.paste(im.resize((w * scale, h * scale), Image.NEAREST), (j * w * scale, i * h * scale))
    return canvas


def _predicted_boxes(completion: str, task: str) -> tuple[int | None, list[list[float]]]:
    """The frame (grounding) and boxes of a completion, read by the reward's own parsers.

    So a figure shows what the reward scored: an answer the reward cannot parse (no ``<answer>`` tags, an
    invalid entry) draws nothing, and one it reads tolerantly (fenced, trailing commas) is drawn.
    """
    answer = extract_answer(completion)
    if task == "grounding":
        found = parse_grounding(answer)
        return (None, []) if found is None else (found[0], [found[1]])
    return None, [box for _, box in parse_detections(answer) or []]


def row_panels(row: dict, root: Path, prediction: str | None = None) -> list[Image.Image]:
    """One row's frames with its ground truth and, given a completion, the predicted boxes."""
    frames = [Image.open(root / p).convert("RGB") for p in row["images"]]
    k = np.asarray(row["cam2img"], dtype=np.float64)[:3, :3]
    c2g = np.asarray(row["cam2global"], dtype=np.float64)
    task = "detection" if "boxes" in row else "grounding"
    if task == "detection":  # first camera
        ref, gt = 0, [b["bbox_3d"] for b in row["boxes"]]
    else:  # grounding: the answer frame
        tgt = row.get("target") or json.loads(extract_answer(row["conversations"][1]["value"], untagged=True))
        ref, gt = int(tgt["frame"]), [tgt["bbox_3d"]]
    panels = boxes_on_frames(frames, k, c2g, ref, [(b, GT_COLOR) for b in gt])
    if prediction is not None:
        frame, pred = _predicted_boxes(prediction, task)
        pref = ref if frame is None or not 0 <= int(frame) < len(frames) else int(frame)
        panels = boxes_on_frames(panels, k, c2g, pref, [(b, PRED_COLOR) for b in pred])
    return panels


def scene_panels(root: Path, scene: str, every: int = 1) -> list[Image.Image]:
    """Every frame of a generated scene with all its objects' world boxes."""
    meta = json.loads((root / "scenes" / scene / "scene.json").read_text())
    k, c2w = np.asarray(meta["intrinsics"]), np.asarray(meta["cam2world"])
    out = []
    for i in range(0, len(c2w), every):
        im = Image.open(root / "scenes" / scene / "frames" / f"{i:05d}.png").convert("RGB")
        draw = ImageDraw.Draw(im)
        w2c = np.linalg.inv(c2w[i])
        for obj in meta["objects"]:
            draw_box(draw, box_corners(obj["bbox_3d"]) @ w2c[:3, :3].T + w2c[:3, 3], k, GT_COLOR)
        out.append(im)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="benchmark root (image paths are relative to it)")
    p.add_argument("--file", help="VG-LLM rows (.json/.jsonl) relative to --root or absolute")
    p.add_argument("--scene", help="draw a generated scene's objects on its frames instead")
    p.add_argument("--predictions", help="predictions.jsonl with id and completion")
    p.add_argument("--rows", type=int, default=4, help="rows of the file to draw (with --predictions: predicted rows)")
    p.add_argument("--start", type=int, default=0, help="first row to draw")
    p.add_argument("--max-frames", type=int, default=8, help="frames per grid row")
    p.add_argument("--out", default="boxes.png")
    a = p.parse_args(argv)
    root = Path(a.root)
    if a.scene:
        panels = scene_panels(root, a.scene)
        rows = [panels[i : i + a.max_frames] for i in range(0, len(panels), a.max_frames)]
    else:
        if not a.file:
            p.error("give --file or --scene")
        preds = {}
        if a.predictions:
            for line in Path(a.predictions).read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    preds[str(d["id"]).split("/", 1)[-1] if "/" in str(d["id"]) else str(d["id"])] = d["completion"]
                    preds[str(d["id"])] = d["completion"]
        data = load_rows(root / a.file if not Path(a.file).is_absolute() else a.file)
        if a.predictions:
            # only rows that were predicted (an evaluation may score a subset of the file)
            data = [r for r in data if str(r.get("id")) in preds]
            if not data:
                raise SystemExit(f"no row of {a.file} has a prediction in {a.predictions} (ids differ?)")
        data = data[a.start : a.start + a.rows]
        rows = [row_panels(r, root, preds.get(str(r.get("id"))))[: a.max_frames] for r in data]
    grid(rows).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
