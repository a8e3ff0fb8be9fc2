"""Verifiable rewards and the benchmark metrics computed from the same code (see DESIGN.md)."""

from lit3drft.rewards.box_geometry import box3d_corners, euler_to_matrix, matrix_to_euler, transform_boxes
from lit3drft.rewards.boxes import box3d_iou, box3d_overlap
from lit3drft.rewards.config import RewardConfig
from lit3drft.rewards.detection import DetectionF1, detection_counts, detection_reward
from lit3drft.rewards.format import FormatRate, answer_parses, format_reward, format_scores
from lit3drft.rewards.grounding import GroundingAccuracy, grounding_reward, grounding_scores
from lit3drft.rewards.matching import match_detections, match_iou_matrix
from lit3drft.rewards.parsing import (
    extract_answer,
    extract_think,
    has_format,
    parse_answer,
    parse_detections,
    parse_grounding,
    parse_json,
    parse_number,
    parse_option,
)
from lit3drft.rewards.registry import REWARDS, RewardOutput, get_reward, score_completions
from lit3drft.rewards.spatial import (
    QUESTION_TYPES,
    SpatialScore,
    linear_accuracy,
    mean_relative_accuracy,
    spatial_reward,
    spatial_scores,
)
from lit3drft.rewards.task_metrics import TaskMetrics

__all__ = [
    "QUESTION_TYPES",
    "REWARDS",
    "DetectionF1",
    "FormatRate",
    "GroundingAccuracy",
    "RewardConfig",
    "RewardOutput",
    "SpatialScore",
    "TaskMetrics",
    "answer_parses",
    "box3d_corners",
    "box3d_iou",
    "box3d_overlap",
    "detection_counts",
    "detection_reward",
    "euler_to_matrix",
    "extract_answer",
    "extract_think",
    "format_reward",
    "format_scores",
    "get_reward",
    "grounding_reward",
    "grounding_scores",
    "has_format",
    "parse_answer",
    "linear_accuracy",
    "match_detections",
    "match_iou_matrix",
    "matrix_to_euler",
    "mean_relative_accuracy",
    "parse_detections",
    "parse_grounding",
    "parse_json",
    "parse_number",
    "parse_option",
    "score_completions",
    "spatial_reward",
    "spatial_scores",
    "transform_boxes",
]
