"""Reward configuration (composed into the run schema by ``lit3drft/config.py``)."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Literal


@dataclass
class RewardConfig:
    """Weights and options of the verifiable rewards; ``total = format_weight · format + task_weight · task``."""

    format_weight: float = 1.0
    """Weight of the format reward (tags present, answer parses) in the total."""
    task_weight: float = 1.0
    """Weight of the task reward (detection / grounding / spatial, by ``target["task"]``) in the total."""
    detection_iou_weight: float = 1.0
    """Weight of the mean best IoU inside the detection reward (0 disables it)."""
    detection_f1_weight: float = 1.0
    """Weight of F1 at ``detection_iou_threshold`` inside the detection reward (0 disables it)."""
    detection_iou_threshold: float = 0.25
    """IoU above which a matched prediction is a true positive (VG-LLM: > 0.25)."""
    matching: Literal["greedy", "hungarian"] = "greedy"
    """Prediction-to-ground-truth matching: VG-LLM's greedy rule in output order, or Hungarian."""
    grounding_frame_tolerance: float = 5.0
    """Frames of error at which the grounding frame reward ``max(0, 1 - |f - f*| / tol)`` reaches 0."""
    grounding_frame_weight: float = 1.0
    """Weight of the frame reward inside the grounding reward."""
    grounding_iou_weight: float = 1.0
    """Weight of the world-frame IoU inside the grounding reward."""
    spatial_numeric: Literal["mra", "mra_strict", "linear"] = "mra"
    """Numeric spatial answers: ``mra`` (VSI-Bench's MRA exactly as its official evaluation code computes it),
    ``mra_strict`` (the paper's written form with ``<``) or the paper's linear ``max(0, 1 - |y - y*| / |y*|)``."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            choices = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) is Literal else ()
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ValueError(f"RewardConfig.{f.name}={value!r} is not valid; choose one of {list(choices)}")
            if not choices and isinstance(value, (int, float)) and not 0 <= value < math.inf:
                raise ValueError(f"RewardConfig.{f.name} must be finite and >= 0, got {value}")
        if self.grounding_frame_tolerance <= 0:
            raise ValueError(
                f"RewardConfig.grounding_frame_tolerance must be > 0, got {self.grounding_frame_tolerance}"
            )

    def options(self, reward: str) -> dict[str, object]:
        """Keyword options of one registered reward, as its function takes them."""
        options = {
            "format": {},
            "detection": {
                "iou_weight": self.detection_iou_weight,
                "f1_weight": self.detection_f1_weight,
                "iou_threshold": self.detection_iou_threshold,
                "matching": self.matching,
            },
            "grounding": {
                "frame_tolerance": self.grounding_frame_tolerance,
                "frame_weight": self.grounding_frame_weight,
                "iou_weight": self.grounding_iou_weight,
            },
            "spatial": {"numeric": self.spatial_numeric},
        }
        if reward not in options:
            raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(options)}")
        return options[reward]
