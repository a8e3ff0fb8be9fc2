"""Independent reference: intersection volume by scipy HalfspaceIntersection + ConvexHull (one pair at a time)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection


def reference_volume(corners1: np.ndarray, corners2: np.ndarray) -> float:
    """Volume of the intersection of the convex hulls of two corner sets (8, 3)."""
    halfspaces = np.vstack([ConvexHull(corners1).equations, ConvexHull(corners2).equations])
    a, b = halfspaces[:, :3], -halfspaces[:, 3]
    # Chebyshev centre: an interior point, or no interior at all
    res = linprog(
        np.r_[0, 0, 0, -1],
        A_ub=np.c_[a, np.linalg.norm(a, axis=1)],
        b_ub=b,
        bounds=[(None, None)] * 3 + [(0, None)],
    )
    if not res.success or res.x[3] < 1e-9:
        return 0.0
    return float(ConvexHull(HalfspaceIntersection(halfspaces, res.x[:3]).intersections).volume)
