"""Media of a record: video frames (decord), RGB images and depth maps, decoded into a ``Sample``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lit3drft.data import prompts as P
from lit3drft.data.records import BadSampleError, Record
from lit3drft.data.sample import Sample


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


def _read_pose(path: Path) -> np.ndarray:
    """A 4x4 camera-to-world text file (ScanNet's ``pose/<frame>.txt``); a non-finite one (ScanNet marks lost
    tracking with ``-inf``) or another shape is refused."""
    pose = np.loadtxt(path, dtype=np.float64)
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise ValueError(f"not a finite 4x4 camera-to-world pose (shape {pose.shape})")
    return pose


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
    cam2world = None if rec.cam2world is None else np.asarray(rec.cam2world)
    if load_depth and rec.video and rec.depth_dir:
        depth = [_read_media(_video_depth_path(root / rec.depth_dir, i), where, _read_depth) for i in idx]
        if rec.pose_dir:
            cam2world = np.stack([_read_media(root / rec.pose_dir / f"{i:05d}.txt", where, _read_pose) for i in idx])
    if image_size:
        frames = [f.resize(tuple(image_size), Image.BILINEAR) for f in frames]
    target = {"task": rec.task, "mode": mode, **rec.target}
    return Sample(
        id=rec.id + id_suffix, task=rec.task, frames=frames, prompt=P.full_prompt(rec.prompt, mode),
        answer=P.format_answer(rec.answer, mode, rec.think), target=target, mode=mode,
        frame_labels=rec.frame_labels, depth=depth,
        intrinsics=None if rec.intrinsics is None else np.asarray(rec.intrinsics),
        cam2world=cam2world, meta=meta,
    )  # fmt: skip
