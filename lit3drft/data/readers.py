"""Readers of the real formats: VG-LLM rows (ScanNet detection, ScanRefer grounding) and VSI-Bench rows.

Reading is two-step so that a bad row is found at setup and media are decoded only when used:
``read_records`` parses and checks every row of a file into light ``Record`` s (no pixels), and
``load_sample`` turns one record into a ``Sample`` in a given answer mode, decoding its frames.
Errors name the file and the row (``file:row``, rows counted from 0 as in sample ids; ``.jsonl`` rows add their
``(line N)``, counted from 1) and the bad key; with ``on_bad_sample="skip"`` bad rows are counted and logged.
Problems with a whole file (missing, unreadable, no rows, every row bad) are errors in both modes.
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
    depth_dir: str = ""
    """Video rows: the directory of per-frame depth maps (relative to the media root)."""
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

    def summary(self, first: int = 3) -> str:
        """``"N bad samples skipped; first: reason; reason; ..."`` (empty when nothing was skipped)."""
        if not self.count:
            return ""
        return f"{self.count} bad samples skipped; first: " + "; ".join(self.reasons[:first])


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl``, ``.json`` (a list, or a dict with ``data``) or ``.parquet`` file.

    A ``.jsonl`` line that is not JSON becomes ``{"__error__": reason}`` (so one bad line is one bad row).
    """
    return _rows_and_lines(Path(path))[0]


def _rows_and_lines(path: Path) -> tuple[list, list[int] | None]:
    """Rows and, for ``.jsonl``, the (1-based) line of each; a file that cannot be read is a ``BadSampleError``."""
    if not path.is_file():
        raise BadSampleError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records"), None
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # undecodable text, a broken parquet file (pyarrow errors are ValueErrors)
        raise BadSampleError(f"{path}: cannot read the file ({type(e).__name__}: {e})") from e
    if path.suffix == ".jsonl":
        rows, lines = [], []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except (ValueError, RecursionError) as e:
                    rows.append({"__error__": f"invalid JSON ({e})"})
                lines.append(i + 1)
        return rows, lines
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadSampleError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, dict):
        if "data" not in data:
            raise BadSampleError(f"{path}: a JSON object needs a 'data' list of rows; keys: {sorted(data)[:10]}")
        data = data["data"]
    if not isinstance(data, list):
        raise BadSampleError(f"{path}: rows must be a JSON list (or {{'data': [...]}}), got {type(data).__name__}")
    return data, None


def answer_body(text: str) -> str:
    """The answer inside ``<answer>`` tags or a ```json fence (VG-LLM), else the stripped text."""
    m = _ANSWER.search(text) or _FENCE.search(text)
    return (m.group(1) if m else text).strip()


def _get(obj: Any, key: str, where: str, name: str) -> Any:
    """``obj[key]``, or a ``BadSampleError`` naming ``name`` (the dotted key in the row) when it is missing."""
    if not isinstance(obj, dict):
        raise BadSampleError(f"{where}: {name} must be a JSON object, got {type(obj).__name__}: {str(obj)[:80]}")
    if key not in obj:
        raise BadSampleError(f"{where}: missing key '{name}.{key}'" if name else f"{where}: missing key '{key}'")
    return obj[key]


def _nested_lists(value: Any) -> Any:
    """Nested sequences as plain lists: parquet rows hold matrices as object arrays of row arrays."""
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        return [_nested_lists(v) for v in value]
    return value


