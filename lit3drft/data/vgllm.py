"""VG-LLM rows: ScanNet detection and ScanRefer grounding (``conversations`` + ``images`` + camera matrices)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from lit3drft.data import prompts as P
from lit3drft.data.records import BadSampleError, Record, _boxes, _get, _intrinsics, _matrices, _row_index
from lit3drft.rewards.parsing import extract_answer

_FRAME_TAG = re.compile(r"(Frame-\d+:\s*)?" + re.escape(P.IMAGE_TOKEN))


def _detections(items: Any, where: str, name: str) -> tuple[list[str], list[list[float]]]:
    """Labels and boxes of ``[{"label": ..., "bbox_3d": [9]}, ...]`` (``name``: where the list is, for errors)."""
    if not isinstance(items, list):
        raise BadSampleError(f"{where}: {name} must be a list of {{label, bbox_3d}}, got {type(items).__name__}")
    labels = [str(_get(b, "label", where, f"{name}[{k}]")) for k, b in enumerate(items)]
    boxes = _boxes([_get(b, "bbox_3d", where, f"{name}[{k}]") for k, b in enumerate(items)], where,
                   name + "[{k}].bbox_3d")  # fmt: skip
    return labels, boxes


def vgllm_record(
    row: dict, task: str, where: str, source: str, media_root: str | Path, index: int | None = None
) -> Record:
    """Parse one VG-LLM row (detection or grounding); ``index``: the row's position (default: after ``where``'s colon)."""
    if task not in ("detection", "grounding"):
        raise BadSampleError(f"{where}: task {task!r} cannot be read from VG-LLM rows; valid: detection, grounding")
    try:
        human = next(t["value"] for t in row["conversations"] if t["from"] == "human")
        gpt = next((t["value"] for t in row["conversations"] if t["from"] == "gpt"), "")
        images = row["images"]
    except (KeyError, StopIteration, TypeError) as e:
        raise BadSampleError(f"{where}: not a VG-LLM row (missing {e})") from e
    if not isinstance(human, str) or not isinstance(gpt, str):
        raise BadSampleError(f"{where}: conversations[].value must be text")
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise BadSampleError(f"{where}: images must be a list of paths, got {str(images)[:80]}")
    depths = row.get("depths") or []
    if not isinstance(depths, list) or not all(isinstance(p, str) for p in depths):
        raise BadSampleError(f"{where}: depths must be a list of paths, got {str(depths)[:80]}")
    labels = [m.group(1).strip() + " " if m.group(1) else None for m in _FRAME_TAG.finditer(human)]
    if len(labels) != len(images):
        raise BadSampleError(f"{where}: {len(labels)} {P.IMAGE_TOKEN} tokens for {len(images)} images")
    prompt = _FRAME_TAG.sub("", human).strip()
    root = Path(media_root)
    for p in images + depths:
        if not (root / p).is_file():
            raise BadSampleError(f"{where}: missing file {root / p}")
    body = extract_answer(gpt, untagged=True)  # VG-LLM's own rows fence the JSON, ours tag it
    k = None
    cam2img = row.get("cam2img")
    align = row.get("axis_align_matrix", np.eye(4).tolist())
    cam2global = row.get("cam2global")
    if task == "detection":
        if "boxes" in row:
            labels_, boxes = _detections(row["boxes"], where, "boxes")
        else:
            labels_, boxes = _detections(_json(body, where), where, "answer")
        target = {"boxes": boxes, "labels": labels_}
    else:
        name = "target" if row.get("target") else "answer"
        tgt = row.get("target") or _json(body, where)
        k = _get(tgt, "frame", where, name)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or (isinstance(k, float) and not k.is_integer()):
            raise BadSampleError(f"{where}: {name}.frame must be a frame index, got {k!r}")
        k = int(k)
        if not 0 <= k < len(images):
            raise BadSampleError(f"{where}: answer frame {k} outside the {len(images)} frames")
        if cam2global is None:
            raise BadSampleError(f"{where}: grounding rows need cam2global (one 4x4 per frame)")
        target = {"frame": k, "bbox_3d": _boxes([_get(tgt, "bbox_3d", where, name)], where, f"{name}.bbox_3d")[0],
                  "cam2global": _matrices(cam2global, len(images), where, "cam2global"),
                  "axis_align_matrix": _matrices(align, None, where, "axis_align_matrix")}  # fmt: skip
    cam2world = None
    if cam2global is not None:
        c2g = np.asarray(_matrices(cam2global, len(images), where, "cam2global"))
        cam2world = (np.asarray(_matrices(align, None, where, "axis_align_matrix")) @ c2g).tolist()
    intrinsics = _intrinsics(cam2img, where)
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadSampleError(f"{where}: metadata must be a JSON object, got {type(metadata).__name__}")
    meta = {"source": source, "file": where.rsplit(":", 1)[0], **metadata}
    return Record(
        id=f"{source}/{row.get('id', _row_index(where, index))}", task=task, prompt=prompt, answer=body,
        think=str(row.get("think") or ""), target=target, images=images, depths=depths,
        frame_labels=labels if all(labels) else None, intrinsics=intrinsics, cam2world=cam2world, meta=meta,
    )  # fmt: skip


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadSampleError(f"{where}: answer is not JSON ({e}): {text[:80]!r}") from e
