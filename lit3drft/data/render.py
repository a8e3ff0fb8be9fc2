"""A numpy depth-buffer renderer for box rooms: RGB, metric depth and an instance map per frame.

Each pixel's ray (through the pixel centre, OpenCV camera) is intersected with every box at once (slab
test in the box's own frame, vectorised over boxes x pixels) and with the inside of the room; the
nearest hit wins, which is exactly what a z-buffer over the boxes' triangles would keep, without
near-plane clipping. Ray parameters are camera depths because camera-frame ray directions have z = 1.
Shading is flat per face (Lambert on the face normal plus ambient), with darkened box edges, a
checkered floor and a baseboard so that the scale and layout of the room can be read from the frames.
"""

from __future__ import annotations

import numpy as np

from lit3drft.data.geometry import box_rotation
from lit3drft.data.scene import Scene, object_rgb

LIGHT = np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0])
OCCLUDER_ID = 255
"""Instance id of unlabeled occluders; 0 is the room, ``i + 1`` the scene's object ``i``."""


def _pixel_rays(scene: Scene) -> np.ndarray:
    k = scene.intrinsics
    v, u = np.meshgrid(np.arange(scene.height), np.arange(scene.width), indexing="ij")
    return np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u, dtype=np.float64)], -1)


def _room_hit(scene: Scene, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exit point of rays from inside the room: depth ``(P,)`` and RGB ``(P, 3)``."""
    lo, hi = np.zeros(3), np.asarray(scene.room)
    safe = np.where(np.abs(d) < 1e-12, 1e-12, d)
    t_axis = np.where(d > 0, (hi - o) / safe, (lo - o) / safe)  # (P, 3)
    t_axis = np.where(t_axis > 0, t_axis, np.inf)
    axis = t_axis.argmin(1)
    t = t_axis[np.arange(len(d)), axis]
    p = o + t[:, None] * d
    rgb = np.empty((len(d), 3), dtype=np.float32)
    floor = (axis == 2) & (d[:, 2] < 0)
    ceiling = (axis == 2) & (d[:, 2] >= 0)
    checker = (np.floor(p[:, 0] / 0.5) + np.floor(p[:, 1] / 0.5)) % 2
    rgb[floor] = np.asarray(scene.floor_color, np.float32) * (0.8 + 0.2 * checker[floor, None])
    rgb[ceiling] = 235.0
    # walls: 0 at y=0, 1 at x=W, 2 at y=L, 3 at x=0 (same numbering as object placement)
    wall = np.select(
        [(axis == 1) & (d[:, 1] < 0), (axis == 0) & (d[:, 0] > 0), (axis == 1) & (d[:, 1] > 0)], [0, 1, 2], 3
    )
    is_wall = axis < 2
    wall_rgb = np.asarray(scene.wall_colors, np.float32)[wall] * np.where(p[:, 2:3] < 0.12, 0.6, 1.0)
    rgb[is_wall] = wall_rgb[is_wall] * (0.85 + 0.1 * (wall[is_wall, None] % 2))
    return t, rgb


def render_frame(scene: Scene, cam2world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one view: RGB ``(H, W, 3)`` uint8, depth ``(H, W)`` float32 metres, instance ids ``(H, W)`` uint8."""
    rays_cam = _pixel_rays(scene).reshape(-1, 3)  # (P, 3), z = 1
    d = rays_cam @ cam2world[:3, :3].T  # world directions (P, 3)
    o = cam2world[:3, 3]
    depth, rgb = _room_hit(scene, np.broadcast_to(o, d.shape), d)
    inst = np.zeros(len(d), dtype=np.uint8)
    boxes = [ob.box for ob in scene.objects] + [ob.box for ob in scene.occluders]
    if boxes:
        b = np.asarray(boxes)  # (N, 9)
        rots = np.stack([box_rotation(x) for x in b])  # (N, 3, 3)
        half = b[:, 3:6] / 2  # (N, 3)
        o_l = np.einsum("nji,nj->ni", rots, o - b[:, :3])  # (N, 3) ray origin in box frames
        d_l = np.einsum("nji,pj->npi", rots, d)  # (N, P, 3)
        safe = np.where(np.abs(d_l) < 1e-12, 1e-12, d_l)
        t1 = (-half[:, None] - o_l[:, None]) / safe
        t2 = (half[:, None] - o_l[:, None]) / safe
        t_near_axes = np.minimum(t1, t2)
        t_near, t_far = t_near_axes.max(-1), np.maximum(t1, t2).min(-1)  # (N, P)
        t_hit = np.where((t_near <= t_far) & (t_near > 1e-3), t_near, np.inf)
        nearest = t_hit.argmin(0)  # (P,)
        t_best = t_hit[nearest, np.arange(len(d))]
        hit = t_best < depth
        idx, pix = nearest[hit], np.flatnonzero(hit)
        axis = t_near_axes[idx, pix].argmax(-1)
        sign = -np.sign(d_l[idx, pix, axis])
        normal = rots[idx, :, axis] * sign[:, None]  # world normal of the face hit
        shade = 0.45 + 0.55 * np.clip(normal @ LIGHT, 0, 1)
        local = o_l[idx] + t_best[hit, None] * d_l[idx, pix]
        edge = (np.abs(local) > half[idx] - 0.015).sum(-1) >= 2
        colors = np.stack(
            [object_rgb(ob) for ob in scene.objects] + [np.full(3, 150.0, np.float32)] * len(scene.occluders)
        )
        rgb[hit] = colors[idx] * (shade * np.where(edge, 0.55, 1.0))[:, None]
        depth[hit] = t_best[hit]
        n_obj = len(scene.objects)
        inst[hit] = np.where(idx < n_obj, idx + 1, OCCLUDER_ID).astype(np.uint8)
    shape = (scene.height, scene.width)
    rgb8 = np.clip(np.round(rgb), 0, 255).astype(np.uint8).reshape(*shape, 3)
    return rgb8, depth.astype(np.float32).reshape(shape), inst.reshape(shape)


def render_scene(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every frame: RGB ``(F, H, W, 3)``, depth ``(F, H, W)``, instances ``(F, H, W)``; fills
    ``scene.visible_pixels``."""
    out = [render_frame(scene, c2w) for c2w in scene.cam2world]
    rgb, depth, inst = (np.stack(x) for x in zip(*out))
    n = len(scene.objects)
    counts = np.stack([np.bincount(f.ravel(), minlength=256)[1 : n + 1] for f in inst])
    scene.visible_pixels = counts.reshape(len(inst), n)
    return rgb, depth, inst
