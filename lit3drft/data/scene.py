"""Procedural rooms: furniture on the floor and a camera walking and looking around.

World frame: metres, z up, floor at z = 0, the room spans ``[0, W] x [0, L] x [0, H]`` (the axis-aligned
frame, as ScanNet after ``axis_align_matrix``). Objects are yaw-rotated composites of boxes (their
category's parts, ``lit3drft.data.shapes``) resting on the floor, annotated by their bounding box
``box = [x, y, z, x_size, y_size, z_size, yaw, 0, 0]``; their footprints (the whole box) never overlap.
The raw "global" frame of the stored poses differs from the world by a random rigid ``axis_align_matrix``
(world = axis_align · global), so consumers exercise the same path as on ScanNet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lit3drft.data.geometry import intrinsics, look_at_cam2world, polygons_overlap, rot_z
from lit3drft.data.prompts import CATEGORIES, CATEGORY_NAMES, COLORS
from lit3drft.data.shapes import SOLID, Part, part_boxes

WALL_COLORS = ((205, 200, 185), (190, 200, 210), (215, 205, 190), (200, 210, 195), (225, 220, 210), (185, 185, 195))
FLOOR_COLORS = ((150, 120, 90), (120, 120, 125), (170, 150, 120), (110, 95, 80))


@dataclass
class SceneObject:
    """One annotated object: a yaw-rotated composite of its category's parts on the floor."""

    category: str
    color: str
    center: list[float]
    size: list[float]
    yaw: float

    @property
    def box(self) -> list[float]:
        """9-DoF world box (the bounding box of its parts)."""
        return [*self.center, *self.size, self.yaw, 0.0, 0.0]

    @property
    def category_id(self) -> int:
        """Index of the category in ``CATEGORY_NAMES`` (-1 for an unlabeled occluder)."""
        return CATEGORY_NAMES.index(self.category) if self.category in CATEGORIES else -1

    @property
    def parts(self) -> tuple[Part, ...]:
        """The category's parts (a single solid box for occluders)."""
        spec = CATEGORIES.get(self.category)
        return spec.parts if spec is not None else SOLID

    def part_boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """World 9-DoF boxes ``(K, 9)`` of the parts and their colour scales ``(K,)``."""
        return part_boxes(self.parts, self.box)

    def footprint(self) -> np.ndarray:
        """Floor polygon ``(4, 2)``, corners counter-clockwise."""
        hx, hy = self.size[0] / 2, self.size[1] / 2
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        return local @ rot_z(self.yaw)[:2, :2].T + np.asarray(self.center[:2])


@dataclass
class Scene:
    """A room, its objects, unlabeled occluders and a camera trajectory (world frame)."""

    name: str
    room: list[float]
    """``[W, L, H]`` in metres."""
    objects: list[SceneObject]
    occluders: list[SceneObject]
    wall_colors: list[list[int]]
    floor_color: list[int]
    width: int
    height: int
    intrinsics: np.ndarray
    """``(3, 3)``."""
    cam2world: np.ndarray
    """``(F, 4, 4)`` OpenCV camera to axis-aligned world."""
    axis_align: np.ndarray
    """``(4, 4)``: world = axis_align · global."""
    visible_pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    """``(F, N)`` drawn pixels per frame and object, filled by the renderer."""

    @property
    def cam2global(self) -> np.ndarray:
        return np.linalg.inv(self.axis_align) @ self.cam2world


@dataclass
class SceneKnobs:
    """Difficulty knobs of one scene (a subset of ``SynthConfig``, level resolved: ``synth.knobs_of``)."""

    width: int = 112
    height: int = 112
    frames: int = 32
    min_objects: int = 3
    max_objects: int = 6
    categories: tuple[str, ...] = ()
    camera_motion: float = 1.0
    hfov_deg: float = 75.0
    occluders: int = 0


def _place(rng: np.random.Generator, cat: str, room: np.ndarray, placed: list[SceneObject]) -> SceneObject | None:
    spec = CATEGORIES[cat]
    size = np.asarray(spec.size) * rng.uniform(1 - spec.jitter, 1 + spec.jitter, 3)
    color = str(rng.choice(spec.colors))
    w, length = room[0], room[1]
    for _ in range(40):
        if spec.against_wall:
            wall = int(rng.integers(4))  # 0: y=0, 1: x=W, 2: y=L, 3: x=0; local +y points into the room
            yaw = wall * math.pi / 2 + rng.normal(0, 0.03)
            along = rng.uniform(size[0] / 2 + 0.05, (w if wall % 2 == 0 else length) - size[0] / 2 - 0.05)
            off = size[1] / 2 + 0.03
            x, y = [(along, off), (w - off, along), (w - along, length - off), (off, length - along)][wall]
        else:
            yaw = rng.uniform(-math.pi, math.pi)
            x, y = rng.uniform(0.3, w - 0.3), rng.uniform(0.3, length - 0.3)
        obj = SceneObject(cat, color, [float(x), float(y), float(size[2] / 2)], size.tolist(), float(yaw))
        fp = obj.footprint()
        if fp.min() < 0.02 or fp[:, 0].max() > w - 0.02 or fp[:, 1].max() > length - 0.02:
            continue
        grown = [o for o in placed if polygons_overlap(_grow(fp, 0.08), o.footprint())]
        if not grown:
            return obj
    return None


