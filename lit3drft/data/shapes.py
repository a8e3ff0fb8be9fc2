"""Part tables of the embedded benchmark's categories: what makes a chair look like a chair.

Each category is a union of boxes (its *parts*) given in the object's local frame as fractions of the
object's bounding box: a part ``(x0, y0, z0, x1, y1, z1)`` spans ``[x0, x1] x [y0, y1] x [z0, z1]`` of the
unit box ``[0, 1]^3`` that maps onto the object's box (x along ``size[0]``, y along ``size[1]``, z up).
The union of every category's parts spans the whole unit box, so the annotated 9-DoF box is exactly the
composite's bounding box (as ScanNet annotates). Local ``y = 0`` is the object's back: wall-bound furniture
stands with its back to the wall (local +y points into the room), and free-standing objects keep the same
convention (a chair's backrest is at ``y = 0``). ``shade`` scales the object's colour on that part (legs,
poles and handles darker, cushions and doors a little lighter), so the structure reads in flat shading.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lit3drft.data.geometry import box_rotation


class Part(NamedTuple):
    """One box of a category's shape, in fractions of the object's box, and its colour scale."""

    x0: float
    y0: float
    z0: float
    x1: float
    y1: float
    z1: float
    shade: float = 1.0

    @property
    def bounds(self) -> tuple[float, float, float, float, float, float]:
        """``(x0, y0, z0, x1, y1, z1)``."""
        return self[:6]


DARK, DARKER, LIGHT = 0.8, 0.6, 1.12


def _legs(w: float, d: float, h: float, inset: float = 0.0, y1: float = 1.0, shade: float = DARKER) -> list[Part]:
    """Four legs of width ``w`` and depth ``d`` (fractions), from the floor to ``h``, at the corners of
    ``[inset, 1 - inset] x [inset, y1 - inset]``."""
    xs = ((inset, inset + w), (1 - inset - w, 1 - inset))
    ys = ((inset, inset + d), (y1 - inset - d, y1 - inset))
    return [Part(x0, y0, 0.0, x1, y1_, h, shade) for x0, x1 in xs for y0, y1_ in ys]


def _walls(
    x0: float, y0: float, x1: float, y1: float, z0: float, z1: float, t: float, shade: float = 1.0
) -> list[Part]:
    """Four walls of thickness ``t`` around ``[x0, x1] x [y0, y1]`` from ``z0`` to ``z1`` (a hollow rim)."""
    return [
        Part(x0, y0, z0, x0 + t, y1, z1, shade),
        Part(x1 - t, y0, z0, x1, y1, z1, shade),
        Part(x0 + t, y0, z0, x1 - t, y0 + t, z1, shade),
        Part(x0 + t, y1 - t, z0, x1 - t, y1, z1, shade),
    ]


PARTS: dict[str, tuple[Part, ...]] = {
    # seat slab at 45-55 % height, backrest at the back (y = 0), four thin legs
    "chair": (*_legs(0.12, 0.12, 0.45), Part(0, 0, 0.45, 1, 1, 0.55), Part(0, 0, 0.55, 1, 0.12, 1, DARK)),
    # thin top over four long legs set slightly in from the edges
    "table": (Part(0, 0, 0.9, 1, 1, 1), *_legs(0.07, 0.1, 0.9, inset=0.03)),
    # top, a side panel on the left, a drawer block on the right, a modesty panel at the back
    "desk": (
        Part(0, 0, 0.92, 1, 1, 1),
        Part(0.02, 0.05, 0, 0.07, 0.95, 0.92, DARK),
        Part(0.66, 0.05, 0, 0.98, 0.95, 0.92, DARK),
        Part(0.07, 0.05, 0.45, 0.66, 0.1, 0.92, DARKER),
    ),
    # frame, mattress, pillow and a tall headboard against the wall
    "bed": (
        Part(0, 0.05, 0, 1, 1, 0.28, DARK),
        Part(0.02, 0.06, 0.28, 0.98, 0.99, 0.52, LIGHT),
        Part(0.12, 0.08, 0.52, 0.88, 0.24, 0.6, LIGHT),
        Part(0, 0, 0, 1, 0.05, 1, DARKER),
    ),
    # low base, three seat cushions, a back and two arms: long and low
    "sofa": (
        Part(0.1, 0.22, 0, 0.9, 1, 0.3, DARK),
        Part(0.1, 0.22, 0.3, 0.36, 1, 0.5, LIGHT),
        Part(0.37, 0.22, 0.3, 0.63, 1, 0.5, LIGHT),
        Part(0.64, 0.22, 0.3, 0.9, 1, 0.5, LIGHT),
        Part(0.1, 0, 0, 0.9, 0.22, 1),
        Part(0, 0, 0, 0.1, 1, 0.65),
        Part(0.9, 0, 0, 1, 1, 0.65),
    ),
    # square-ish, one cushion between thick arms, all raised on four short legs
    "armchair": (
        *_legs(0.1, 0.1, 0.12),
        Part(0.22, 0.3, 0.12, 0.78, 1, 0.5, LIGHT),
        Part(0.22, 0, 0.12, 0.78, 0.3, 1),
        Part(0, 0, 0.12, 0.22, 1, 0.7),
        Part(0.78, 0, 0.12, 1, 1, 0.7),
    ),
    # one cushion block with a padded top on a short recessed plinth
    "ottoman": (
        Part(0.12, 0.12, 0, 0.88, 0.88, 0.22, DARKER),
        Part(0, 0, 0.22, 1, 1, 0.86),
        Part(0.07, 0.07, 0.86, 0.93, 0.93, 1, LIGHT),
    ),
    # flat base, thin pole, a wide shade tapering at the top
    "lamp": (
        Part(0.25, 0.25, 0, 0.75, 0.75, 0.04, DARKER),
        Part(0.44, 0.44, 0.04, 0.56, 0.56, 0.7, DARKER),
        Part(0, 0, 0.7, 1, 1, 0.88, LIGHT),
        Part(0.14, 0.14, 0.88, 0.86, 0.86, 1, LIGHT),
    ),
    # open-front frame (sides, top, bottom, back) with three shelves
    "bookshelf": (
        Part(0, 0, 0, 0.05, 1, 1),
        Part(0.95, 0, 0, 1, 1, 1),
        Part(0.05, 0, 0.96, 0.95, 1, 1),
        Part(0.05, 0, 0, 0.95, 1, 0.05),
        Part(0.05, 0, 0.05, 0.95, 0.06, 0.96, DARKER),
        *(Part(0.05, 0.06, z, 0.95, 0.97, z + 0.03, DARK) for z in (0.27, 0.5, 0.73)),
    ),
    # body on a recessed plinth (toe kick), a worktop that overhangs, two doors with handles at the middle
    "cabinet": (
        Part(0.05, 0, 0, 0.95, 0.86, 0.09, DARKER),
        Part(0.03, 0, 0.09, 0.97, 0.92, 0.92),
        Part(0, 0, 0.92, 1, 1, 1, DARK),
        Part(0.05, 0.92, 0.12, 0.495, 0.96, 0.9, LIGHT),
        Part(0.505, 0.92, 0.12, 0.95, 0.96, 0.9, LIGHT),
        Part(0.43, 0.96, 0.6, 0.47, 1, 0.82, DARKER),
        Part(0.53, 0.96, 0.6, 0.57, 1, 0.82, DARKER),
    ),
    # tall body split by a recessed band (freezer over fridge), two long handles at the side
    "refrigerator": (
        Part(0, 0, 0, 1, 0.9, 0.62),
        Part(0.04, 0, 0.62, 0.96, 0.86, 0.66, DARKER),
        Part(0, 0, 0.66, 1, 0.9, 1),
        Part(0.82, 0.9, 0.7, 0.9, 1, 0.94, DARKER),
        Part(0.82, 0.9, 0.3, 0.9, 1, 0.58, DARKER),
    ),
    # pedestal, bowl with a seat, and the tank at the back (against the wall)
    "toilet": (
        Part(0.22, 0.15, 0, 0.78, 0.8, 0.32, DARK),
        Part(0, 0.2, 0.32, 1, 1, 0.48),
        Part(0.03, 0.22, 0.48, 0.97, 0.98, 0.52, LIGHT),
        Part(0.05, 0, 0.32, 0.95, 0.2, 1),
    ),
    # a hollow basin (floor and rim) on a pedestal column
    "sink": (
        Part(0.36, 0.15, 0, 0.64, 0.55, 0.78, DARK),
        Part(0, 0, 0.78, 1, 1, 0.86, DARK),
        *_walls(0, 0, 1, 1, 0.86, 1, 0.1),
    ),
    # a thick floor and a rim of four walls standing on the floor (hollow, open top)
    "bathtub": (Part(0, 0, 0, 1, 1, 0.25, DARK), *_walls(0, 0, 1, 1, 0.25, 1, 0.08)),
    # body with two drawer fronts on four short legs
    "nightstand": (
        *_legs(0.1, 0.1, 0.2, y1=0.95),
        Part(0, 0, 0.2, 1, 0.95, 1),
        Part(0.08, 0.95, 0.62, 0.92, 1, 0.94, LIGHT),
        Part(0.08, 0.95, 0.26, 0.92, 1, 0.58, LIGHT),
    ),
    # an octagonal can (two crossed boxes) with a darker open rim at the top
    "trash can": (
        Part(0.15, 0.02, 0, 0.85, 0.98, 0.85),
        Part(0.02, 0.15, 0, 0.98, 0.85, 0.85),
        *_walls(0, 0, 1, 1, 0.85, 1, 0.1, DARKER),
    ),
}
"""Parts of every category (``lit3drft.data.prompts.CATEGORIES`` reads them from here)."""

SOLID = (Part(0, 0, 0, 1, 1, 1),)
"""The single part of a plain box (unlabeled occluders)."""


def part_boxes(parts: tuple[Part, ...], box: list[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World 9-DoF boxes ``(K, 9)`` of an object's parts and their shades ``(K,)``.

    Args:
        parts: The category's parts (fractions of the box).
        box: The object's 9-DoF world box.

    Returns:
        The part boxes (the object's rotation, centres rotated by it) and their colour scales.

    Example:
        >>> b, s = part_boxes((Part(0, 0, 0, 1, 0.5, 1, 0.8),), [1, 1, 0.5, 2, 2, 1, 0, 0, 0])
        >>> b[0].tolist(), s.tolist()
        ([1.0, 0.5, 0.5, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0.8])
    """
    b = np.asarray(box, dtype=np.float64)
    p = np.asarray([q.bounds for q in parts], dtype=np.float64)  # (K, 6)
    size = b[3:6]
    offset = ((p[:, :3] + p[:, 3:]) / 2 - 0.5) * size  # part centres in the object's frame
    centres = b[:3] + offset @ box_rotation(b).T
    sizes = (p[:, 3:] - p[:, :3]) * size
    rest = np.broadcast_to(b[6:9], (len(p), 3))
    return np.concatenate([centres, sizes, rest], 1), np.asarray([q.shade for q in parts], dtype=np.float64)
