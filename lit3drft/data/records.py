"""What a parsed row is (``Record``), how a bad one is reported, and the checks the row formats share.

Errors name the file and the row (``where``: ``file:row``, ``.jsonl`` rows add their ``(line N)``) and the bad
key, as ``BadSampleError`` s; ``SkipCounter`` counts the rows skipped with ``on_bad_sample="skip"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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
    pose_dir: str = ""
    """Video rows: the directory of per-frame camera-to-world poses, ``<frame:05d>.txt`` (relative to the media root)."""
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


def _row_index(where: str, index: int | None) -> str:
    return str(index) if index is not None else where.rsplit(":", 1)[-1]


def _intrinsics(cam2img: Any, where: str) -> list | None:
    """``cam2img`` (3x3 or 4x4, finite) as a 3x3 list, or None when the row has none."""
    if cam2img is None:
        return None
    k = _float_array(cam2img, where, "cam2img", "a 3x3 or 4x4 matrix")
    if k.shape not in ((3, 3), (4, 4)) or not np.isfinite(k).all():
        raise BadSampleError(f"{where}: cam2img must be a finite 3x3 or 4x4 matrix, got shape {k.shape}")
    return k[:3, :3].tolist()
