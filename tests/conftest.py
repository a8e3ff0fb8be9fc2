"""Session fixtures: a tiny embedded benchmark (a few seconds) and overrides that shrink a run to seconds."""

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


SMALL_MODEL = [
    "model.tiny_hidden_size=64", "model.tiny_layers=2", "model.tiny_heads=2", "model.tiny_intermediate_size=128",
    "model.tiny_vision_hidden_size=64", "model.tiny_vision_depth=1", "model.tiny_vocab_size=512",
]  # fmt: skip
"""The tests' tiny preset (about 0.3M parameters): the same code path as the 8M default, built in ~1 s."""


@pytest.fixture(scope="session")
def run_overrides(bench, tmp_path_factory) -> list[str]:
    """Dotted overrides that shrink any experiment to a seconds-long run on the session's benchmark."""
    root, _ = bench
    cache = tmp_path_factory.mktemp("model-cache")
    return [
        f"data.root={root}",
        "data.generate=false",
        "data.max_eval_samples=2",
        "data.batch_size=2",
        "data.eval_batch_size=4",
        f"model.cache_dir={cache}",
        "model.preset=tiny",  # the embedded experiments load the pretrained base; tests build a smaller random one
        "model.pretrained=",
        *SMALL_MODEL,
        "eval.max_new_tokens=16",
        "grpo.max_new_tokens=12",
        "grpo.num_generations=2",
        "grpo.micro_batch_size=2",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]


@pytest.fixture
def extra_callbacks(monkeypatch):
    """``extra_callbacks(*callbacks)``: every Trainer that ``fit.build_trainer`` makes from then on also gets these
    callbacks (a later call replaces the earlier ones)."""
    from lit3drft import fit

    build = fit.build_trainer

    def use(*callbacks) -> None:
        def building(*args, **kwargs):
            trainer = build(*args, **kwargs)
            trainer.callbacks.extend(callbacks)
            return trainer

        monkeypatch.setattr(fit, "build_trainer", building)

    return use
