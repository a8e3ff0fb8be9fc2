"""The embedded benchmark: procedural rooms rendered to frames, and task files in the real formats.

    python -m lit3drft.data.synth --out data/synth3d --scenes 200 --seed 0 --level 3

Format version 2: every category is a composite of parts with a shape of its own (version 1 drew plain
cuboids), difficulty levels (``SynthConfig.level``). Readers refuse other versions.

Layout under ``--out`` (paths in rows are relative to it)::

    manifest.json                        generator config, splits (scene names), row counts; written last
    scenes/<scene>/frames/00000.png      RGB frames
    scenes/<scene>/depth/00000.png       depth, uint16 millimetres (ScanNet's convention)
    scenes/<scene>/pose/00000.txt        camera-to-global 4x4 pose, text (ScanNet's convention; added 2026-12-02
                                         for the ``points`` geometry prior: data rendered before lacks it)
    scenes/<scene>/instances.npz         ``inst`` (F, H, W) uint8: 0 room, i + 1 object i, 255 occluder
    scenes/<scene>/scene.json            room, objects (world boxes, category ids), intrinsics, cam2world, axis_align,
                                         visibility
    videos/synth3d/<scene>.mp4           the frames as H.264 video (VSI-Bench's <dataset>/<scene_name>.mp4)
    tasks/<split>/detection_<L>f.jsonl   VG-LLM detection clips
    tasks/<split>/grounding_<n>f.jsonl   ScanRefer-style grounding rows
    tasks/<split>/vsibench.jsonl         VSI-Bench rows, all question types

Deterministic: the same seed and knobs give the same bytes; scene i depends only on (seed, i) and the knobs.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import zipfile
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from lit3drft.data.config import LEVELS, SynthConfig
from lit3drft.data.render import render_scene
from lit3drft.data.scene import Scene, SceneKnobs, make_scene
from lit3drft.data.tasks import DATASET, detection_rows, grounding_rows, spatial_rows

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 2
"""Version of the rendered benchmark (``manifest.json`` ``format_version``); 1 drew every object as a cuboid."""


def scene_name(index: int) -> str:
    return f"scene{index:05d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index``: independent of how many scenes are generated."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def split_scenes(cfg: SynthConfig) -> dict[str, list[str]]:
    """Scene names per split: a seeded permutation cut by ``split_fractions`` (val and test get >= 1 scene
    when there are at least 3)."""
    n = cfg.scenes
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2**31])).permutation(n)
    frac = np.asarray(cfg.split_fractions, dtype=np.float64) / sum(cfg.split_fractions)
    n_val, n_test = (max(1 if n >= 3 else 0, round(n * f)) for f in frac[1:])
    n_train = n - n_val - n_test
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {k: [scene_name(int(i)) for i in sorted(v)] for k, v in cuts.items()}


def scene_json(scene: Scene) -> dict:
    return {
        "name": scene.name,
        "room": scene.room,
        "objects": [
            {"category": o.category, "category_id": o.category_id, "color": o.color, "bbox_3d": o.box}
            for o in scene.objects
        ],
        "occluders": [o.box for o in scene.occluders],
        "width": scene.width,
        "height": scene.height,
        "intrinsics": scene.intrinsics.tolist(),
        "cam2world": scene.cam2world.tolist(),
        "axis_align_matrix": scene.axis_align.tolist(),
        "visible_pixels": scene.visible_pixels.tolist(),
    }


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` with fixed zip timestamps, so that the bytes depend only on the arrays."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range planar YUV 4:2:0 ``(H * 3 / 2, W)`` in numpy (swscale's conversion was not
    bit-reproducible run to run)."""
    x = rgb.astype(np.float32)
    y = 16 + 0.257 * x[..., 0] + 0.504 * x[..., 1] + 0.098 * x[..., 2]
    u = 128 - 0.148 * x[..., 0] - 0.291 * x[..., 1] + 0.439 * x[..., 2]
    v = 128 + 0.439 * x[..., 0] - 0.368 * x[..., 1] - 0.071 * x[..., 2]
    h, w = y.shape
    u, v = (c.reshape(h // 2, 2, w // 2, 2).mean((1, 3)) for c in (u, v))
    planes = [np.clip(np.round(c), 0, 255).astype(np.uint8) for c in (y, u, v)]
    return np.concatenate([planes[0], planes[1].reshape(h // 4, w), planes[2].reshape(h // 4, w)])


def _yuv_frame(rgb: np.ndarray) -> av.VideoFrame:
    """A yuv420p frame whose line padding is zeroed too (uninitialised padding made the bytes vary)."""
    h, w = rgb.shape[:2]
    yuv = rgb_to_yuv420p(rgb)
    planes = [yuv[:h], yuv[h : h + h // 4].reshape(h // 2, w // 2), yuv[h + h // 4 :].reshape(h // 2, w // 2)]
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, planes):
        buf = np.zeros((plane.height, plane.line_size), dtype=np.uint8)
        buf[:, : data.shape[1]] = data
        plane.update(buf.tobytes())
    return frame


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 mp4 (yuv420p, single-threaded and bit-exact so that the bytes are reproducible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {
            "crf": "18",
            "threads": "1",
            "preset": "veryfast",
            "flags": "+bitexact",
            "x264-params": "asm=0",
        }
        for rgb in frames:
            container.mux(stream.encode(_yuv_frame(rgb)))
        container.mux(stream.encode())


def write_scene(out: Path, scene: Scene, rgb: np.ndarray, depth: np.ndarray, inst: np.ndarray, fps: int) -> None:
    base = out / "scenes" / scene.name
    (base / "frames").mkdir(parents=True, exist_ok=True)
    (base / "depth").mkdir(parents=True, exist_ok=True)
    (base / "pose").mkdir(parents=True, exist_ok=True)
    for i, (im, d, pose) in enumerate(zip(rgb, depth, scene.cam2global)):
        Image.fromarray(im).save(base / "frames" / f"{i:05d}.png", optimize=False)
        Image.fromarray(np.clip(np.round(d * 1000), 0, 65535).astype(np.uint16)).save(base / "depth" / f"{i:05d}.png")
        np.savetxt(base / "pose" / f"{i:05d}.txt", pose, fmt="%.9f")
    save_npz(base / "instances.npz", inst=inst)
    (base / "scene.json").write_text(json.dumps(scene_json(scene)))
    write_video(out / "videos" / DATASET / f"{scene.name}.mp4", rgb, fps)


def scene_rows(scene: Scene, rng: np.random.Generator, cfg: SynthConfig) -> dict[str, list[dict]]:
    """All task rows of one scene, keyed by task file stem."""
    rows: dict[str, list[dict]] = {}
    for n in cfg.detection_clip_lengths:
        rows[f"detection_{n}f"] = detection_rows(
            scene, rng, n, cfg.detection_clips_per_scene, cfg.detection_stride, cfg.min_visible_pixels
        )
    for n in cfg.grounding_frames:
        rows[f"grounding_{n}f"] = grounding_rows(scene, rng, n, cfg.grounding_per_scene, cfg.min_visible_pixels)
    rows["vsibench"] = spatial_rows(scene, rng, cfg.questions_per_type, cfg.min_visible_pixels)
    return rows


def knobs_of(cfg: SynthConfig) -> SceneKnobs:
    """The scene knobs of ``cfg`` with its level resolved (``SynthConfig.resolved``)."""
    cfg = cfg.resolved()
    return SceneKnobs(
        width=cfg.width, height=cfg.height, frames=cfg.frames, min_objects=cfg.min_objects,
        max_objects=cfg.max_objects, categories=tuple(cfg.categories), camera_motion=cfg.camera_motion,
        hfov_deg=cfg.hfov_deg, occluders=cfg.occluders,
    )  # fmt: skip


def build_scene(
    cfg: SynthConfig, index: int, rows: bool = True
) -> tuple[Scene, np.ndarray, np.ndarray, np.ndarray, dict[str, list[dict]]]:
    """Generate and render scene ``index`` of ``cfg`` in memory (no files), deterministically.

    The public entry point for rendering rooms on the fly (e.g. a pretraining stream that draws room ``i`` from its
    own seed): the result depends only on ``(cfg, index)``. Its cost is linear in ``cfg.frames`` (about 5 ms per
    112x112 frame on one core), so a cfg with ``frames=4`` is cheap; the room, its objects and the camera's walk do
    not depend on ``frames`` (the walk is sampled at ``frames`` instants). Use ``scene.objects[i].category_id``
    (or ``category_map(scene, inst)``) for per-pixel classes: instance ``i + 1`` is ``scene.objects[i]``.

    Args:
        cfg: Generator knobs (the level is resolved here).
        index: Scene index; its generator is ``scene_rng(cfg.seed, index)``.
        rows: Also build the task rows (the benchmark's rows for this scene); False skips them.

    Returns:
        ``(scene, rgb (F, H, W, 3) uint8, depth (F, H, W) float32 m, inst (F, H, W) uint8, rows by file stem)``;
        ``scene.visible_pixels`` is filled, rows is ``{}`` when ``rows`` is False.
    """
    rng = scene_rng(cfg.seed, index)
    scene = make_scene(scene_name(index), rng, knobs_of(cfg))
    rgb, depth, inst = render_scene(scene)
    return scene, rgb, depth, inst, scene_rows(scene, rng, cfg.resolved()) if rows else {}


def rerender_command(cfg: SynthConfig, out: str | Path) -> str | None:
    """The ``python -m lit3drft.data.synth`` command that renders exactly ``cfg`` under ``out``, or None when
    ``cfg`` sets a knob that the command line does not expose.

    Example:
        >>> rerender_command(SynthConfig(scenes=50, level=4, max_objects=8), "data/x")
        'python -m lit3drft.data.synth --out data/x --scenes 50 --level 4 --max-objects 8'
    """
    default, given = SynthConfig(), asdict(cfg)
    if any(v != getattr(default.resolved(), k) for k, v in asdict(cfg.resolved()).items() if k not in CLI_KNOBS):
        return None
    words = ["python", "-m", "lit3drft.data.synth", "--out", str(out)]
    for k in CLI_KNOBS:
        v = given[k]
        if v is not None and v != getattr(default, k):
            words += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list) else [v])]
    return shlex.join(words)


CLI_KNOBS = ("scenes", "seed", "width", "height", "frames", "level", "min_objects", "max_objects", "categories",
             "camera_motion", "occluders", "questions_per_type")  # fmt: skip
"""``SynthConfig`` fields that ``main`` exposes as flags."""


def generate(cfg: SynthConfig, out: str | Path, progress: bool = True) -> dict:
    """Generate the benchmark under ``out`` and return its manifest (also written to ``out/manifest.json``, last).

    The manifest's ``config`` is ``cfg.resolved()``: the knobs the level set are written out.
    """
    cfg = cfg.resolved()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_scenes(cfg)
    split_of = {name: s for s, names in splits.items() for name in names}
    files: dict[tuple[str, str], list[dict]] = {}
    for i in tqdm(range(cfg.scenes), desc="rendering scenes", unit="scene", disable=not progress):
        scene, rgb, depth, inst, rows = build_scene(cfg, i)
        write_scene(out, scene, rgb, depth, inst, cfg.fps)
        for stem, rs in rows.items():
            files.setdefault((split_of[scene.name], stem), []).extend(rs)
    counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    for (split, stem), rows in sorted(files.items()):
        path = out / "tasks" / split / f"{stem}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts[split][stem] = len(rows)
    manifest = {"format_version": FORMAT_VERSION, "dataset": DATASET, "config": asdict(cfg.resolved()),
                "splits": splits, "rows": counts}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    d = SynthConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--scenes", type=int, default=d.scenes)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--frames", type=int, default=d.frames, help="frames rendered per scene")
    levels = "; ".join(f"{k}: {v['min_objects']}-{v['max_objects']} objects, camera motion {v['camera_motion']}, "
                       f"{v['occluders']} occluders" for k, v in LEVELS.items())  # fmt: skip
    p.add_argument("--level", type=int, default=d.level, choices=sorted(LEVELS), help=f"difficulty ({levels})")
    p.add_argument("--min-objects", type=int, default=None, help="override the level's fewest objects")
    p.add_argument("--max-objects", type=int, default=None, help="override the level's most objects")
    p.add_argument("--categories", nargs="*", default=[], help="category subset (default: all)")
    p.add_argument("--camera-motion", type=float, default=None, help="override the level's camera motion")
    p.add_argument("--occluders", type=int, default=None, help="override the level's unlabeled pillars per room")
    p.add_argument("--questions-per-type", type=int, default=d.questions_per_type)
    a = p.parse_args(argv)
    try:
        cfg = SynthConfig(
            scenes=a.scenes, seed=a.seed, width=a.width, height=a.height, frames=a.frames, level=a.level,
            min_objects=a.min_objects, max_objects=a.max_objects, categories=a.categories,
            camera_motion=a.camera_motion, occluders=a.occluders, questions_per_type=a.questions_per_type,
        )  # fmt: skip
    except ValueError as err:
        p.error(str(err))
    manifest = generate(cfg, a.out)
    print(json.dumps(manifest["rows"], indent=1))


if __name__ == "__main__":
    main()
