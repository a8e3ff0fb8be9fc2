"""A very small tiny preset (about 0.3M parameters) built once per session in a temporary cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lit3drft.data.sample import Sample
from lit3drft.models import ModelConfig, build_policy

os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)

SMALL = dict(tiny_hidden_size=64, tiny_layers=2, tiny_heads=2, tiny_intermediate_size=128,
             tiny_vision_hidden_size=64, tiny_vision_depth=1, tiny_vocab_size=512)  # fmt: skip


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lit3drft-cache"))


@pytest.fixture(scope="session")
def make_cfg(cache_dir):
    def make(**overrides) -> ModelConfig:
        return ModelConfig(**{**SMALL, "cache_dir": cache_dir, **overrides})

    return make


@pytest.fixture(scope="session")
def lora_policy(make_cfg):
    torch.manual_seed(0)
    return build_policy(make_cfg()).eval()


def _make_sample(
    i: int, frames: int = 2, size: int = 56, labels: bool = False, answer: str = "<answer>3</answer>"
) -> Sample:
    rng = np.random.default_rng(i)
    k = np.array([[40.0, 0, size / 2], [0, 40.0, size / 2], [0, 0, 1]])
    return Sample(
        id=f"test/{i}",
        task="spatial",
        frames=[Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(frames)],
        prompt="How many chairs are in the room?" + " Look closely." * i,
        answer=answer,
        target={"task": "spatial", "mode": "da"},
        frame_labels=[f"Frame-{j}: " for j in range(frames)] if labels else None,
        depth=[rng.uniform(0.5, 5.0, (size, size)).astype(np.float32) for _ in range(frames)],
        intrinsics=k,
        cam2world=_walking_poses(rng, frames),
    )


def _walking_poses(rng: np.random.Generator, frames: int) -> np.ndarray:
    """``(frames, 4, 4)`` camera-to-world poses of a camera that moves (translations only)."""
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, :3, 3] = rng.normal(0, 0.3, (frames, 3))
    return poses


@pytest.fixture(scope="session")
def make_sample():
    """Factory: ``make_sample(i, frames=2, size=56, labels=False)`` -> a random spatial ``Sample``."""
    return _make_sample


@pytest.fixture
def samples() -> list[Sample]:
    return [_make_sample(0), _make_sample(1, labels=True)]


@pytest.fixture(scope="session")
def perturb_lora():
    """Factory: ``perturb_lora(policy, seed)`` randomises the LoRA B matrices."""
    return _perturb_lora


def _perturb_lora(policy, seed: int = 0, scale: float = 0.5) -> None:
    """Give the LoRA B matrices (zero at init) random values, so the adapter changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
