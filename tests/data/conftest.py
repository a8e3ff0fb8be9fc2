"""A tiny embedded benchmark generated once per test session (a few seconds)."""

from __future__ import annotations

import pytest

from lit3drft.data.config import SynthConfig
from lit3drft.data.synth import generate

TINY = SynthConfig(
    scenes=5, seed=7, frames=16, min_objects=4, max_objects=8, grounding_frames=[8, 16], detection_clips_per_scene=2,
    grounding_per_scene=2, detection_stride=2,
)  # fmt: skip


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """(root, manifest) of a 5-scene benchmark."""
    root = tmp_path_factory.mktemp("synth3d")
    manifest = generate(TINY, root, progress=False)
    return root, manifest
