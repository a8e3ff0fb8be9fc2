"""9-DoF boxes: corners, rigid transforms and the exact 3D IoU of arbitrarily rotated boxes.

Boxes are ``[x, y, z, x_size, y_size, z_size, yaw, roll, pitch]`` with R = Rz(yaw)·Rx(roll)·Ry(pitch)
(intrinsic ZXY, pytorch3d's ``euler_angles_to_matrix(angles, "ZXY")``); 7 numbers = yaw only, 6 = axis
aligned. Corners follow pytorch3d's order (0-3 one face cyclic, 4-7 the opposite face, i+4 next to i).

The overlap is exact (up to rounding). The intersection P = A ∩ B of two boxes is bounded by pieces of the
12 face planes, so by the divergence theorem ``vol(P) = 1/3 Σ_f d_f · area(P ∩ plane f)``, with ``d_f`` the
plane's distance from a common origin. Each face's area is a 2-D problem: the face rectangle cut by the
other box's three slabs, done by Sutherland-Hodgman with static shapes (one slab per step, 4 -> 6 -> 8 -> 10
vertex slots, each step a table lookup of the vertices' inside/above/below pattern plus two gathers; see
``_clip_polygons``), all 12 faces of a batch of pairs at once. The geometry (relative pose, the 2-D lines,
which faces are parallel or coplanar) is set up in float64; float32 inputs are clipped in float32, whose
vertices are convex combinations, so the areas carry float32 rounding only. Degenerate configurations are
decided once and symmetrically: faces that lie in the same plane (within ``1e-9`` of the pair's scale) are
counted once, touching boxes are separated. Pairs that cannot overlap are rejected first by the
separating-axis test (15 axes). The earlier per-line formula (``_face_areas``: area as
``1/2 Σ_lines offset · length``) is kept as the fallback for the (not yet observed) faces whose sign pattern
rounding made non-convex.
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
_TOL_PAR = 1e-9  # sin(angle) under which two planes / lines count as parallel
_TOL_DIST = 1e-9  # relative to the pair's scale: planes / lines closer than this coincide
_BIG = 1e30  # stands for an unbounded line parameter (finite so that 0 * big stays 0)
_CHUNK = 1024  # pairs per batch of the exact stage (keeps temporaries in cache)


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


def _sat_overlap(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, tol: Tensor) -> Tensor:
    """Separating-axis test of box A (half sizes ``h``, at the origin, axis aligned) against box B.

    ``rot`` (P, 3, 3): B's axes as columns in A's frame, ``t`` (P, 3) B's centre in A's frame. Returns True
    where no axis separates the boxes by more than ``-tol`` (touching counts as separated).
    """
    arot = rot.abs() + 1e-12  # guards the cross axes of parallel edges (Gottschalk)
    # A's face normals, then B's face normals
    sep = t.abs() - h - (arot * g[:, None, :]).sum(-1)  # (P, 3)
    tb = (rot * t[:, :, None]).sum(1)  # t in B's frame
    sep = torch.cat([sep, tb.abs() - g - (arot * h[:, :, None]).sum(1)], 1)
    # edge-edge axes a_i x b_j
    i1, i2 = (1, 2, 0), (2, 0, 1)
    for i in range(3):
        j1, j2 = i1[i], i2[i]
        dist = (t[:, j2, None] * rot[:, j1, :] - t[:, j1, None] * rot[:, j2, :]).abs()  # (P, 3) over j
        ra = h[:, j1, None] * arot[:, j2, :] + h[:, j2, None] * arot[:, j1, :]
        rb = torch.stack([g[:, i1[j]] * arot[:, i, i2[j]] + g[:, i2[j]] * arot[:, i, i1[j]] for j in range(3)], -1)
        # the axis a_i x b_j has length sqrt(1 - R_ij^2); parallel edges give no separating axis
        norm = (1 - rot[:, i, :] ** 2).clamp_min(0).sqrt()
        sep = torch.cat([sep, dist - ra - rb - tol[:, None] * (1 - norm)], 1)
    return (sep < -tol[:, None]).all(1)


def _face_areas(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, par: Tensor, tol: Tensor) -> Tensor:
    """Areas of the 6 faces of box A (axis aligned at the origin) inside box B's non-parallel slabs.

    Slabs of B parallel to a face (``par[:, k, l]``) are left out here (the caller decides those faces
    all-or-nothing). Face ``(k, s)`` is ordered ``k = 0, 0, 1, 1, 2, 2`` with ``s = +, -``.

    Each face is a 2-D problem in coordinates ``(x_i, x_j)``: 5 slabs (the face rectangle's two, B's three)
    give 10 lines; each line is clipped by the 4 other slabs; area = 1/2 Σ offset · length.

    Args:
        h, g: ``(P, 3)`` half sizes of A and B. rot: ``(P, 3, 3)`` B's axes (columns) in A's frame.
        t: ``(P, 3)`` B's centre in A's frame. par: ``(P, 3, 3)`` bool. tol: ``(P,)`` distance tolerance.

    Returns:
        ``(P, 6)`` areas.
    """
    P = h.shape[0]
    dt = h.dtype
    ks = torch.tensor([0, 0, 1, 1, 2, 2], device=h.device)
    sg = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=dt, device=h.device)
    ii, jj = (ks + 1) % 3, (ks + 2) % 3
    # B's slabs restricted to each face: alpha x_i + beta x_j + gamma, width g
    cen = (rot * t[:, :, None]).sum(1)  # (P, 3): B's centre along its own axes
    alpha, beta = rot[:, ii, :], rot[:, jj, :]  # (P, 6, 3)
    gamma = sg[None, :, None] * h[:, ks, None] * rot[:, ks, :] - cen[:, None, :]
    rho = torch.hypot(alpha, beta)
    off = par[:, ks, :]  # (P, 6, 3): slab parallel to the face -> left out
    rs = torch.where(off, torch.ones_like(rho), rho)
    nx = torch.where(off, torch.ones_like(rho), alpha / rs)
    ny = torch.where(off, torch.zeros_like(rho), beta / rs)
    lo = torch.where(off, torch.full_like(rho, -_BIG), (-g[:, None, :] - gamma) / rs)
    hi = torch.where(off, torch.full_like(rho, _BIG), (g[:, None, :] - gamma) / rs)
    # the face rectangle as two slabs in front: 5 slabs of (nx, ny, lo, hi), each (P, 6, 5)
    zeros, ones = torch.zeros(P, 6, 1, dtype=dt), torch.ones(P, 6, 1, dtype=dt)
    hi_i, hi_j = h[:, ii, None], h[:, jj, None]
    NX = torch.cat([ones, zeros, nx], 2)
    NY = torch.cat([zeros, ones, ny], 2)
    LO = torch.cat([-hi_i, -hi_j, lo], 2)
    HI = torch.cat([hi_i, hi_j, hi], 2)
    dead_slab = torch.cat([torch.zeros(P, 6, 2, dtype=torch.bool), off], 2)
    # 10 lines: slab a, side +/-; outward normal nu = side * n_a, offset o (nu . p = o)
    side = torch.tensor([1.0, -1.0], dtype=dt).repeat(5)  # (10,)
    la = torch.arange(10) // 2
    vx, vy = NX[..., la] * side, NY[..., la] * side  # (P, 6, 10)
    o = torch.where(side > 0, HI[..., la], -LO[..., la])
    ux, uy = -vy, vx  # direction with the interior on the left
    px, py = o * vx, o * vy  # closest point to the face centre
    # every line against every slab: (P, 6, 10, 5)
    bx, by = NX[:, :, None, :], NY[:, :, None, :]
    s = ux[..., None] * bx + uy[..., None] * by
    q = px[..., None] * bx + py[..., None] * by
    blo, bhi = LO[:, :, None, :], HI[:, :, None, :]
    para = s.abs() <= _TOL_PAR
    s_safe = torch.where(para, torch.ones_like(s), s)
    t1, t2 = (blo - q) / s_safe, (bhi - q) / s_safe
    tmin, tmax = torch.minimum(t1, t2), torch.maximum(t1, t2)
    # parallel: inside or not; coincident lines are kept once (lower slab index wins), opposite ones dropped
    tl = tol[:, None, None, None]
    dot = vx[..., None] * bx + vy[..., None] * by  # nu . n_b
    coin_hi, coin_lo = (q - bhi).abs() <= tl, (q - blo).abs() <= tl
    same = (coin_hi & (dot > 0)) | (coin_lo & (dot < 0))
    opp = (coin_hi & (dot < 0)) | (coin_lo & (dot > 0))
    outside = ~(coin_hi | coin_lo) & ((q < blo) | (q > bhi))
    slab_b, slab_a = torch.arange(5), la[:, None]
    kill = para & (opp | outside | (same & (slab_b < slab_a)))
    free = para | (slab_b == slab_a) | dead_slab[:, :, None, :]
    tmin = torch.where(free, torch.full_like(tmin, -_BIG), tmin)
    tmax = torch.where(free, torch.full_like(tmax, _BIG), tmax)
    length = (tmax.amin(-1) - tmin.amax(-1)).clamp_min(0)  # (P, 6, 10)
    length = torch.where(kill.any(-1) | dead_slab[..., la], torch.zeros_like(length), length)
    return 0.5 * (o * length).sum(-1)


def _parallel_axes(rot: Tensor) -> Tensor:
    """``(P, 3, 3)``: A's axis ``k`` parallel to B's axis ``l``.

    Decided once from both faces' in-plane components, so that every slab left out on one side is also left
    out on the other, and every kept one has a safe sin(angle).
    """
    nxt, prv = [1, 2, 0], [2, 0, 1]
    sin_a = torch.hypot(rot[:, nxt, :], rot[:, prv, :])  # column l without row k: B's slab on A's face
    sin_b = torch.hypot(rot[:, :, nxt], rot[:, :, prv])  # row k without column l: A's slab on B's face
    return (sin_a < _TOL_PAR) | (sin_b < _TOL_PAR)


def _parallel_faces(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, tol: Tensor, par: Tensor):
    """Which faces are cut away whole by a parallel slab of the other box, and which pairs touch.

    Returns ``(keep_a (P, 6), keep_b (P, 6), touching (P,), par (P, 3, 3))``. Faces lying in the same
    plane with the same outward normal are counted once (A's copy is kept, B's dropped). Only pairs with
    some parallel axes (``par``) are looked at.
    """
    keep_a = torch.ones(h.shape[0], 6, dtype=torch.bool)
    keep_b = torch.ones(h.shape[0], 6, dtype=torch.bool)
    touching = torch.zeros(h.shape[0], dtype=torch.bool)
    some = par.flatten(1).any(1)
    if not some.any():
        return keep_a, keep_b, touching, par
    s = some.nonzero()[:, 0]
    ka, kb, to = _parallel_faces_of(h[s], g[s], rot[s], t[s], tol[s], par[s])
    keep_a[s], keep_b[s], touching[s] = ka, kb, to
    return keep_a, keep_b, touching, par


def _parallel_faces_of(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, tol: Tensor, par: Tensor):
    cen = (rot * t[:, :, None]).sum(1)  # B's centre along its own axes
    sgn = torch.sign(rot)
    pos = sgn * cen[:, None, :]  # (P, 3, 3): B's centre along A's axis k (when parallel)
    keep_a = torch.ones(h.shape[0], 6, dtype=torch.bool)
    keep_b = torch.ones(h.shape[0], 6, dtype=torch.bool)
    touching = torch.zeros(h.shape[0], dtype=torch.bool)
    tl = tol[:, None, None]
    gl = g[:, None, :]
    hk = h[:, :, None]
    for ia, sa in enumerate((1.0, -1.0)):  # A face at x_k = sa * h_k
        fa = sa * hk
        inside = (fa >= pos - gl - tl) & (fa <= pos + gl + tl)
        opp = (fa - (pos - sa * gl)).abs() <= tl  # B's face with the opposite outward normal
        touching |= (par & opp).flatten(1).any(1)
        keep_a[:, ia::2] = ~(par & ~inside).any(2)  # coplanar with the same normal: A's copy counts
    for ib, sb in enumerate((1.0, -1.0)):  # B face (l, sb) sits at pos + sign * sb * g_l along A's axis k
        fb = pos + sgn * sb * gl
        inside = (fb >= -hk - tl) & (fb <= hk + tl)
        same = (fb - sgn * sb * hk).abs() <= tl  # A's face with the same outward normal
        keep_b[:, ib::2] = ~(par & (~inside | same)).any(1)
    return keep_a, keep_b, touching


def _face_lines(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, par: Tensor) -> Tensor:
    """The other box's 6 planes restricted to each of A's 6 faces, as normalised 2-D half-planes (float64).

    Face ``(k, s)`` (``k = 0, 0, 1, 1, 2, 2``, ``s = +, -``) has coordinates ``(x_i, x_j)``, ``i = k+1, j = k+2``.
    B's slab ``l`` there reads ``|alpha x_i + beta x_j + gamma| <= g_l``; divided by ``rho = hypot(alpha, beta)``
    it is ``-lo <= nx x + ny y <= hi``. Slabs parallel to the face (``par``) become ``-1 <= 0 <= 1`` (always
    inside): the caller decides those faces all-or-nothing.

    Returns:
        ``(P, 6, 3, 4)``: ``[nx, ny, hi, lo]`` of B's 3 slabs on each of A's 6 faces.
    """
    ks, ii, jj = [0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 0], [2, 2, 0, 0, 1, 1]
    sg = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=h.dtype)
    cen = (t[:, None, :] @ rot)[:, 0]  # (P, 3): B's centre along its own axes
    alpha, beta = rot[:, ii, :], rot[:, jj, :]  # (P, 6, 3)
    gamma = (h[:, ks] * sg)[:, :, None] * rot[:, ks, :] - cen[:, None, :]
    rho = torch.hypot(alpha, beta)
    any_par = bool(par.any())
    if any_par:
        off = par[:, ks, :]
        rho.masked_fill_(off, 1.0)
    gl = g[:, None, :]
    slabs = torch.stack([alpha / rho, beta / rho, (gl - gamma) / rho, (gl + gamma) / rho], -1)  # (P, 6, 3, 4)
    if any_par:
        slabs.masked_fill_(off[..., None], 0.0)[..., 2:].masked_fill_(off[..., None], 1.0)
    return slabs


_CLIP_TABLES: dict[int, Tensor] = {}


def _clip_table(k: int) -> Tensor:
    """What clipping a ``k``-gon by a slab ``lo <= u <= hi`` does, for each of the ``3**k`` vertex patterns.

    Row ``code = sum_i state_i 3**i`` (state 0: inside, 1: above ``hi``, 2: below ``lo``) is Sutherland-Hodgman
    by both lines in one walk round the polygon: vertex ``i`` is kept when inside, and edge ``(i, i+1)``
    contributes its cuts with the lines it crosses, in order along the edge. The columns:
    ``k + 6`` output slots (sources: ``0..k-1`` the vertices, ``k..k+3`` the four cuts; unused slots repeat
    slot 0, which closes the polygon; the last four are scratch space for the next step's cuts), then for
    each cut the two ends as indices into ``[d_hi, d_lo]`` (``(2, K)`` flattened) and into the vertices,
    then a flag. A convex polygon gains at most one vertex per line and at most four cuts; patterns that
    would need more (only rounding makes them) are flagged.
    """
    if k not in _CLIP_TABLES:
        rows = []
        for code in range(3**k):
            st = [(code // 3**i) % 3 for i in range(k)]
            out, cuts = [], []
            for i in range(k):
                j = (i + 1) % k
                if st[i] == 0:
                    out.append(i)
                for line in {(0, 1): [0], (1, 0): [0], (0, 2): [1], (2, 0): [1], (1, 2): [0, 1], (2, 1): [1, 0]}.get(
                    (st[i], st[j]), []
                ):
                    out.append(k + len(cuts))
                    cuts.append((line * k + i, line * k + j, i, j))
            flag = int(len(out) > k + 2 or len(cuts) > 4)
            if flag or not out:
                out, cuts = [0], []
            out += [out[0]] * (k + 2 - len(out)) + [0] * 4
            cuts += [(0, 0, 0, 0)] * (4 - len(cuts))
            rows.append(
                out + [c[0] for c in cuts] + [c[1] for c in cuts] + [c[2] for c in cuts] + [c[3] for c in cuts] + [flag]
            )
        _CLIP_TABLES[k] = torch.tensor(rows, dtype=torch.int64)
    return _CLIP_TABLES[k]


def _clip_polygons(rect: Tensor, slabs: Tensor) -> tuple[Tensor, Tensor]:
    """Sutherland-Hodgman: rectangles ``[-a, a] x [-b, b]`` clipped by slabs ``-lo <= nx x + ny y <= hi``.

    Static shapes: a convex polygon cut by a line gains at most one vertex, so after ``i`` slabs it has
    ``4 + 2 i`` slots (unused ones repeat a vertex), held in a ``(2, F, 4 + 2 i + 4)`` buffer whose last four
    slots take the next cuts. Each step looks the vertices' inside/above/below pattern up in
    ``_clip_table``, computes the (at most four) cuts with one lerp and gathers the new polygon: no cumsum,
    no scatter, no data-dependent shape.

    Args:
        rect: ``(F, 2)`` half sizes. slabs: ``(F, S, 4)`` as ``[nx, ny, hi, lo]``.

    Returns:
        ``(area (F,), bad (F,))``: ``bad`` flags sign patterns that rounding made non-convex, which the caller
        recomputes another way.
    """
    a, b = rect[:, 0:1], rect[:, 1:2]
    z = torch.zeros_like(a).expand(-1, 4)
    buf = torch.stack([torch.cat([a, -a, -a, a, z], 1), torch.cat([b, b, -b, -b, z], 1)])  # counter-clockwise
    bad = torch.zeros(rect.shape[0], dtype=torch.int64)
    for slab in slabs.unbind(1):
        k = buf.shape[2] - 4
        u = buf[0, :, :k] * slab[:, 0:1] + buf[1, :, :k] * slab[:, 1:2]  # (F, K)
        d = torch.stack([u - slab[:, 2:3], -u - slab[:, 3:4]], 1)  # (F, 2, K): > 0 outside hi, lo
        out = d > 0
        state = out[:, 0].to(buf.dtype) + 2 * out[:, 1].to(buf.dtype)
        code = (state @ (3.0 ** torch.arange(k, dtype=buf.dtype))).long()
        row = _clip_table(k).index_select(0, code)  # (F, K + 23)
        de = d.view(-1, 2 * k).gather(1, row[:, k + 6 : k + 14])  # (F, 8): first ends, then second ends
        pe = buf.gather(2, row[:, k + 14 : k + 22].expand(2, -1, -1))
        w = (de[:, :4] / (de[:, :4] - de[:, 4:])).nan_to_num(0.0, 0.0, 0.0)  # 0 for unused cuts
        buf[:, :, k:] = torch.lerp(pe[:, :, :4], pe[:, :, 4:], w)
        buf = buf.gather(2, row[:, : k + 6].expand(2, -1, -1))
        bad |= row[:, -1]
    x, y = buf[0, :, :-4], buf[1, :, :-4]
    area = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1)
    return area, bad.bool()


def _overlap_frames(ca, ra, ha, cb, rb, hb, clip_dtype: torch.dtype = torch.float64) -> Tensor:
    """Exact intersection volumes of paired boxes given as centre, axes (columns) and half sizes (float64).

    The set-up (relative pose, parallel and coplanar faces, the 2-D lines on each face) is float64; the
    clipping runs in ``clip_dtype`` (float32 for float32 inputs: its vertices are convex combinations, so
    the areas carry only float32 rounding).
    """
    rot = ra.transpose(1, 2) @ rb  # B's axes in A's frame
    t = ((cb - ca)[:, None, :] @ ra)[:, 0]  # B's centre in A's frame
    tol = _TOL_DIST * (ha.norm(dim=1) + hb.norm(dim=1))
    vol = torch.zeros(ca.shape[0], dtype=ca.dtype)
    idx = _sat_overlap(ha, hb, rot, t, tol).nonzero()[:, 0]
    if idx.numel() == 0:
        return vol
    h, g, r, tt, tl = ha[idx], hb[idx], rot[idx], t[idx], tol[idx]
    p = h.shape[0]
    keep_a, keep_b, touching, par = _parallel_faces(h, g, r, tt, tl, _parallel_axes(r))
    rt, tb = r.transpose(1, 2), -(tt[:, None, :] @ r)[:, 0]  # B's frame: A's axes, A's centre
    ii, jj = [1, 1, 2, 2, 0, 0], [2, 2, 0, 0, 1, 1]
    area = torch.empty(2, p, 6, dtype=clip_dtype)
    bad = torch.empty(2, p, 6, dtype=torch.bool)
    for start in range(0, p, _CHUNK):  # A's faces against B, then B's against A, as one batch of boxes
        c = slice(start, start + _CHUNK)
        a_side, b_side = (h[c], g[c], r[c], tt[c], par[c]), (g[c], h[c], rt[c], tb[c], par[c].transpose(1, 2))
        hh, *rest = [torch.cat(x) for x in zip(a_side, b_side)]
        slabs = _face_lines(hh, *rest)  # (2 chunk, 6, 3, 4)
        rect = torch.stack([hh[:, ii], hh[:, jj]], -1)  # (2 chunk, 6, 2)
        ar, bd = _clip_polygons(rect.flatten(0, 1).to(clip_dtype), slabs.flatten(0, 1).to(clip_dtype))
        area[:, c], bad[:, c] = ar.view(2, -1, 6), bd.view(2, -1, 6)
    area, bad = area.double(), bad.any(2).any(0)
    if bad.any():  # rounding gave a non-convex inside/outside pattern: the line-clipping formula instead
        o = bad.nonzero()[:, 0]
        area[:, o] = _areas_by_lines(h[o], g[o], r[o], tt[o], par[o], tl[o]).view(-1, 2, 6).transpose(0, 1)
    area_a, area_b = area[0] * keep_a, area[1] * keep_b
    # divergence theorem, origin at A's centre: B's face (l, s) is at distance g_l + s * (t . b_l)
    cen = -tb
    v = (h.repeat_interleave(2, 1) * area_a).sum(1) + (g.repeat_interleave(2, 1) * area_b).sum(1)
    v = v + (cen * (area_b[:, 0::2] - area_b[:, 1::2])).sum(1)
    v = (v / 3).clamp(min=0)
    v = torch.minimum(v, 8 * torch.minimum(h.prod(1), g.prod(1)))
    vol[idx] = torch.where(touching, torch.zeros_like(v), v)
    return vol


def _areas_by_lines(h: Tensor, g: Tensor, r: Tensor, tt: Tensor, par: Tensor, tl: Tensor) -> Tensor:
    """``(P, 12)`` face areas (A's 6, then B's 6) by ``_face_areas``: the fallback of the clipping."""
    rt = r.transpose(1, 2)
    tb = -(tt[:, None, :] @ r)[:, 0]
    return torch.cat([_face_areas(h, g, r, tt, par, tl), _face_areas(g, h, rt, tb, par.transpose(1, 2), tl)], 1)


def _pairwise(
    a: tuple[Tensor, ...], b: tuple[Tensor, ...], paired: bool, clip_dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """Volumes (and IoU) of all pairs (N, M), or of paired boxes (N,) when ``paired``."""
    n, m = a[0].shape[0], b[0].shape[0]
    if paired:
        ia, ib = torch.arange(n), torch.arange(m)
    else:
        ia, ib = torch.arange(n).repeat_interleave(m), torch.arange(m).repeat(n)
    ok = a[3][ia] & b[3][ib]
    vol = torch.zeros(ia.shape[0], dtype=torch.float64)
    sel = ok.nonzero()[:, 0]
    if sel.numel():
        fa, fb = [x[ia[sel]] for x in a[:3]], [x[ib[sel]] for x in b[:3]]
        vol[sel] = _overlap_frames(*fa, *fb, clip_dtype=clip_dtype)
    va, vb = 8 * a[2].prod(1)[ia], 8 * b[2].prod(1)[ib]
    union = va + vb - vol
    iou = torch.where(ok & (union > 0), vol / union.where(union > 0, torch.ones_like(union)), torch.zeros_like(vol))
    vol = torch.where(ok, vol, torch.zeros_like(vol))
    shape = (n,) if paired else (n, m)
    return vol.reshape(shape), iou.clamp(0, 1).reshape(shape)


def box3d_overlap(corners1: Tensor, corners2: Tensor, paired: bool = False) -> tuple[Tensor, Tensor]:
    """Exact intersection volume and IoU of arbitrarily rotated boxes given by their corners.

    Same interface as pytorch3d's ``box3d_overlap`` (corners in its order), but degenerate boxes (zero or
    negative size, NaN, inf) give 0 instead of an error. Geometry is set up and computed in float64; the
    outputs have the input dtype.

    Args:
        corners1: ``(N, 8, 3)``.
        corners2: ``(M, 8, 3)``.
        paired: score ``corners1[i]`` against ``corners2[i]`` only (needs N == M) and return ``(N,)``.

    Returns:
        ``(vol, iou)``, each ``(N, M)`` (or ``(N,)`` when ``paired``).

    Example:
        >>> a = box3d_corners(torch.tensor([[0.0, 0, 0, 2, 2, 2]]))
        >>> b = box3d_corners(torch.tensor([[1.0, 0, 0, 2, 2, 2, 0, 0, 0], [0.0, 0, 0, 2, 2, 2, 0.7854, 0, 0]]))
        >>> vol, iou = box3d_overlap(a, b)
        >>> vol.round(decimals=4), iou.round(decimals=4)
        (tensor([[4.0000, 6.6274]]), tensor([[0.3333, 0.7071]]))
    """
    if corners1.ndim != 3 or corners1.shape[1:] != (8, 3) or corners2.ndim != 3 or corners2.shape[1:] != (8, 3):
        raise ValueError(
            f"expected (N, 8, 3) and (M, 8, 3) corners, got {tuple(corners1.shape)} and {tuple(corners2.shape)}"
        )
    if paired and corners1.shape[0] != corners2.shape[0]:
        raise ValueError(
            f"paired=True needs as many boxes on both sides, got {corners1.shape[0]} and {corners2.shape[0]}"
        )
    dtype = corners1.dtype if corners1.is_floating_point() else torch.float32
    device = corners1.device
    a, b = _frames_from_corners(corners1.cpu()), _frames_from_corners(corners2.cpu())
    vol, iou = _pairwise(a, b, paired, _clip_dtype(dtype))
    return vol.to(device=device, dtype=dtype), iou.to(device=device, dtype=dtype)


def _clip_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 inputs are clipped in float64; anything coarser in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _frames_from_params(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    centre, sizes, rot = _split_boxes(boxes.double().cpu())
    half = sizes / 2
    return centre, rot, half, _valid(boxes.double().cpu(), half)


def box3d_iou(boxes1: Tensor, boxes2: Tensor, paired: bool = False) -> Tensor:
    """IoU of parameterised boxes ``(N, 6|7|9)`` against ``(M, 6|7|9)`` -> ``(N, M)`` (``(N,)`` if paired).

    Builds the box frames straight from the parameters (no corner round trip); degenerate boxes give 0.

    Example:
        >>> box3d_iou(torch.tensor([[0.0, 0, 0, 1, 1, 1]]), torch.tensor([[0.5, 0, 0, 1, 1, 1, 0, 0, 0]]))
        tensor([[0.3333]])
    """
    dtype = boxes1.dtype if boxes1.is_floating_point() else torch.float32
    b1, b2 = boxes1.reshape(-1, boxes1.shape[-1]), boxes2.reshape(-1, boxes2.shape[-1])
    if paired and b1.shape[0] != b2.shape[0]:
        raise ValueError(f"paired=True needs as many boxes on both sides, got {b1.shape[0]} and {b2.shape[0]}")
    _, iou = _pairwise(_frames_from_params(b1), _frames_from_params(b2), paired, _clip_dtype(dtype))
    return iou.to(device=boxes1.device, dtype=dtype)
