"""The one sample type shared by every task, reader and the synthetic generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

TASKS = ("detection", "grounding", "spatial")
MODES = ("da", "ta")  # direct answer / think-then-answer


@dataclass
class Sample:
    """One prompt with its frames, its SFT answer and the metadata its reward needs.

    ``target`` is the reward contract (see ``lit3drft.rewards``): ``task`` and ``mode`` always; detection
    ``boxes`` (list of 9 floats, first camera's frame) and ``labels``; grounding ``frame``, ``bbox_3d``
    (camera frame of ``frame``), ``cam2global`` (one 4x4 per frame) and ``axis_align_matrix``; spatial
    ``question_type``, ``ground_truth`` (option letter or number) and ``options``.
    """

    id: str
    """Stable unique id, ``<source>/<row>``; prediction files are keyed by it."""
    task: str
    """One of ``TASKS``."""
    frames: list[Image.Image]
    """RGB frames in temporal order."""
    prompt: str
    """User text after the frames (question plus output-format instruction)."""
    answer: str
    """Target completion for SFT, with the tags of ``mode``."""
    target: dict[str, Any]
    """Reward metadata (the reward contract above)."""
    mode: str = "da"
    """``da`` (direct answer) or ``ta`` (think, then answer)."""
    frame_labels: list[str] | None = None
    """Text placed before each frame (``"Frame-3: "`` for grounding), or None."""
    depth: list[np.ndarray] | None = None
    """Per-frame depth in metres, ``(H, W)`` float32, when the source has it (geometry prior)."""
    intrinsics: np.ndarray | None = None
    """``(3, 3)`` pinhole intrinsics of the frames as given (before any resize)."""
    cam2world: np.ndarray | None = None
    """``(F, 4, 4)`` camera-to-world matrices (OpenCV camera convention)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping in predictions (scene name, source file, row)."""
