"""The exact 3D IoU of arbitrarily rotated boxes (``box3d_overlap`` on corners, ``box3d_iou`` on parameters).

The box conventions (9-DoF parameters, ZXY Euler angles, pytorch3d's corner order) and the transforms live in
``lit3drft.rewards.box_geometry``; they are re-exported here so that ``lit3drft.rewards.boxes`` keeps serving
every box name.

The overlap is exact (up to rounding). The intersection P = A ∩ B of two boxes is bounded by pieces of the
12 face planes, so by the divergence theorem ``vol(P) = 1/3 Σ_f d_f · area(P ∩ plane f)``, with ``d_f`` the
plane's distance from a common origin. Each face's area is a 2-D problem: the face rectangle cut by the
other box's three slabs, done by Sutherland-Hodgman with static shapes (``lit3drft.rewards.polygon_clip``),
all 12 faces of a batch of pairs at once. The geometry (relative pose, the 2-D lines, which faces are parallel
or coplanar) is set up in float64; float32 inputs are clipped in float32, whose vertices are convex
combinations, so the areas carry float32 rounding only. Degenerate configurations are
decided once and symmetrically: faces that lie in the same plane (within ``1e-9`` of the pair's scale) are
counted once, touching boxes are separated. Pairs that cannot overlap are rejected first by the
separating-axis test (15 axes). The earlier per-line formula (``_face_areas``: area as
``1/2 Σ_lines offset · length``) is kept as the fallback for the (not yet observed) faces whose sign pattern
rounding made non-convex.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit3drft.rewards.box_geometry import (
    _frames_from_corners,
    _frames_from_params,
    box3d_corners,
    euler_to_matrix,
    matrix_to_euler,
    transform_boxes,
)
from lit3drft.rewards.polygon_clip import _clip_polygons  # called through this module: tests and benchmarks patch it

__all__ = [
    "box3d_corners",
    "box3d_iou",
    "box3d_overlap",
    "euler_to_matrix",
    "matrix_to_euler",
    "transform_boxes",
]

_TOL_PAR = 1e-9  # sin(angle) under which two planes / lines count as parallel
_TOL_DIST = 1e-9  # relative to the pair's scale: planes / lines closer than this coincide
_BIG = 1e30  # stands for an unbounded line parameter (finite so that 0 * big stays 0)
_CHUNK = 1024  # pairs per batch of the exact stage (keeps temporaries in cache)


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


_FACE_AXES = ([0, 0, 1, 1, 2, 2], [1, 1, 2, 2, 0, 0], [2, 2, 0, 0, 1, 1])  # faces (k, +/-): k, i = k+1, j = k+2
_FACE_SIGNS = (1.0, -1.0, 1.0, -1.0, 1.0, -1.0)


def _face_slabs(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, par: Tensor) -> tuple[Tensor, Tensor | None]:
    """B's 3 slabs restricted to each of A's 6 faces, normalised: the set-up shared by both area formulas.

    Face ``(k, s)`` (``k = 0, 0, 1, 1, 2, 2``, ``s = +, -``) has coordinates ``(x_i, x_j)``, ``i = k+1, j = k+2``.
    B's slab ``l`` there reads ``|alpha x_i + beta x_j + gamma| <= g_l``; divided by ``rho = hypot(alpha, beta)``
    it is ``-lo <= nx x + ny y <= hi``. Slabs parallel to the face (``par``) are divided by 1 instead and
    returned in ``off`` for the caller to neutralise (``None`` when no slab is parallel).

    Args:
        h, g: ``(P, 3)`` half sizes of A and B. rot: ``(P, 3, 3)`` B's axes (columns) in A's frame.
        t: ``(P, 3)`` B's centre in A's frame. par: ``(P, 3, 3)`` bool.

    Returns:
        ``(slabs (P, 6, 3, 4) as [nx, ny, hi, lo], off (P, 6, 3) | None)``.
    """
    ks, ii, jj = _FACE_AXES
    sg = torch.tensor(_FACE_SIGNS, dtype=h.dtype)
    cen = (t[:, None, :] @ rot)[:, 0]  # (P, 3): B's centre along its own axes
    alpha, beta = rot[:, ii, :], rot[:, jj, :]  # (P, 6, 3)
    gamma = (h[:, ks] * sg)[:, :, None] * rot[:, ks, :] - cen[:, None, :]
    rho = torch.hypot(alpha, beta)
    off = par[:, ks, :] if bool(par.any()) else None
    if off is not None:
        rho.masked_fill_(off, 1.0)
    gl = g[:, None, :]
    return torch.stack([alpha / rho, beta / rho, (gl - gamma) / rho, (gl + gamma) / rho], -1), off


def _face_lines(h: Tensor, g: Tensor, rot: Tensor, t: Tensor, par: Tensor) -> Tensor:
    """The other box's 6 planes restricted to each of A's 6 faces, as normalised 2-D half-planes (float64).

    ``_face_slabs``, with slabs parallel to the face (``par``) made ``-1 <= 0 <= 1`` (always inside): the
    caller decides those faces all-or-nothing.

    Returns:
        ``(P, 6, 3, 4)``: ``[nx, ny, hi, lo]`` of B's 3 slabs on each of A's 6 faces.
    """
    slabs, off = _face_slabs(h, g, rot, t, par)
    if off is not None:
        slabs.masked_fill_(off[..., None], 0.0)[..., 2:].masked_fill_(off[..., None], 1.0)
    return slabs


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
    _, ii, jj = _FACE_AXES
    slabs, off = _face_slabs(h, g, rot, t, par)
    nx, ny, hi, lo = slabs.unbind(-1)  # (P, 6, 3) each; here the slab is lo <= u <= hi, so lo changes sign
    off = torch.zeros(P, 6, 3, dtype=torch.bool) if off is None else off  # slab parallel to the face -> left out
    nx = torch.where(off, torch.ones_like(nx), nx)
    ny = torch.where(off, torch.zeros_like(ny), ny)
    lo = torch.where(off, torch.full_like(lo, -_BIG), -lo)
    hi = torch.where(off, torch.full_like(hi, _BIG), hi)
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
    _, ii, jj = _FACE_AXES
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
