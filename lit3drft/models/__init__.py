"""Policy layer: checkpoints (local or the offline tiny preset), LoRA/QLoRA/full FT, geometry prior, generation."""

from lit3drft.models.build import build_policy, export_pretrained
from lit3drft.models.config import ModelConfig
from lit3drft.models.generation import Rollout
from lit3drft.models.policy import Policy

__all__ = ["ModelConfig", "Policy", "Rollout", "build_policy", "export_pretrained"]
