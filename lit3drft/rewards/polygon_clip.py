"""Sutherland-Hodgman clipping of rectangles by slabs, with static shapes (the 2-D step of the exact 3D IoU).

Used by ``lit3drft.rewards.boxes``: each face of a box is a rectangle, the other box's three slabs cut it,
and the area of what is left enters the divergence-theorem volume. One slab per step, 4 -> 6 -> 8 -> 10
vertex slots, each step a table lookup of the vertices' inside/above/below pattern plus two gathers.
"""

from __future__ import annotations

import torch
from torch import Tensor

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