def _grow(poly: np.ndarray, margin: float) -> np.ndarray:
    c = poly.mean(0)
    d = poly - c
    return c + d * (1 + margin / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6))


def _trajectory(rng: np.random.Generator, room: np.ndarray, k: SceneKnobs) -> np.ndarray:
    """Camera walks along an ellipse around the room centre, 1.2 m from the walls, looking across the room.

    ``camera_motion`` m scales the look-around sweep, the downward tilt and its wobble, and the roll; the walk
    covers ``min(1, (1 + m) / 2)`` of its arc. At m = 0 the camera is level (no pitch, no roll), 0.3 m lower,
    and looks at the room centre. The draws do not depend on m or on ``frames``: the same scene at another
    frame count samples the same walk.
    """
    m = k.camera_motion
    c = room[:2] / 2
    a, b = max(0.25, c[0] - 1.2), max(0.25, c[1] - 1.2)
    phi0, span = rng.uniform(0, 2 * math.pi), rng.uniform(1.2, 2.0) * math.pi * min(1.0, (1 + m) / 2)
    sweep_phase, h0, pitch0 = rng.uniform(0, 2 * math.pi), rng.uniform(1.4, 1.7), -rng.uniform(0.3, 0.5)
    h0 -= 0.3 * max(0.0, 1 - m)
    poses = []
    for t in np.linspace(0, 1, k.frames):
        ang = phi0 + span * t
        pos = np.array([c[0] + a * math.cos(ang), c[1] + b * math.sin(ang), h0 + 0.03 * math.sin(7 * t)])
        to_centre = math.atan2(c[1] - pos[1], c[0] - pos[0])
        heading = to_centre + 0.8 * m * math.sin(3 * math.pi * t + sweep_phase)
        pitch = pitch0 * min(1.0, m) + 0.08 * m * math.sin(5 * t + sweep_phase)
        roll = 0.04 * m * math.sin(4 * t + 2 * sweep_phase)
        poses.append(look_at_cam2world(pos, heading, pitch, roll))
    return np.stack(poses)


def make_scene(name: str, rng: np.random.Generator, knobs: SceneKnobs) -> Scene:
    """A random room with ``min_objects..max_objects`` objects and a camera trajectory of ``knobs.frames``."""
    room = np.array([rng.uniform(3.2, 6.5), rng.uniform(3.2, 7.0), rng.uniform(2.5, 3.0)])
    cats = list(knobs.categories) or list(CATEGORIES)
    n = int(rng.integers(knobs.min_objects, knobs.max_objects + 1))
    # Draw from a few categories so that repeats are common and grounding needs relations.
    pool = list(rng.choice(cats, size=min(len(cats), max(2, int(math.ceil(n * 0.7)))), replace=False))
    objects: list[SceneObject] = []
    for _ in range(n * 3):
        if len(objects) >= n:
            break
        obj = _place(rng, str(rng.choice(pool)), room, objects)
        if obj is not None:
            objects.append(obj)
    occluders = []
    for _ in range(knobs.occluders):
        s = rng.uniform(0.25, 0.4)
        occ = SceneObject("pillar", "grey", [0, 0, room[2] / 2], [s, s, float(room[2])], float(rng.uniform(0, 1.5)))
        for _ in range(20):
            occ.center[:2] = [float(rng.uniform(1.0, room[0] - 1.0)), float(rng.uniform(1.0, room[1] - 1.0))]
            if not any(polygons_overlap(occ.footprint(), o.footprint()) for o in objects + occluders):
                occluders.append(occ)
                break
    align = np.eye(4)
    align[:3, :3] = rot_z(rng.uniform(-math.pi, math.pi))
    align[:3, 3] = [rng.uniform(-3, 3), rng.uniform(-3, 3), 0.0]
    wall_idx = rng.choice(len(WALL_COLORS), size=4)
    return Scene(
        name=name,
        room=room.tolist(),
        objects=objects,
        occluders=occluders,
        wall_colors=[list(WALL_COLORS[i]) for i in wall_idx],
        floor_color=list(FLOOR_COLORS[int(rng.integers(len(FLOOR_COLORS)))]),
        width=knobs.width,
        height=knobs.height,
        intrinsics=intrinsics(knobs.width, knobs.height, knobs.hfov_deg),
        cam2world=_trajectory(rng, room, knobs),
        axis_align=align,
    )


def object_rgb(obj: SceneObject) -> np.ndarray:
    """The object's RGB colour ``(3,)`` float32 (grey for unknown names)."""
    return np.asarray(COLORS.get(obj.color, (128, 128, 128)), dtype=np.float32)


def category_map(scene: Scene, inst: np.ndarray) -> np.ndarray:
    """Per-pixel classes from an instance map: 0 room or occluder, ``1 + k`` category ``CATEGORY_NAMES[k]``.

    Args:
        scene: The rendered scene (its objects in instance order).
        inst: Instance ids ``(..., H, W)`` uint8 (0 room, ``i + 1`` object i, 255 occluder).

    Returns:
        Class ids of the same shape, uint8.
    """
    lut = np.zeros(256, dtype=np.uint8)
    lut[1 : len(scene.objects) + 1] = [1 + o.category_id for o in scene.objects]
    return lut[inst]
