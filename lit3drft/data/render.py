"""A numpy depth-buffer renderer for rooms of box composites: RGB, metric depth and an instance map per frame.

Every object is expanded into its part boxes (``lit3drft.data.shapes``: world boxes with the object's
rotation), each remembering its owner. Each pixel's ray (through the pixel centre, OpenCV camera) is
intersected with the inside of the room and with every part box (slab test in the box's own frame, in
float32), but only over the pixels of the box's projected bounding rectangle, and boxes behind the camera
are skipped; the nearest hit wins, which is exactly what a z-buffer over the boxes' triangles would keep,
without near-plane clipping. Hits map back to their owner for the instance id and the colour. Ray
parameters are camera depths because camera-frame ray directions have z = 1. Shading is flat per face
(Lambert on the face normal plus ambient) times the part's shade, with darkened part edges, a checkered
floor and a baseboard so that the scale and layout of the room can be read from the frames.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from lit3drft.data.geometry import UNIT_CORNERS, box_rotation
from lit3drft.data.scene import Scene, object_rgb

LIGHT = np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0])
OCCLUDER_ID = 255
"""Instance id of unlabeled occluders; 0 is the room, ``i + 1`` the scene's object ``i``."""
OCCLUDER_RGB = 150.0
EDGE = 0.015
"""Width in metres of the darkened band along a part's edges (at most 30 % of the part's half size)."""
NEAR = 1e-3
"""Nearest camera depth of a hit."""


class SceneParts(NamedTuple):
    """Every part box of a scene's objects and occluders, in world coordinates."""

    owner: np.ndarray
    """``(K,)`` index into ``objects + occluders``."""
    centre: np.ndarray
    """``(K, 3)``."""
    half: np.ndarray
    """``(K, 3)`` half sizes."""
    rot: np.ndarray
    """``(K, 3, 3)`` box-to-world rotations."""
    corners: np.ndarray
    """``(K, 8, 3)``."""
    rgb: np.ndarray
    """``(K, 3)`` float32: the owner's colour times the part's shade."""


def scene_parts(scene: Scene) -> SceneParts:
    """Expand a scene's objects (their category's parts) and occluders (one box each) into part boxes."""
    boxes, owner, rgb = [np.zeros((0, 9))], [np.zeros(0, np.int64)], [np.zeros((0, 3), np.float32)]
    for i, ob in enumerate([*scene.objects, *scene.occluders]):
        b, shade = ob.part_boxes()
        base = object_rgb(ob) if i < len(scene.objects) else np.full(3, OCCLUDER_RGB, np.float32)
        boxes.append(b)
        owner.append(np.full(len(b), i, np.int64))
        rgb.append((shade[:, None] * base).astype(np.float32))
    b = np.concatenate(boxes)
    rot = np.stack([box_rotation(x) for x in b]) if len(b) else np.zeros((0, 3, 3))
    half = b[:, 3:6] / 2
    corners = np.einsum("kcj,kij->kci", UNIT_CORNERS[None] * half[:, None], rot) + b[:, None, :3]
    return SceneParts(np.concatenate(owner), b[:, :3], half, rot, corners, np.concatenate(rgb))


@functools.lru_cache(maxsize=8)
def _camera_rays(height: int, width: int, k: tuple[float, ...]) -> np.ndarray:
    """Camera-frame ray directions ``(H, W, 3)`` through the pixel centres (z = 1); read-only, cached."""
    fx, cx, fy, cy = k
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    rays = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((height, width))], -1)
    rays.setflags(write=False)
    return rays


