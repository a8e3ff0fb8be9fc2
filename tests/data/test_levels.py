"""Difficulty levels: one knob that sets the room's object count, camera motion and occluders; overrides win."""

import json
import shlex
from dataclasses import asdict, replace

import numpy as np
import pytest

from lit3drft.data.config import LEVELS, SynthConfig
from lit3drft.data.scene import make_scene
from lit3drft.data.synth import build_scene, knobs_of, main, rerender_command, scene_rng

DOCUMENTED = {
    1: (1, 2, 0.0, 0),
    2: (2, 4, 0.5, 0),
    3: (3, 6, 1.0, 0),
    4: (3, 12, 1.0, 2),
}
"""(min_objects, max_objects, camera_motion, occluders) as SynthConfig.level documents them."""


def knobs(cfg: SynthConfig) -> tuple:
    r = cfg.resolved()
    return r.min_objects, r.max_objects, r.camera_motion, r.occluders


def test_levels_resolve_to_the_documented_values():
    assert sorted(LEVELS) == sorted(DOCUMENTED)
    for level, want in DOCUMENTED.items():
        assert knobs(SynthConfig(level=level)) == want
    assert SynthConfig().level == 3 and knobs(SynthConfig()) == (3, 6, 1.0, 0)  # the tiny config's rooms
    r = SynthConfig(level=2).resolved()
    assert r.level == 2 and r.resolved() == r and replace(r, scenes=5).resolved().max_objects == 4


def test_explicit_knobs_override_the_level():
    assert knobs(SynthConfig(level=1, max_objects=5, occluders=1)) == (1, 5, 0.0, 1)
    assert knobs(SynthConfig(level=4, camera_motion=0.25, occluders=0)) == (3, 12, 0.25, 0)
    assert knobs(SynthConfig(level=4, max_objects=2)) == (2, 2, 1.0, 2)  # the level's bound yields
    assert knobs(SynthConfig(level=1, min_objects=3)) == (3, 3, 0.0, 0)
    with pytest.raises(ValueError, match="level"):
        SynthConfig(level=5)
    with pytest.raises(ValueError, match="min_objects"):
        SynthConfig(min_objects=5, max_objects=4)


@pytest.mark.parametrize("level", sorted(DOCUMENTED))
def test_rooms_follow_their_level(level):
    cfg = SynthConfig(level=level, frames=6)
    lo, hi, motion, occluders = DOCUMENTED[level]
    counts, pillars = [], []
    for i in range(12):
        scene = make_scene(f"s{i}", scene_rng(cfg.seed, i), knobs_of(cfg))
        counts.append(len(scene.objects))
        pillars.append(len(scene.occluders))
        rot = scene.cam2world[:, :3, :3]
        tilt = np.abs(rot[:, 2, :]).max()  # world z of the camera's right, down-tilt and forward axes
        if motion == 0:  # a level camera: right and forward horizontal, no pitch and no roll
            assert np.abs(rot[:, 2, 0]).max() < 1e-9 and np.abs(rot[:, 2, 2]).max() < 1e-9
        else:
            assert tilt > 0.1
    assert lo <= min(counts) and max(counts) <= hi and max(pillars) == occluders
    assert max(counts) > lo or lo == hi  # the range is used


def test_build_scene_renders_few_frames_on_the_fly_deterministically():
    cfg = SynthConfig(frames=4, seed=11)
    scene, rgb, depth, inst, rows = build_scene(cfg, 5, rows=False)
    again = build_scene(cfg, 5, rows=False)
    assert rows == {} and rgb.shape == (4, 112, 112, 3) and depth.shape == inst.shape == (4, 112, 112)
    for x, y in zip((rgb, depth, inst), again[1:4]):
        assert x.tobytes() == y.tobytes()
    assert scene.visible_pixels.shape == (4, len(scene.objects))
    # the room and its objects do not depend on the frame count
    longer = make_scene("x", scene_rng(11, 5), knobs_of(replace(cfg, frames=32)))
    assert [o.box for o in longer.objects] == [o.box for o in scene.objects]
    np.testing.assert_allclose(longer.cam2world[[0, -1]], scene.cam2world[[0, -1]])
    ids = {o.category_id for o in scene.objects}
    assert all(0 <= k < 16 for k in ids)


def test_cli_level_and_overrides_reach_the_manifest(tmp_path):
    cfg = SynthConfig(scenes=1, frames=4, level=2, max_objects=3, categories=["trash can", "chair"])
    cmd = rerender_command(cfg, tmp_path / "cli")
    assert cmd is not None and "--level 2" in cmd and "--max-objects 3" in cmd
    main(shlex.split(cmd)[3:])  # the printed command, as the version check prints it
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["config"] == json.loads(json.dumps(asdict(cfg.resolved())))
    assert (manifest["config"]["min_objects"], manifest["config"]["max_objects"]) == (2, 3)
    assert rerender_command(replace(cfg, fps=5), tmp_path) is None  # a knob without a flag: no command
