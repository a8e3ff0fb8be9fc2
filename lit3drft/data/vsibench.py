"""VSI-Bench rows: spatial questions about a scene video (``question_type``, ``options``, ``ground_truth``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lit3drft.data import prompts as P
from lit3drft.data.records import BadSampleError, Record, _intrinsics, _row_index


def vsibench_record(
    row: dict, where: str, source: str, video_root: str | Path, frames: int, index: int | None = None
) -> Record:
    """Parse one VSI-Bench row; the video is ``<video_root>/<dataset>/<scene_name>.mp4``.

    Two optional fields, not in the published benchmark, give the ``depth`` geometry prior what it needs:
    ``depth_dir`` (relative to ``video_root``: one depth map per video frame, ``<frame index:05d>.png`` in
    uint16 millimetres or ``.npy`` in metres) and ``cam2img`` (3x3 or 4x4 intrinsics *of the depth maps*, at
    their resolution: the ray maps are built on the depth pixel grid; ScanNet's depth camera differs from its
    colour camera). A third, ``pose_dir`` (beside ``depth_dir``: ``<frame index:05d>.txt``, a 4x4 camera-to-world
    pose as ScanNet's ``pose/`` files), gives the ``points`` prior the frames' poses. The embedded benchmark writes
    all three; rows without them load no depth (or no poses).
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
    pose_dir = row.get("pose_dir") or ""
    if not isinstance(pose_dir, str) or (pose_dir and not depth_dir):
        raise BadSampleError(f"{where}: pose_dir must be a path beside depth_dir, got {pose_dir!r}")
    meta = {"source": source, "file": where.rsplit(":", 1)[0], "dataset": str(row["dataset"]),
            "scene_name": str(row["scene_name"]), "question_type": qtype}  # fmt: skip
    return Record(
        id=f"{source}/{row.get('id', _row_index(where, index))}", task="spatial", prompt=P.vsi_prompt(question, options),
        answer=answer, think=str(row.get("think") or ""),
        target={"question_type": qtype, "ground_truth": gt, "options": options}, video=str(video),
        num_frames=frames, depth_dir=depth_dir, pose_dir=pose_dir, intrinsics=intrinsics, meta=meta,
    )  # fmt: skip
