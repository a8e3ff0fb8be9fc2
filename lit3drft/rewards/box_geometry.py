"""Box conventions: 9-DoF parameters, rotations, corners, rigid transforms and box frames.

Boxes are ``[x, y, z, x_size, y_size, z_size, yaw, roll, pitch]`` with R = Rz(yaw)·Rx(roll)·Ry(pitch)
(intrinsic ZXY, pytorch3d's ``euler_angles_to_matrix(angles, "ZXY")``); 7 numbers = yaw only, 6 = axis
aligned. Corners follow pytorch3d's order (0-3 one face cyclic, 4-7 the opposite face, i+4 next to i).
4x4 matrices act on column vectors. The frames (centre, orthonormal axes, half sizes, validity) are what
the exact IoU in ``lit3drft.rewards.boxes`` works on.
"""

from __future__ import annotations

import torch
from torch import Tensor

# pytorch3d corner order: signs of the half sizes along the box's own x, y, z axes
_CORNER_SIGNS = (
    (-1, -1, -1),
    (1, -1, -1),
    (1, 1, -1),
    (-1, 1, -1),
    (-1, -1, 1),
    (1, -1, 1),
    (1, 1, 1),
    (-1, 1, 1),
)
# corner weights of the mean x, y, z edge and of the centre (each edge averaged over its four copies)
_EDGE_WEIGHTS = (
    (-0.25, 0.25, 0.25, -0.25, -0.25, 0.25, 0.25, -0.25),
    (-0.25, -0.25, 0.25, 0.25, -0.25, -0.25, 0.25, 0.25),
    (-0.25, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, 0.25),
    (0.125,) * 8,
)


def euler_to_matrix(angles: Tensor) -> Tensor:
    """Rotation matrices from ``[yaw, roll, pitch]``: R = Rz(yaw)·Rx(roll)·Ry(pitch).

    Args:
        angles: ``(..., 3)`` radians.

    Returns:
        ``(..., 3, 3)`` rotation matrices (act on column vectors).

    Example:
        >>> import math
        >>> R = euler_to_matrix(torch.tensor([math.pi / 2, 0.0, 0.0]))
        >>> (R @ torch.tensor([1.0, 0.0, 0.0])).round(decimals=6) + 0.0
        tensor([0., 1., 0.])
    """
    yaw, roll, pitch = angles.unbind(-1)
    ca, sa, cb, sb, cc, sc = yaw.cos(), yaw.sin(), roll.cos(), roll.sin(), pitch.cos(), pitch.sin()
    rows = (
        (ca * cc - sa * sb * sc, -sa * cb, ca * sc + sa * sb * cc),
        (sa * cc + ca * sb * sc, ca * cb, sa * sc - ca * sb * cc),
        (-cb * sc, sb, cb * cc),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def matrix_to_euler(matrix: Tensor) -> Tensor:
    """``[yaw, roll, pitch]`` of rotation matrices, the inverse of ``euler_to_matrix``.

    Roll is in ``[-pi/2, pi/2]``; at gimbal lock (roll = ±pi/2) pitch is set to 0.

    Args:
        matrix: ``(..., 3, 3)`` rotation matrices.

    Returns:
        ``(..., 3)`` radians.

    Example:
        >>> a = torch.tensor([0.3, -0.2, 1.1], dtype=torch.float64)
        >>> torch.allclose(matrix_to_euler(euler_to_matrix(a)), a)
        True
    """
    roll = matrix[..., 2, 1].clamp(-1.0, 1.0).asin()
    locked = roll.cos().abs() < 1e-7
    yaw = torch.where(
        locked,
        torch.atan2(matrix[..., 1, 0], matrix[..., 0, 0]),
        torch.atan2(-matrix[..., 0, 1], matrix[..., 1, 1]),
    )
    pitch = torch.where(locked, torch.zeros_like(roll), torch.atan2(-matrix[..., 2, 0], matrix[..., 2, 2]))
    return torch.stack([yaw, roll, pitch], -1)


def _split_boxes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(..., 6|7|9)`` boxes -> centre ``(..., 3)``, sizes ``(..., 3)``, rotation ``(..., 3, 3)``."""
    k = boxes.shape[-1]
    if k not in (6, 7, 9):
        raise ValueError(f"boxes must have 6, 7 or 9 numbers in the last dimension, got {k}")
    angles = torch.zeros(*boxes.shape[:-1], 3, dtype=boxes.dtype, device=boxes.device)
    angles[..., : k - 6] = boxes[..., 6:]
    return boxes[..., :3], boxes[..., 3:6], euler_to_matrix(angles)


def box3d_corners(boxes: Tensor) -> Tensor:
    """Corners of 9-DoF (or 7-DoF yaw-only, or 6-DoF axis-aligned) boxes in pytorch3d's order.

    Args:
        boxes: ``(..., 6|7|9)``.

    Returns:
        ``(..., 8, 3)``.

    Example:
        >>> box3d_corners(torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0]))[[0, 1, 6]]
        tensor([[0., 0., 0.],
                [1., 0., 0.],
                [1., 1., 1.]])
    """
    centre, sizes, rot = _split_boxes(boxes)
    signs = torch.tensor(_CORNER_SIGNS, dtype=boxes.dtype, device=boxes.device)  # (8, 3)
    local = signs * (sizes[..., None, :] / 2)  # (..., 8, 3)
    return centre[..., None, :] + local @ rot.transpose(-1, -2)


def transform_boxes(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Apply a rigid 4x4 transform (column vectors) to boxes: new centre, new angles, same sizes.

    The new rotation is ``matrix[:3, :3] @ R_box``, written back as ZXY Euler angles, so the output
    always has 9 numbers. Used to move a camera-frame box to world coordinates with
    ``axis_align @ cam2global[f]`` (VG-LLM's grounding evaluation).

    Args:
        boxes: ``(..., 6|7|9)``.
        matrix: ``(4, 4)`` or broadcastable ``(..., 4, 4)``.

    Returns:
        ``(..., 9)`` boxes.

    Example:
        >>> import math
        >>> quarter_turn = torch.tensor([[0.0, -1, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        >>> transform_boxes(torch.tensor([1.0, 0, 0, 2, 1, 1, 0, 0, 0]), quarter_turn).round(decimals=4) + 0.0
        tensor([1.0000, 1.0000, 0.0000, 2.0000, 1.0000, 1.0000, 1.5708, 0.0000, 0.0000])
    """
    centre, sizes, rot = _split_boxes(boxes)
    matrix = matrix.to(boxes.dtype)
    lin, shift = matrix[..., :3, :3], matrix[..., :3, 3]
    new_centre = (lin @ centre[..., None])[..., 0] + shift
    new_angles = matrix_to_euler(lin @ rot)
    return torch.cat([new_centre, sizes.expand_as(new_centre), new_angles], -1)


