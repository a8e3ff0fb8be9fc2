"""Box and camera geometry in numpy, shared by the generator, the tests and the visualiser.

Conventions (DESIGN.md): 9-DoF boxes ``[x, y, z, x_size, y_size, z_size, yaw, roll, pitch]``, centre-origin,
R = Rz(yaw)·Rx(roll)·Ry(pitch) (intrinsic ZXY, pytorch3d ``euler_angles_to_matrix(angles, "ZXY")``).
Cameras are OpenCV (x right, y down, z forward); 4x4 matrices act on column vectors. The synthetic world
is z-up (ScanNet-like) with the floor at z = 0.
"""

from __future__ import annotations

import itertools

import numpy as np

# pytorch3d's corner order: 0-3 one face (z = -1) cyclic, 4-7 the opposite face, i + 4 adjacent to i.
UNIT_CORNERS = np.array(
    [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]],
    dtype=np.float64,
)
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def euler_zxy_to_matrix(yaw: float, roll: float, pitch: float) -> np.ndarray:
    """R = Rz(yaw)·Rx(roll)·Ry(pitch), ``(3, 3)``."""
    return rot_z(yaw) @ rot_x(roll) @ rot_y(pitch)


def matrix_to_euler_zxy(r: np.ndarray) -> tuple[float, float, float]:
    """Inverse of ``euler_zxy_to_matrix``: ``(yaw, roll, pitch)`` with roll in [-pi/2, pi/2].

    Example:
        >>> import numpy as np
        >>> [round(v, 6) for v in matrix_to_euler_zxy(euler_zxy_to_matrix(0.3, -0.2, 1.1))]
        [0.3, -0.2, 1.1]
    """
    # Row 2 of Rz·Rx·Ry does not depend on yaw: [-cos(roll) sin(pitch), sin(roll), cos(roll) cos(pitch)].
    roll = float(np.arcsin(np.clip(r[2, 1], -1.0, 1.0)))
    if abs(r[2, 1]) < 1 - 1e-9:
        pitch = float(np.arctan2(-r[2, 0], r[2, 2]))
        yaw = float(np.arctan2(-r[0, 1], r[1, 1]))
    else:  # gimbal lock: only yaw ± pitch is defined; put it all in yaw
        pitch = 0.0
        yaw = float(np.arctan2(r[1, 0], r[0, 0]))
    return yaw, roll, pitch


def box_rotation(box: np.ndarray | list[float]) -> np.ndarray:
    b = np.asarray(box, dtype=np.float64)
    return euler_zxy_to_matrix(b[6], b[7], b[8])


def box_corners(box: np.ndarray | list[float]) -> np.ndarray:
    """The 8 corners ``(8, 3)`` of a 9-DoF box, in pytorch3d's order."""
    b = np.asarray(box, dtype=np.float64)
    return (UNIT_CORNERS * (b[3:6] / 2)) @ box_rotation(b).T + b[:3]


def transform_box(box: np.ndarray | list[float], m: np.ndarray) -> np.ndarray:
    """Move a 9-DoF box by the rigid 4x4 ``m`` (new = m @ old); sizes are kept."""
    b = np.asarray(box, dtype=np.float64)
    center = m[:3, :3] @ b[:3] + m[:3, 3]
    yaw, roll, pitch = matrix_to_euler_zxy(m[:3, :3] @ box_rotation(b))
    return np.concatenate([center, b[3:6], [yaw, roll, pitch]])


def _proper_signed_permutations() -> np.ndarray:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            q = np.zeros((3, 3))
            q[list(perm), range(3)] = signs
            if np.linalg.det(q) > 0:
                mats.append(q)
    return np.stack(mats)  # (24, 3, 3)


_ROTATIONS_OF_A_BOX = _proper_signed_permutations()


def canonical_box(box: np.ndarray | list[float]) -> np.ndarray:
    """The same box with its axes relabelled so that its rotation is the smallest of the 24 equivalent ones.

    A cuboid is unchanged by relabelling its axes (sizes permuted with them); picking the representation
    closest to the identity makes camera-frame targets learnable: sizes read as (across, height, depth)
    in the camera and the angles stay small.
    """
    b = np.asarray(box, dtype=np.float64)
    r = box_rotation(b)
    q = _ROTATIONS_OF_A_BOX[np.einsum("ij,nji->n", r, _ROTATIONS_OF_A_BOX).argmax()]  # max trace(R @ Q)
    yaw, roll, pitch = matrix_to_euler_zxy(r @ q)
    return np.concatenate([b[:3], np.abs(q).T @ b[3:6], [yaw, roll, pitch]])


def world_box_to_camera(box: np.ndarray | list[float], cam2world: np.ndarray) -> np.ndarray:
    """A world box in the OpenCV camera frame of ``cam2world`` (canonical representation)."""
    return canonical_box(transform_box(box, np.linalg.inv(cam2world)))


def project_points(points: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole projection of camera-frame ``(N, 3)`` points: pixel ``(N, 2)`` (u, v) and depth ``(N,)``."""
    z = points[:, 2]
    uv = (points[:, :2] / np.where(np.abs(z) < 1e-9, 1e-9, z)[:, None]) * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]
    return uv, z


def look_at_cam2world(position: np.ndarray, heading: float, pitch: float, roll: float) -> np.ndarray:
    """OpenCV camera-to-world in a z-up world: looking along ``heading`` (rad from +x), ``pitch`` up (+)
    or down (-), rolled by ``roll`` about the optical axis."""
    fwd = np.array([np.cos(pitch) * np.cos(heading), np.cos(pitch) * np.sin(heading), np.sin(pitch)])
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, down, fwd, position
    return m


def intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Pinhole ``(3, 3)`` intrinsics with square pixels and the principal point at the image centre."""
    f = width / (2 * np.tan(np.radians(hfov_deg) / 2))
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])


def rect_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between two convex polygons ``(4, 2)`` (0 when they overlap)."""
    if polygons_overlap(a, b):
        return 0.0
    return min(_point_segment_distances(a, b).min(), _point_segment_distances(b, a).min())


def _point_segment_distances(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    p0, p1 = poly, np.roll(poly, -1, axis=0)  # (E, 2) segments
    d = p1 - p0
    t = np.clip(((points[:, None] - p0[None]) * d[None]).sum(-1) / (d * d).sum(-1)[None], 0, 1)  # (P, E)
    closest = p0[None] + t[..., None] * d[None]
    return np.linalg.norm(points[:, None] - closest, axis=-1)


def polygons_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons ``(N, 2)``."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for nrm in np.stack([-edges[:, 1], edges[:, 0]], axis=1):
            pa, pb = a @ nrm, b @ nrm
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True
