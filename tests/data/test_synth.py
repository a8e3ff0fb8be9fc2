"""The generator checked against its own renderer: boxes, poses, answer frames, videos, determinism."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from lit3drft.data.geometry import box_corners, project_points
from lit3drft.data.prompts import CATEGORIES
from lit3drft.data.render import OCCLUDER_ID
from lit3drft.data.shapes import part_boxes
from lit3drft.data.synth import generate
from tests.conftest import TINY


def scene_meta(root, name):
    meta = json.loads((root / "scenes" / name / "scene.json").read_text())
    inst = np.load(root / "scenes" / name / "instances.npz")["inst"]
    return meta, inst


def hull_mask(corners_cam, k, shape, tol=0.5):
    """Pixel centres inside the convex hull of the projected corners, grown by ``tol`` pixels."""
    from scipy.spatial import ConvexHull

    uv, _ = project_points(corners_cam, k)
    hull = ConvexHull(uv)
    v, u = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    pix = np.stack([u, v], -1).reshape(-1, 2).astype(float)
    # hull.equations: n . x + c <= 0 inside, with unit normals
    inside = (pix @ hull.equations[:, :2].T + hull.equations[:, 2] <= tol).all(1)
    return inside.reshape(shape)


def rows(root, split, stem):
    path = root / "tasks" / split / f"{stem}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_world_boxes_cover_drawn_pixels(bench):
    root, manifest = bench
    checked = 0
    for name in sum(manifest["splits"].values(), []):
        meta, inst = scene_meta(root, name)
        k = np.asarray(meta["intrinsics"])
        for f, c2w in enumerate(np.asarray(meta["cam2world"])):
            w2c = np.linalg.inv(c2w)
            for i, obj in enumerate(meta["objects"]):
                drawn = inst[f] == i + 1
                corners = box_corners(obj["bbox_3d"]) @ w2c[:3, :3].T + w2c[:3, 3]
                if drawn.sum() < 5 or corners[:, 2].min() < 0.05:
                    continue
                hull = hull_mask(corners, k, drawn.shape)
                assert hull[drawn].mean() > 0.99, (name, f, i)
                # and the object is drawn over most of its parts' unoccluded hulls (the box is not mislocated)
                parts, _ = part_boxes(CATEGORIES[obj["category"]].parts, obj["bbox_3d"])
                part_hulls = np.zeros_like(hull)
                for b in parts:
                    part_hulls |= hull_mask(box_corners(b) @ w2c[:3, :3].T + w2c[:3, 3], k, drawn.shape)
                assert part_hulls[drawn].mean() > 0.99, (name, f, i)
                free = part_hulls & ((inst[f] == 0) | (inst[f] == i + 1))
                assert free.sum() < 30 or drawn.sum() >= 0.6 * free.sum(), (name, f, i)
                checked += 1
    assert checked > 50


def test_detection_targets_cover_drawn_pixels_in_every_clip_frame(bench):
    root, manifest = bench
    checked = 0
    for split in ("train", "val", "test"):
        for row in rows(root, split, "detection_4f") + rows(root, split, "detection_6f"):
            name, frames = row["metadata"]["scene_name"], row["metadata"]["frame_indices"]
            meta, inst = scene_meta(root, name)
            k = np.asarray(row["cam2img"])[:3, :3]
            c2g = np.asarray(row["cam2global"])
            assert len(row["images"]) == len(frames) == len(c2g)
            align = np.asarray(row["axis_align_matrix"])
            centres = np.array([o["bbox_3d"][:3] for o in meta["objects"]])
            for box in row["boxes"]:
                assert len(box["bbox_3d"]) == 9
                # the scene object this box stands for: nearest world centre (must carry the same label)
                world = align @ c2g[0] @ np.r_[box["bbox_3d"][:3], 1.0]
                i = int(np.linalg.norm(centres - world[:3], axis=1).argmin())
                assert np.linalg.norm(centres[i] - world[:3]) < 0.02
                assert meta["objects"][i]["category"] == box["label"]
                for j, f in enumerate(frames):
                    first_to_j = np.linalg.inv(c2g[j]) @ c2g[0]
                    corners = box_corners(box["bbox_3d"]) @ first_to_j[:3, :3].T + first_to_j[:3, 3]
                    drawn = inst[f] == i + 1
                    if corners[:, 2].min() < 0.05 or drawn.sum() < 5:
                        continue
                    assert hull_mask(corners, k, drawn.shape, tol=1.0)[drawn].mean() > 0.97, (row["id"], j)
                    checked += 1
    assert checked > 20


def test_detection_boxes_are_the_visible_objects(bench):
    root, manifest = bench
    for row in rows(root, "train", "detection_4f"):
        meta, _ = scene_meta(root, row["metadata"]["scene_name"])
        px = np.asarray(meta["visible_pixels"])[row["metadata"]["frame_indices"]]
        assert len(row["boxes"]) == int((px.max(0) >= TINY.min_visible_pixels).sum())


def test_grounding_answer_frame_has_the_largest_drawn_area(bench):
    root, manifest = bench
    n = 0
    for split in ("train", "val", "test"):
        for stem in ("grounding_8f", "grounding_16f"):
            for row in rows(root, split, stem):
                md = row["metadata"]
                _, inst = scene_meta(root, md["scene_name"])
                area = [(inst[f] == md["object_id"] + 1).sum() for f in md["frame_indices"]]
                assert row["target"]["frame"] == int(np.argmax(area))
                assert max(area) >= TINY.min_visible_pixels
                assert row["conversations"][0]["value"].startswith("Frame-0: <image>Frame-1: <image>")
                n += 1
    assert n > 5


def test_depth_maps_match_the_geometry(bench):
    root, manifest = bench
    name = manifest["splits"]["train"][0]
    meta, inst = scene_meta(root, name)
    depth = np.asarray(Image.open(root / "scenes" / name / "depth" / "00000.png"), dtype=np.float32) / 1000
    k, c2w = np.asarray(meta["intrinsics"]), np.asarray(meta["cam2world"])[0]
    # back-project floor pixels: they must lie on z = 0 in the world
    v, u = np.nonzero((inst[0] == 0) & (depth > 0))
    pts = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u, float)], -1) * depth[v, u, None]
    world = pts @ c2w[:3, :3].T + c2w[:3, 3]
    room = np.asarray(meta["room"])
    on_surface = (np.abs(world[:, 2]) < 0.01) | (np.abs(world[:, 2] - room[2]) < 0.01)
    on_surface |= (np.abs(world[:, :2]) < 0.01).any(1) | (np.abs(world[:, :2] - room[:2]) < 0.01).any(1)
    assert on_surface.mean() > 0.99


def test_videos_decode_with_decord_and_match_frames(bench):
    import decord

    root, manifest = bench
    for name in sum(manifest["splits"].values(), [])[:2]:
        vr = decord.VideoReader(str(root / "videos" / "synth3d" / f"{name}.mp4"), num_threads=1)
        assert len(vr) == TINY.frames
        frame = vr[5].asnumpy().astype(float)
        png = np.asarray(Image.open(root / "scenes" / name / "frames" / "00005.png"), dtype=float)
        assert frame.shape == png.shape and np.abs(frame - png).mean() < 8


def test_splits_partition_scenes_and_rows(bench):
    root, manifest = bench
    splits = manifest["splits"]
    names = sum(splits.values(), [])
    assert len(names) == len(set(names)) == TINY.scenes and all(splits.values())
    for split, scenes in splits.items():
        for path in (root / "tasks" / split).glob("*.jsonl"):
            for line in path.read_text().splitlines():
                r = json.loads(line)
                assert (r.get("scene_name") or r["metadata"]["scene_name"]) in scenes


def test_occluders_are_unlabeled(tmp_path):
    cfg = replace(TINY, scenes=1, frames=6, occluders=2, grounding_frames=[4])
    generate(cfg, tmp_path, progress=False)
    inst = np.load(tmp_path / "scenes" / "scene00000" / "instances.npz")["inst"]
    assert (inst == OCCLUDER_ID).any()


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic(tmp_path):
    cfg = replace(TINY, scenes=3, frames=8, grounding_frames=[8])
    generate(cfg, tmp_path / "a", progress=False)
    generate(cfg, tmp_path / "b", progress=False)
    generate(replace(cfg, seed=cfg.seed + 1), tmp_path / "c", progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_all_question_types_are_generated(tmp_path):
    cfg = replace(
        TINY, scenes=12, frames=16, min_objects=6, max_objects=12, grounding_frames=[], detection_clip_lengths=[]
    )
    manifest = generate(cfg, tmp_path, progress=False)
    types = {json.loads(line)["question_type"] for s in manifest["splits"]
             for line in (tmp_path / "tasks" / s / "vsibench.jsonl").read_text().splitlines()}  # fmt: skip
    from lit3drft.data.prompts import QUESTION_TYPES

    assert types == set(QUESTION_TYPES)
