"""Every category has a shape of its own: part tables, their union, and what the renderer draws of them."""

import itertools
import math

import numpy as np
import pytest

from lit3drft.data.geometry import box_corners, intrinsics, look_at_cam2world
from lit3drft.data.prompts import CATEGORIES, CATEGORY_NAMES
from lit3drft.data.render import render_frame
from lit3drft.data.scene import Scene, SceneObject, category_map
from lit3drft.data.shapes import part_boxes
from tests.data.test_synth import hull_mask


def layout(name: str) -> np.ndarray:
    return np.array([p.bounds for p in CATEGORIES[name].parts])


def occupancy(name: str, n: int = 20) -> np.ndarray:
    g = (np.arange(n) + 0.5) / n
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1)
    occ = np.zeros(pts.shape[:3], bool)
    for b in layout(name):
        occ |= ((pts >= b[:3]) & (pts <= b[3:])).all(-1)
    return occ


def test_category_names_are_unchanged():
    # the tiny model's tokenizer is trained on these names: renaming or reordering them is a format break
    assert CATEGORY_NAMES == (
        "chair", "table", "bed", "sofa", "cabinet", "desk", "bookshelf", "toilet", "sink", "bathtub",
        "refrigerator", "nightstand", "lamp", "trash can", "armchair", "ottoman",
    )  # fmt: skip


@pytest.mark.parametrize("name", list(CATEGORIES))
def test_parts_fill_exactly_the_unit_box(name):
    parts = layout(name)
    assert len(parts) >= 2, name
    lo, hi = parts[:, :3], parts[:, 3:]
    assert (lo >= 0).all() and (hi <= 1).all() and (hi - lo > 0.01).all(), name
    np.testing.assert_allclose(lo.min(0), 0.0, err_msg=name)  # the annotation is the composite's bounding box
    np.testing.assert_allclose(hi.max(0), 1.0, err_msg=name)
    assert all(0.3 <= p.shade <= 1.5 for p in CATEGORIES[name].parts)


def test_no_two_categories_share_a_part_layout():
    for a, b in itertools.combinations(CATEGORIES, 2):
        la, lb = layout(a), layout(b)
        # Hausdorff distance between the two sets of parts (L-inf on the normalised bounds)
        d = np.abs(la[:, None] - lb[None]).max(-1)
        assert max(d.min(1).max(), d.min(0).max()) > 0.25, (a, b)
        # and their volumes differ (the part layouts are not two ways of writing one shape)
        oa, ob = occupancy(a), occupancy(b)
        assert (oa & ob).sum() / (oa | ob).sum() < 0.9, (a, b)


def test_part_boxes_span_the_object_box_at_any_yaw():
    box = [2.0, 3.0, 0.45, 0.5, 0.6, 0.9, 0.7, 0.0, 0.0]
    for name, c in CATEGORIES.items():
        parts, shades = part_boxes(c.parts, box)
        assert parts.shape == (len(c.parts), 9) and shades.shape == (len(c.parts),)
        np.testing.assert_allclose(parts[:, 6:], [[0.7, 0.0, 0.0]] * len(parts))
        # the parts' corners in the object's frame span exactly its box
        local = (np.concatenate([box_corners(p) for p in parts]) - box[:3]) @ np.array(
            [[math.cos(0.7), -math.sin(0.7), 0], [math.sin(0.7), math.cos(0.7), 0], [0, 0, 1]]
        )
        np.testing.assert_allclose(local.min(0), -np.array(box[3:6]) / 2, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(local.max(0), np.array(box[3:6]) / 2, atol=1e-9, err_msg=name)


def single_object_view(category: str, yaw: float = 0.6, px: int = 112):
    """One object in the middle of an empty room, seen from 2.5 m at a slight downward angle (from behind at yaw
    0: the camera looks along +y); the projected box's pixels, shrunk and grown by half a pixel."""
    size = list(CATEGORIES[category].size) if category in CATEGORIES else [0.5, 0.5, 0.9]
    obj = SceneObject(category, "red", [3.0, 3.0, size[2] / 2], size, yaw)
    pos = np.array([3.0, 3.0 - 2.5, 1.1])
    c2w = look_at_cam2world(pos, math.pi / 2, -math.atan2(1.1 - size[2] / 2, 2.5), 0.0)
    scene = Scene("one", [6.0, 6.0, 2.8], [obj], [], [[200, 200, 190]] * 4, [150, 120, 90], px, px,
                  intrinsics(px, px, 75.0), c2w[None], np.eye(4))  # fmt: skip
    rgb, depth, inst = render_frame(scene, c2w)
    w2c = np.linalg.inv(c2w)
    corners = box_corners(obj.box) @ w2c[:3, :3].T + w2c[:3, 3]
    inner, outer = (hull_mask(corners, scene.intrinsics, inst.shape, tol=t) for t in (-0.5, 0.5))
    return scene, rgb, inst, inner, outer


def test_a_cuboid_fills_its_silhouette():
    _, _, inst, inner, outer = single_object_view("a plain box")  # unknown category: one solid part
    assert inner.sum() > 200 and (inst[inner] == 1).all() and not (inst[~outer] == 1).any()


@pytest.mark.parametrize("category", ["chair", "table", "desk", "lamp", "sink", "nightstand", "armchair", "toilet"])
def test_legged_shapes_do_not_fill_their_box_silhouette(category):
    scene, rgb, inst, inner, outer = single_object_view(category)
    drawn = inst == 1
    assert set(np.unique(inst)) == {0, 1}  # every part carries the object's instance id
    assert inner.sum() > 100 and not drawn[~outer].any()
    # room pixels inside the projected box: between legs, under a seat or a top, around a pole or a pedestal
    assert (inst[inner] == 0).mean() > FREE[category], category
    np.testing.assert_array_equal(category_map(scene, inst), np.where(drawn, 1 + CATEGORY_NAMES.index(category), 0))


FREE = {"chair": 0.25, "table": 0.4, "desk": 0.08, "lamp": 0.4, "sink": 0.3, "nightstand": 0.05, "armchair": 0.1,
        "toilet": 0.2}  # fmt: skip
"""Least share of room pixels inside the projected box, per category (measured: about 1.5x these)."""


def test_every_category_renders_with_its_own_instance_and_class():
    for name in CATEGORIES:
        scene, rgb, inst, _, _ = single_object_view(name, yaw=2.2)
        assert (inst == 1).sum() > 30, name
        assert scene.objects[0].category_id == CATEGORY_NAMES.index(name)
        assert set(np.unique(category_map(scene, inst))) == {0, 1 + CATEGORY_NAMES.index(name)}
        assert len(np.unique(rgb[inst == 1], axis=0)) >= 3, name  # faces, part shades and edges