def _float_array(value: Any, where: str, name: str, what: str) -> np.ndarray:
    try:
        return np.asarray(_nested_lists(value), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadSampleError(f"{where}: {name} must be {what}, got {str(value)[:80]}") from e


def _boxes(values: Any, where: str, name: str = "bbox_3d") -> list[list[float]]:
    """Ground-truth boxes: each 9 finite numbers; errors name the key (``boxes[2].bbox_3d``)."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise BadSampleError(f"{where}: {name} must be a list of boxes, got {type(values).__name__}")
    out = []
    for k, b in enumerate(values):
        key = name.format(k=k)
        b = _float_array(b, where, key, "9 finite numbers").ravel().tolist()
        if len(b) != 9 or not np.all(np.isfinite(b)):
            raise BadSampleError(f"{where}: {key} must be 9 finite numbers, got {len(b)}: {b}")
        out.append(b)
    return out


def _matrices(values: Any, n: int | None, where: str, name: str) -> list:
    m = _float_array(values, where, name, f"{n or 1} 4x4 matrices")
    if m.shape[-2:] != (4, 4) or (n is not None and (m.ndim != 3 or len(m) != n)) or (n is None and m.ndim != 2):
        raise BadSampleError(f"{where}: {name} must be {n or 1} 4x4 matrices, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise BadSampleError(f"{where}: {name} has NaN or infinite entries")
    return m.tolist()


def _detections(items: Any, where: str, name: str) -> tuple[list[str], list[list[float]]]:
    """Labels and boxes of ``[{"label": ..., "bbox_3d": [9]}, ...]`` (``name``: where the list is, for errors)."""
    if not isinstance(items, list):
        raise BadSampleError(f"{where}: {name} must be a list of {{label, bbox_3d}}, got {type(items).__name__}")
    labels = [str(_get(b, "label", where, f"{name}[{k}]")) for k, b in enumerate(items)]
    boxes = _boxes([_get(b, "bbox_3d", where, f"{name}[{k}]") for k, b in enumerate(items)], where,
                   name + "[{k}].bbox_3d")  # fmt: skip
    return labels, boxes


def _row_index(where: str, index: int | None) -> str:
    return str(index) if index is not None else where.rsplit(":", 1)[-1]


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
    body = answer_body(gpt)
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


def _intrinsics(cam2img: Any, where: str) -> list | None:
    """``cam2img`` (3x3 or 4x4, finite) as a 3x3 list, or None when the row has none."""
    if cam2img is None:
        return None
    k = _float_array(cam2img, where, "cam2img", "a 3x3 or 4x4 matrix")
    if k.shape not in ((3, 3), (4, 4)) or not np.isfinite(k).all():
        raise BadSampleError(f"{where}: cam2img must be a finite 3x3 or 4x4 matrix, got shape {k.shape}")
    return k[:3, :3].tolist()


def vsibench_record(
    row: dict, where: str, source: str, video_root: str | Path, frames: int, index: int | None = None
) -> Record:
    """Parse one VSI-Bench row; the video is ``<video_root>/<dataset>/<scene_name>.mp4``.

    Two optional fields, not in the published benchmark, give the ``depth`` geometry prior what it needs:
    ``depth_dir`` (relative to ``video_root``: one depth map per video frame, ``<frame index:05d>.png`` in
    uint16 millimetres or ``.npy`` in metres) and ``cam2img`` (3x3 or 4x4 intrinsics *of the depth maps*, at
    their resolution: the ray maps are built on the depth pixel grid; ScanNet's depth camera differs from its
    colour camera). The embedded benchmark writes both; rows without them load no depth.
    """
    if not isinstance(row, dict):
        raise BadSampleError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    try:
        qtype, question = str(row["question_type"]), str(row["question"])
        video = Path(video_root) / str(row["dataset"]) / f"{row['scene_name']}.mp4"
        gt = row["ground_truth"]
    except KeyError as e:
        raise BadSampleError(f"{where}: not a VSI-Bench row (missing {e})") from e
    if qtype not in P.QUESTION_TYPES:
        raise BadSampleError(f"{where}: unknown question_type {qtype!r}; valid: {', '.join(P.QUESTION_TYPES)}")
    if not video.is_file():
        raise BadSampleError(f"{where}: missing video {video}")
    options = row.get("options")
    if options is not None and not isinstance(options, (list, tuple, np.ndarray)):
        raise BadSampleError(f"{where}: options must be a list, got {type(options).__name__}: {str(options)[:80]}")
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
        if not np.isfinite(gt):
            raise BadSampleError(f"{where}: numerical ground_truth {gt!r} is not finite")
        answer = P.format_number(gt)
        options = None
    depth_dir = row.get("depth_dir") or ""
    if not isinstance(depth_dir, str):
        raise BadSampleError(f"{where}: depth_dir must be a path, got {type(depth_dir).__name__}")
    intrinsics = _intrinsics(row.get("cam2img"), where)
    if bool(depth_dir) != (intrinsics is not None):
        raise BadSampleError(f"{where}: depth_dir and cam2img go together (the depth prior needs both)")
    meta = {"source": source, "file": where.rsplit(":", 1)[0], "dataset": str(row["dataset"]),
            "scene_name": str(row["scene_name"]), "question_type": qtype}  # fmt: skip
    return Record(
        id=f"{source}/{row.get('id', _row_index(where, index))}", task="spatial", prompt=P.vsi_prompt(question, options),
        answer=answer, think=str(row.get("think") or ""),
        target={"question_type": qtype, "ground_truth": gt, "options": options}, video=str(video),
        num_frames=frames, depth_dir=depth_dir, intrinsics=intrinsics, meta=meta,
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
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; valid: error, skip")
    skipped = skipped if skipped is not None else SkipCounter()
    records, bad = [], SkipCounter()
    rows, lines = _rows_and_lines(Path(path))
    if not rows:
        raise BadSampleError(f"{path}: no rows (empty file)")
    if fmt == "vsibench" and task != "spatial":
        raise BadSampleError(f"{path}: VSI-Bench rows are spatial questions, not {task!r}")
    for i, row in enumerate(rows):
        where = f"{path}:{i}" + (f" (line {lines[i]})" if lines else "")
        try:
            if not isinstance(row, dict):
                raise BadSampleError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
            if "__error__" in row:
                raise BadSampleError(f"{where}: {row['__error__']}")
            if fmt == "vgllm":
                records.append(vgllm_record(row, task, where, source, media_root, index=i))
            else:
                records.append(vsibench_record(row, where, source, media_root, frames, index=i))
        except (BadSampleError, KeyError, TypeError, ValueError, IndexError) as e:
            err = e if isinstance(e, BadSampleError) else BadSampleError(f"{where}: {type(e).__name__}: {e}")
            if on_bad_sample != "skip":
                raise err from e
            bad.add(err)
    if bad.count == len(rows):  # nothing usable: a wrong media_root or format, not a few bad rows
        raise BadSampleError(f"{path}: all {len(rows)} rows are bad; first: " + "; ".join(bad.reasons[:3]))
    skipped.count += bad.count
    skipped.reasons += bad.reasons[: max(0, 20 - len(skipped.reasons))]
    if bad.count:
        log.warning("%s: %s", path, bad.summary())
    return records


def sample_video_frames(path: str, n: int) -> tuple[list[Image.Image], list[int]]:
    """``n`` frames sampled uniformly (first and last included) with decord, and their indices."""
    import decord

    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        if len(vr) == 0:
            raise ValueError("no frames")
        idx = np.linspace(0, len(vr) - 1, n).round().astype(int).tolist()
        arr = vr.get_batch(idx).asnumpy()
    except Exception as e:  # decord raises its own DECORDError and RuntimeError
        raise BadSampleError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    return [Image.fromarray(a) for a in arr], idx


def _read_media(path: Path, where: str, read: Any) -> Any:
    """``read(path)``; any failure (missing, truncated, not an image) is a ``BadSampleError`` naming the file."""
    try:
        return read(path)
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError...
        raise BadSampleError(f"{where}: cannot read {path} ({type(e).__name__}: {e})") from e


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _read_depth(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    return np.asarray(Image.open(path), dtype=np.float32) / 1000.0  # uint16 millimetres (ScanNet)


def _video_depth_path(directory: Path, frame: int) -> Path:
    """``<directory>/<frame:05d>.png``, or ``.npy`` when only that exists (the error then names the ``.png``)."""
    png = directory / f"{frame:05d}.png"
    npy = png.with_suffix(".npy")
    return npy if not png.exists() and npy.exists() else png


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
    where = f"{meta.get('file')}: sample {rec.id}"
    if rec.video:
        try:
            frames, idx = sample_video_frames(rec.video, rec.num_frames)
        except BadSampleError as e:
            raise BadSampleError(f"{where}: {e}") from e
        meta["frame_indices"] = idx
    else:
        frames = [_read_media(root / p, where, _read_rgb) for p in rec.images]
    depth = [_read_media(root / p, where, _read_depth) for p in rec.depths] if load_depth and rec.depths else None
    if load_depth and rec.video and rec.depth_dir:
        depth = [_read_media(_video_depth_path(root / rec.depth_dir, i), where, _read_depth) for i in idx]
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
