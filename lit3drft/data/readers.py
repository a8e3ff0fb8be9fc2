"""Readers of the real formats: VG-LLM rows (ScanNet detection, ScanRefer grounding) and VSI-Bench rows.

Reading is two-step so that a bad row is found at setup and media are decoded only when used:
``read_records`` parses and checks every row of a file into light ``Record`` s (no pixels), and
``load_sample`` turns one record into a ``Sample`` in a given answer mode, decoding its frames.
Errors name the file and the row; with ``on_bad_sample="skip"`` bad rows are counted and logged.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lit3drft.data import prompts as P
from lit3drft.data.sample import TASKS, Sample

log = logging.getLogger(__name__)

_FRAME_TAG = re.compile(r"(Frame-\d+:\s*)?" + re.escape(P.IMAGE_TOKEN))
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class BadSampleError(ValueError):
    """A row that cannot become a sample; the message names the file and the row."""


@dataclass
class Record:
    """One parsed, checked row: everything but the pixels."""

    id: str
    task: str
    prompt: str
    """Task prompt without the mode instruction."""
    answer: str
    """Answer body (inside ``<answer>``)."""
    think: str
    target: dict[str, Any]
    images: list[str] = field(default_factory=list)
    depths: list[str] = field(default_factory=list)
    video: str = ""
    num_frames: int = 0
    frame_labels: list[str] | None = None
    intrinsics: list | None = None
    cam2world: list | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class SkipCounter:
    """Bad rows skipped so far (per reader or dataset), with the first few reasons."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, err: Exception) -> None:
        self.count += 1
        if len(self.reasons) < 20:
            self.reasons.append(str(err))
        log.warning("skipping bad sample (%d so far): %s", self.count, err)


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl``, ``.json`` (a list, or a dict with ``data``) or ``.parquet`` file."""
    path = Path(path)
    if not path.exists():
        raise BadSampleError(f"{path}: file not found")
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    text = path.read_text()
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append({"__error__": f"invalid JSON ({e})", "__line__": i})
        return rows
    data = json.loads(text)
    return data["data"] if isinstance(data, dict) else data


def answer_body(text: str) -> str:
    """The answer inside ``<answer>`` tags or a ```json fence (VG-LLM), else the stripped text."""
    m = _ANSWER.search(text) or _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def _boxes(values: Any, where: str) -> list[list[float]]:
    out = []
    for b in values:
        b = [float(x) for x in np.asarray(b, dtype=np.float64).ravel()]
        if len(b) != 9 or not np.all(np.isfinite(b)):
            raise BadSampleError(f"{where}: bbox_3d must be 9 finite numbers, got {len(b)}: {b}")
        out.append(b)
    return out


def _matrices(values: Any, n: int | None, where: str, name: str) -> list:
    m = np.asarray(values, dtype=np.float64)
    if m.shape[-2:] != (4, 4) or (n is not None and (m.ndim != 3 or len(m) != n)):
        raise BadSampleError(f"{where}: {name} must be {n or 1} 4x4 matrices, got shape {m.shape}")
    return m.tolist()


def vgllm_record(row: dict, task: str, where: str, source: str, media_root: str | Path) -> Record:
    """Parse one VG-LLM row (detection or grounding)."""
    if task not in ("detection", "grounding"):
        raise BadSampleError(f"{where}: task {task!r} cannot be read from VG-LLM rows; valid: detection, grounding")
    try:
        human = next(t["value"] for t in row["conversations"] if t["from"] == "human")
        gpt = next((t["value"] for t in row["conversations"] if t["from"] == "gpt"), "")
        images = list(row["images"])
    except (KeyError, StopIteration, TypeError) as e:
        raise BadSampleError(f"{where}: not a VG-LLM row (missing {e})") from e
    labels = [m.group(1).strip() + " " if m.group(1) else None for m in _FRAME_TAG.finditer(human)]
    if len(labels) != len(images):
        raise BadSampleError(f"{where}: {len(labels)} {P.IMAGE_TOKEN} tokens for {len(images)} images")
    prompt = _FRAME_TAG.sub("", human).strip()
    root = Path(media_root)
    for p in images + list(row.get("depths") or []):
        if not (root / p).exists():
            raise BadSampleError(f"{where}: missing file {root / p}")
    body = answer_body(gpt)
    k = None
    cam2img = row.get("cam2img")
    align = row.get("axis_align_matrix", np.eye(4).tolist())
    cam2global = row.get("cam2global")
    if task == "detection":
        if "boxes" in row:
            labels_ = [str(b["label"]) for b in row["boxes"]]
            boxes = _boxes([b["bbox_3d"] for b in row["boxes"]], where)
        else:
            parsed = _json(body, where)
            labels_, boxes = [str(b["label"]) for b in parsed], _boxes([b["bbox_3d"] for b in parsed], where)
        target = {"boxes": boxes, "labels": labels_}
    else:
        tgt = row.get("target") or _json(body, where)
        k = int(tgt["frame"])
        if not 0 <= k < len(images):
            raise BadSampleError(f"{where}: answer frame {k} outside the {len(images)} frames")
        if cam2global is None:
            raise BadSampleError(f"{where}: grounding rows need cam2global (one 4x4 per frame)")
        target = {"frame": k, "bbox_3d": _boxes([tgt["bbox_3d"]], where)[0],
                  "cam2global": _matrices(cam2global, len(images), where, "cam2global"),
                  "axis_align_matrix": _matrices(align, None, where, "axis_align_matrix")}  # fmt: skip
    cam2world = None
    if cam2global is not None:
        c2g = np.asarray(_matrices(cam2global, len(images), where, "cam2global"))
        cam2world = (np.asarray(align, dtype=np.float64) @ c2g).tolist()
    meta = {"source": source, "file": where.rsplit(":", 1)[0], **(row.get("metadata") or {})}
    return Record(
        id=f"{source}/{row.get('id', where.rsplit(':', 1)[-1])}", task=task, prompt=prompt, answer=body,
        think=str(row.get("think") or ""), target=target, images=images, depths=list(row.get("depths") or []),
        frame_labels=labels if all(labels) else None,
        intrinsics=None if cam2img is None else np.asarray(cam2img, dtype=np.float64)[:3, :3].tolist(),
        cam2world=cam2world, meta=meta,
    )  # fmt: skip


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadSampleError(f"{where}: answer is not JSON ({e}): {text[:80]!r}") from e


def vsibench_record(row: dict, where: str, source: str, video_root: str | Path, frames: int) -> Record:
    """Parse one VSI-Bench row; the video is ``<video_root>/<dataset>/<scene_name>.mp4``."""
    try:
        qtype, question = str(row["question_type"]), str(row["question"])
        video = Path(video_root) / str(row["dataset"]) / f"{row['scene_name']}.mp4"
        gt = row["ground_truth"]
    except KeyError as e:
        raise BadSampleError(f"{where}: not a VSI-Bench row (missing {e})") from e
    if qtype not in P.QUESTION_TYPES:
        raise BadSampleError(f"{where}: unknown question_type {qtype!r}; valid: {', '.join(P.QUESTION_TYPES)}")
    if not video.exists():
        raise BadSampleError(f"{where}: missing video {video}")
    options = row.get("options")
    options = None if options is None or len(options) == 0 else [str(o) for o in options]
    if qtype in P.MULTIPLE_CHOICE_QUESTION_TYPES:
        gt = str(gt).strip()
        if options is None or gt not in P.OPTION_LETTERS[: len(options)]:
            raise BadSampleError(f"{where}: multiple-choice ground_truth {gt!r} does not name one of the options")
        answer = gt
    else:
        try:
            gt = float(gt)
        except (TypeError, ValueError) as e:
            raise BadSampleError(f"{where}: numerical ground_truth {gt!r} is not a number") from e
        answer = P.format_number(gt)
        options = None
    meta = {"source": source, "file": where.rsplit(":", 1)[0], "dataset": str(row["dataset"]),
            "scene_name": str(row["scene_name"]), "question_type": qtype}  # fmt: skip
    return Record(
        id=f"{source}/{row.get('id', where.rsplit(':', 1)[-1])}", task="spatial", prompt=P.vsi_prompt(question, options),
        answer=answer, think=str(row.get("think") or ""),
        target={"question_type": qtype, "ground_truth": gt, "options": options}, video=str(video),
        num_frames=frames, meta=meta,
    )  # fmt: skip


def read_records(
    path: str | Path,
    task: str,
    fmt: str,
    source: str,
    media_root: str | Path,
    frames: int = 16,
    on_bad_sample: str = "error",
    skipped: SkipCounter | None = None,
) -> list[Record]:
    """Parse and check every row of one task file (no media decoded)."""
    if task not in TASKS:
        raise BadSampleError(f"{path}: unknown task {task!r}; valid: {', '.join(TASKS)}")
    if fmt not in ("vgllm", "vsibench"):
        raise BadSampleError(f"{path}: unknown row format {fmt!r}; valid: vgllm, vsibench")
    skipped = skipped if skipped is not None else SkipCounter()
    records = []
    for i, row in enumerate(load_rows(path)):
        where = f"{path}:{i}"
        try:
            if "__error__" in row:
                raise BadSampleError(f"{where}: {row['__error__']}")
            if fmt == "vgllm":
                records.append(vgllm_record(row, task, where, source, media_root))
            else:
                if task != "spatial":
                    raise BadSampleError(f"{where}: VSI-Bench rows are spatial questions, not {task!r}")
                records.append(vsibench_record(row, where, source, media_root, frames))
        except (BadSampleError, KeyError, TypeError, ValueError) as e:
            err = e if isinstance(e, BadSampleError) else BadSampleError(f"{where}: {type(e).__name__}: {e}")
            if on_bad_sample != "skip":
                raise err from e
            skipped.add(err)
    return records


def sample_video_frames(path: str, n: int) -> tuple[list[Image.Image], list[int]]:
    """``n`` frames sampled uniformly (first and last included) with decord, and their indices."""
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        idx = np.linspace(0, len(vr) - 1, n).round().astype(int).tolist()
        arr = vr.get_batch(idx).asnumpy()
    except Exception as e:  # decord raises its own DECORDError and RuntimeError
        raise BadSampleError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    return [Image.fromarray(a) for a in arr], idx


def _read_depth(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    return np.asarray(Image.open(path), dtype=np.float32) / 1000.0  # uint16 millimetres (ScanNet)


def load_sample(
    rec: Record,
    mode: str,
    media_root: str | Path,
    image_size: list[int] | None = None,
    load_depth: bool = False,
    id_suffix: str = "",
) -> Sample:
    """Decode a record's frames and build the ``Sample`` for answer ``mode`` (``da`` or ``ta``)."""
    root = Path(media_root)
    meta = dict(rec.meta)
    try:
        if rec.video:
            frames, idx = sample_video_frames(rec.video, rec.num_frames)
            meta["frame_indices"] = idx
        else:
            frames = []
            for p in rec.images:
                with Image.open(root / p) as im:
                    frames.append(im.convert("RGB"))
        depth = [_read_depth(root / p) for p in rec.depths] if load_depth and rec.depths else None
    except BadSampleError:
        raise
    except Exception as e:
        raise BadSampleError(f"{meta.get('file')}: row {rec.id}: cannot read media ({type(e).__name__}: {e})") from e
    if image_size:
        frames = [f.resize(tuple(image_size), Image.BILINEAR) for f in frames]
    target = {"task": rec.task, "mode": mode, **rec.target}
    return Sample(
        id=rec.id + id_suffix, task=rec.task, frames=frames, prompt=P.full_prompt(rec.prompt, mode),
        answer=P.format_answer(rec.answer, mode, rec.think), target=target, mode=mode,
        frame_labels=rec.frame_labels, depth=depth,
        intrinsics=None if rec.intrinsics is None else np.asarray(rec.intrinsics),
        cam2world=None if rec.cam2world is None else np.asarray(rec.cam2world), meta=meta,
    )  # fmt: skip