def _room_hit(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit point of rays ``d (P, 3)`` from ``o (3,)`` inside the room: depth ``(P,)`` and RGB ``(P, 3)``."""
    room = np.asarray(scene.room, dtype=np.float64)
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    t_axis = []
    for a, da in enumerate((dx, dy, dz)):  # per axis: faster than reductions over a trailing axis of 3
        ta = np.where(da > 0, room[a] - o[a], -o[a]) / np.where(np.abs(da) < 1e-12, 1e-12, da)
        t_axis.append(np.where(ta > 0, ta, np.inf))
    tx, ty, tz = t_axis
    t = np.minimum(np.minimum(tx, ty), tz)
    # palette: floor (dark, light checker), ceiling, walls 0-3, walls 0-3 at the baseboard; walls are numbered
    # 0 at y=0, 1 at x=W, 2 at y=L, 3 at x=0 (as in object placement)
    walls = np.asarray(scene.wall_colors, np.float32) * (0.85 + 0.1 * (np.arange(4)[:, None] % 2))
    floor = np.asarray(scene.floor_color, np.float32)
    palette = np.concatenate([[floor * 0.8, floor * 1.0, np.full(3, 235.0)], walls, walls * 0.6]).astype(np.float32)
    on_z, on_y = (tz <= tx) & (tz <= ty), ty < tx
    px, py, pz = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
    checker = ((np.floor(px / 0.5) + np.floor(py / 0.5)) % 2).astype(np.int64)
    wall = np.where(on_y, np.where(dy < 0, 0, 2), np.where(dx > 0, 1, 3)) + np.where(pz < 0.12, 7, 3)
    idx = np.where(on_z, np.where(dz < 0, checker, 2), wall)
    return t, palette[idx]


def _slab(
    d: np.ndarray, rot: np.ndarray, o_l: np.ndarray, half: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slab test of world ray directions ``d (3, h, w)`` against one box (rotation ``rot``, ray origin ``o_l`` in
    its frame, half sizes ``half``): entry depth, exit depth and the axis of the entry face, each ``(h, w)``."""
    near, far = [], []
    for a in range(3):
        da = rot[0, a] * d[0] + rot[1, a] * d[1] + rot[2, a] * d[2]  # direction in the box frame, axis a
        inv = 1.0 / np.where(np.abs(da) < 1e-12, np.float32(1e-12), da)
        t1, t2 = (-half[a] - o_l[a]) * inv, (half[a] - o_l[a]) * inv
        near.append(np.minimum(t1, t2))
        far.append(np.maximum(t1, t2))
    n0, n1, n2 = near
    t_near = np.maximum(np.maximum(n0, n1), n2)
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    axis = np.where((n0 >= n1) & (n0 >= n2), 0, np.where(n1 >= n2, 1, 2))
    return t_near, t_far, axis


def _screen_rects(parts: SceneParts, cam2world: np.ndarray, k: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel rectangles ``(K, 4)`` = ``(v0, v1, u0, u1)`` (half-open) that contain every pixel centre whose ray
    can hit each box: the projected corners' bounds for boxes in front of the camera, the whole frame for
    boxes that straddle the camera plane, empty for boxes behind it or off screen."""
    h, w = shape
    cam = (parts.corners - cam2world[:3, 3]) @ cam2world[:3, :3]  # (K, 8, 3) camera frame
    z = cam[..., 2]
    front = z.min(1) > NEAR
    zs = np.where(z > NEAR, z, 1.0)
    u = cam[..., 0] / zs * k[0, 0] + k[0, 2]
    v = cam[..., 1] / zs * k[1, 1] + k[1, 2]
    rects = np.stack([np.floor(v.min(1)), np.ceil(v.max(1)) + 1, np.floor(u.min(1)), np.ceil(u.max(1)) + 1], 1)
    rects = np.where(front[:, None], rects, [0, h, 0, w])
    rects[z.max(1) <= NEAR] = 0  # entirely behind the camera
    rects = np.clip(rects, 0, [h, h, w, w]).astype(np.int64)
    return rects


def render_frame(
    scene: Scene, cam2world: np.ndarray, parts: SceneParts | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one view: RGB ``(H, W, 3)`` uint8, depth ``(H, W)`` float32 metres, instance ids ``(H, W)`` uint8.

    Args:
        scene: The room, its objects and occluders.
        cam2world: ``(4, 4)`` OpenCV camera to world.
        parts: ``scene_parts(scene)`` when rendering many views of one scene (computed here when None).
    """
    parts = scene_parts(scene) if parts is None else parts
    shape = (scene.height, scene.width)
    k = scene.intrinsics
    rays = _camera_rays(*shape, (float(k[0, 0]), float(k[0, 2]), float(k[1, 1]), float(k[1, 2])))
    r = cam2world[:3, :3]
    o = cam2world[:3, 3]
    d = rays.reshape(-1, 3) @ r.T  # world directions (P, 3)
    depth, rgb = _room_hit(scene, o, d)
    zbuf = depth.astype(np.float32).reshape(shape)
    part = np.full(shape, -1, np.int64)
    face = np.zeros(shape, np.int64)
    # slab tests in float32 over each box's screen rectangle; the ray origin in box frames is o_l = R^T (o - c)
    d_planes = np.ascontiguousarray(d.reshape(*shape, 3).transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)
    o_l = np.einsum("kji,kj->ki", parts.rot, o - parts.centre).astype(np.float32)  # (K, 3)
    rot32, half32 = parts.rot.astype(np.float32), parts.half.astype(np.float32)
    for j, (v0, v1, u0, u1) in enumerate(_screen_rects(parts, cam2world, k, shape)):
        if v0 >= v1 or u0 >= u1:
            continue
        t_near, t_far, axis = _slab(d_planes[:, v0:v1, u0:u1], rot32[j], o_l[j], half32[j])
        zb = zbuf[v0:v1, u0:u1]
        hit = (t_near <= t_far) & (t_near > NEAR) & (t_near < zb)
        if hit.any():
            zb[hit] = t_near[hit]
            part[v0:v1, u0:u1][hit] = j
            face[v0:v1, u0:u1][hit] = axis[hit]
    inst = np.zeros(shape, dtype=np.uint8)
    pix = np.flatnonzero(part >= 0)
    if len(pix):
        j, axis, t = part.ravel()[pix], face.ravel()[pix], zbuf.ravel()[pix].astype(np.float64)
        dl = np.einsum("nji,nj->ni", parts.rot[j], d[pix])  # (M, 3) directions in the hit boxes' frames
        sign = -np.sign(dl[np.arange(len(pix)), axis])
        normal = parts.rot[j, :, axis] * sign[:, None]  # world normal of the face hit
        shade = 0.45 + 0.55 * np.clip(normal @ LIGHT, 0, 1)
        local = o_l[j] + t[:, None] * dl
        band = np.minimum(EDGE, 0.3 * parts.half[j])
        edge = (np.abs(local) > parts.half[j] - band).sum(-1) >= 2
        rgb[pix] = parts.rgb[j] * (shade * np.where(edge, 0.55, 1.0))[:, None]
        depth[pix] = t
        owner = parts.owner[j]
        inst.ravel()[pix] = np.where(owner < len(scene.objects), owner + 1, OCCLUDER_ID).astype(np.uint8)
    rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(*shape, 3)
    return rgb8, depth.astype(np.float32).reshape(shape), inst


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every frame: RGB ``(F, H, W, 3)``, depth ``(F, H, W)``, instances ``(F, H, W)``; fills
    ``scene.visible_pixels`` (drawn pixels per frame and object, all its parts together)."""
    parts = scene_parts(scene)
    out = [render_frame(scene, c2w, parts) for c2w in scene.cam2world]
    rgb, depth, inst = (np.stack(x) for x in zip(*out))
    n = len(scene.objects)
    counts = np.stack([np.bincount(f.ravel(), minlength=256)[1 : n + 1] for f in inst])
    scene.visible_pixels = counts.reshape(len(inst), n)
    return rgb, depth, inst
