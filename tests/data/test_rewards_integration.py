"""Every generated target, written as the model should write it, scores full reward with the reward library."""

import pytest

from lit3drft.data.media import load_sample
from lit3drft.data.readers import read_records
from lit3drft.rewards import score_completions
from lit3drft.rewards.config import RewardConfig

FILES = {
    "detection_4f": ("detection", "vgllm"),
    "grounding_8f": ("grounding", "vgllm"),
    "vsibench": ("spatial", "vsibench"),
}


@pytest.mark.parametrize("stem", list(FILES))
@pytest.mark.parametrize("mode", ["da", "ta"])
def test_targets_score_full_reward(bench, stem, mode):
    root, _ = bench
    task, fmt = FILES[stem]
    media = root / "videos" if fmt == "vsibench" else root
    recs = read_records(root / "tasks" / "train" / f"{stem}.jsonl", task, fmt, stem, media, 4)[:6]
    samples = [load_sample(r, mode, media) for r in recs]
    out = score_completions([s.answer for s in samples], [s.target for s in samples], RewardConfig())
    assert out.total.shape == (len(samples),)
    for name, comp in out.components.items():
        mask = out.masks.get(name)
        vals = comp[mask] if mask is not None else comp
        # rounding targets to 2 decimals costs a little IoU, nothing else
        assert (vals >= 0.9 * vals.max().clamp(min=1e-9)).all() if "iou" in name else (vals > 0.99).all(), name