def _frames_from_corners(corners: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(N, 8, 3)`` corners -> centre, orthonormal axes (columns), half sizes, validity (float64).

    Edges are averaged over the four parallel ones and the axes made orthonormal (Gram-Schmidt), so
    float32 corners of a rotated box give the box they were made from to ~1e-7.
    """
    c = corners.double()
    w = torch.tensor(_EDGE_WEIGHTS, dtype=torch.float64)
    sums = (w @ c.reshape(-1, 8, 3).transpose(0, 1).reshape(8, -1)).view(4, -1, 3)  # x, y, z edge, centre
    ex, ey, ez, centre = sums.unbind(0)
    sx, sz = ex.norm(dim=-1), ez.norm(dim=-1)
    x = ex / sx.clamp_min(1e-300)[:, None]
    y = ey - (ey * x).sum(-1, keepdim=True) * x
    sy = y.norm(dim=-1)
    y = y / sy.clamp_min(1e-300)[:, None]
    z = torch.linalg.cross(x, y)
    half = torch.stack([sx, sy, sz], -1) / 2
    return centre, torch.stack([x, y, z], -1), half, _valid(c, half)


def _valid(points: Tensor, half: Tensor) -> Tensor:
    """Finite inputs and a box of positive volume (every half size above 1e-9 of the largest)."""
    finite = torch.isfinite(points).flatten(1).all(1) & torch.isfinite(half).all(1)
    big = half.amax(1)
    return finite & (half.amin(1) > 1e-9 * big) & (big > 0)


def _frames_from_params(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(N, 6|7|9)`` boxes -> centre, axes (columns), half sizes, validity (float64, on the CPU)."""
    centre, sizes, rot = _split_boxes(boxes.double().cpu())
    half = sizes / 2
    return centre, rot, half, _valid(boxes.double().cpu(), half)
