import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit3drft.rewards import boxes, polygon_clip
from lit3drft.rewards.box_geometry import box3d_corners, euler_to_matrix, matrix_to_euler, transform_boxes
from lit3drft.rewards.boxes import box3d_iou, box3d_overlap
from tests.rewards.reference import reference_volume


def random_boxes(n: int, gen: torch.Generator, spread: float = 1.0) -> torch.Tensor:
    centre = torch.rand(n, 3, generator=gen, dtype=torch.float64) * spread
    size = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 1.5 + 0.2
    angles = (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * 2 * math.pi
    return torch.cat([centre, size, angles], 1)


def test_matches_scipy_reference_float64():
    gen = torch.Generator().manual_seed(0)
    c1, c2 = box3d_corners(random_boxes(150, gen)), box3d_corners(random_boxes(150, gen))
    vol, iou = box3d_overlap(c1, c2, paired=True)
    ref = torch.tensor([reference_volume(a, b) for a, b in zip(c1.numpy(), c2.numpy())], dtype=torch.float64)
    assert (ref > 0).float().mean() > 0.5  # mostly overlapping, or the test says little
    torch.testing.assert_close(vol, ref, atol=1e-9, rtol=1e-9)
    vol1, vol2 = box3d_overlap(c1, c1, paired=True)[0], box3d_overlap(c2, c2, paired=True)[0]
    torch.testing.assert_close(iou, ref / (vol1 + vol2 - ref), atol=1e-9, rtol=1e-9)


def test_matches_scipy_reference_float32_all_pairs():
    gen = torch.Generator().manual_seed(1)
    c1, c2 = box3d_corners(random_boxes(12, gen).float()), box3d_corners(random_boxes(10, gen).float())
    vol, iou = box3d_overlap(c1, c2)
    assert vol.shape == (12, 10) and vol.dtype == torch.float32
    ref = [[reference_volume(a.double().numpy(), b.double().numpy()) for b in c2] for a in c1]
    torch.testing.assert_close(vol, torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=1e-5)


UNIT = [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("other", "vol", "iou"),
    [
        (UNIT, 1.0, 1.0),  # identical
        ([1.5, 0.5, 0.5, 1, 1, 1, 0, 0, 0], 0.0, 0.0),  # touching face to face
        ([1.5, 1.5, 0.5, 1, 1, 1, 0, 0, 0], 0.0, 0.0),  # touching along an edge
        ([1.5, 1.5, 1.5, 1, 1, 1, 0, 0, 0], 0.0, 0.0),  # touching at a corner
        ([3.0, 0.5, 0.5, 1, 1, 1, 0, 0, 0], 0.0, 0.0),  # apart
        ([1.0, 0.5, 0.5, 1, 1, 1, 0, 0, 0], 0.5, 1 / 3),  # half shifted, coplanar side faces
        ([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0, 0], 0.125, 0.125),  # nested
        ([0.25, 0.5, 0.5, 0.5, 1, 1, 0, 0, 0], 0.5, 0.5),  # nested, sharing five faces
        ([0.5, 0.5, 0.5, 1, 1, 1, math.pi / 2, 0, 0], 1.0, 1.0),  # same box, rotated a quarter turn
        ([0.5, 0.5, 1.0, 1, 1, 1, math.pi / 4, 0, 0], (math.sqrt(2) - 1) * 2 * 0.5, None),  # octagon prism
        ([0.5, 0.5, 0.5, 2, 2, 2, 0, 0, 0], 1.0, 1 / 8),  # contains
    ],
)
def test_hand_cases(other, vol, iou):
    # pytorch3d's and mmdet3d's published cases: unit cubes shifted, nested, touching, rotated about z
    a, b = torch.tensor([UNIT], dtype=torch.float64), torch.tensor([other], dtype=torch.float64)
    v, i = box3d_overlap(box3d_corners(a), box3d_corners(b))
    assert v.item() == pytest.approx(vol, abs=1e-12)
    if iou is not None:
        assert i.item() == pytest.approx(iou, abs=1e-12)
        assert box3d_iou(a, b).item() == pytest.approx(iou, abs=1e-12)


def test_octagon_prism_iou():
    # a square turned 45° about its centre overlaps in a regular octagon of area 2(sqrt 2 - 1) s^2
    a = torch.tensor([[0.0, 0, 0, 2, 2, 1, 0, 0, 0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0, 0, 2, 2, 1, math.pi / 4, 0, 0]], dtype=torch.float64)
    inter = 8 * (math.sqrt(2) - 1)
    assert box3d_iou(a, b).item() == pytest.approx(inter / (8 - inter), abs=1e-12)


@pytest.mark.parametrize(
    "bad", [[0, 0, 0, 0, 1, 1], [0, 0, 0, -1, 1, 1], [math.nan, 0, 0, 1, 1, 1], [0, 0, 0, math.inf, 1, 1]]
)
def test_degenerate_boxes_give_zero(bad):
    a = torch.tensor([[0.0, 0, 0, 1, 1, 1], bad], dtype=torch.float64)
    vol, iou = box3d_overlap(box3d_corners(a), box3d_corners(a))
    assert torch.isfinite(vol).all() and torch.isfinite(iou).all()
    if bad[3] >= 0:  # corners cannot carry a negative size (they describe the mirrored box)
        assert iou[1].tolist() == [0.0, 0.0] and iou[0, 0] == 1.0
    iou = box3d_iou(a, a)
    assert iou[1].tolist() == [0.0, 0.0] and iou[0, 0] == 1.0


@pytest.mark.parametrize("tilt", [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
@pytest.mark.parametrize("axis", [6, 7, 8])
def test_near_coplanar_faces(tilt, axis):
    """Faces tilted by 1e-7..1e-2 rad against a shared plane: exact against the float64 reference."""
    a = torch.tensor([0.0, 0, 0, 2, 2, 2, 0, 0, 0], dtype=torch.float64)
    b = a.clone()
    b[0], b[axis] = 0.7, tilt  # shifted along x, tilted about one axis: faces nearly coplanar
    ca, cb = box3d_corners(a[None]), box3d_corners(b[None])
    vol, _ = box3d_overlap(ca, cb)
    ref = reference_volume(ca[0].numpy(), cb[0].numpy())
    assert vol.item() == pytest.approx(ref, rel=1e-8, abs=1e-12)  # 1e-5 asked; rounding ~ 1e-16 / tilt


def test_tilted_copy_of_itself():
    for tilt in [1e-7, 1e-5, 1e-3]:
        b = torch.tensor([[0.0, 0, 0, 1, 2, 3, tilt, tilt, tilt]], dtype=torch.float64)
        a = torch.tensor([[0.0, 0, 0, 1, 2, 3, 0, 0, 0]], dtype=torch.float64)
        ref = reference_volume(box3d_corners(a)[0].numpy(), box3d_corners(b)[0].numpy())
        assert box3d_overlap(box3d_corners(a), box3d_corners(b))[0].item() == pytest.approx(ref, rel=1e-8)


box_st = st.tuples(*[st.floats(-1, 1)] * 3, *[st.floats(0.05, 2)] * 3, *[st.floats(-math.pi, math.pi)] * 3).map(
    lambda x: torch.tensor([x], dtype=torch.float64)
)


@settings(max_examples=40, deadline=None)
@given(box_st, box_st)
def test_iou_properties(a, b):
    ab, ba = box3d_iou(a, b).item(), box3d_iou(b, a).item()
    assert 0.0 <= ab <= 1.0
    assert ab == pytest.approx(ba, abs=1e-9)
    assert box3d_iou(a, a).item() == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(box_st, box_st, st.tuples(*[st.floats(-math.pi, math.pi)] * 3), st.tuples(*[st.floats(-5, 5)] * 3))
def test_rigid_motion_invariance(a, b, angles, shift):
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = euler_to_matrix(torch.tensor(angles, dtype=torch.float64))
    m[:3, 3] = torch.tensor(shift, dtype=torch.float64)
    before = box3d_iou(a, b).item()
    after = box3d_iou(transform_boxes(a, m), transform_boxes(b, m)).item()
    assert after == pytest.approx(before, abs=1e-9)


def test_transform_boxes_moves_corners():
    gen = torch.Generator().manual_seed(3)
    boxes = random_boxes(20, gen)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = euler_to_matrix(torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))
    m[:3, 3] = torch.tensor([1.0, -2.0, 0.5])
    moved = box3d_corners(transform_boxes(boxes, m))
    expected = box3d_corners(boxes) @ m[:3, :3].T + m[:3, 3]
    torch.testing.assert_close(moved, expected)


def test_euler_convention_is_zxy():
    # R = Rz(yaw) Rx(roll) Ry(pitch), as pytorch3d's euler_angles_to_matrix(angles, "ZXY")
    yaw, roll, pitch = 0.4, -0.3, 1.2
    rz = torch.tensor([[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(roll), -math.sin(roll)], [0, math.sin(roll), math.cos(roll)]])
    ry = torch.tensor([[math.cos(pitch), 0, math.sin(pitch)], [0, 1, 0], [-math.sin(pitch), 0, math.cos(pitch)]])
    r = euler_to_matrix(torch.tensor([yaw, roll, pitch]))
    torch.testing.assert_close(r, rz @ rx @ ry)
    torch.testing.assert_close(matrix_to_euler(r), torch.tensor([yaw, roll, pitch]))


def test_corner_order_matches_pytorch3d():
    corners = box3d_corners(torch.tensor([0.5, 0.5, 0.5, 1.0, 1.0, 1.0]))
    unit_box = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert corners.tolist() == unit_box
    assert box3d_corners(torch.zeros(2, 3, 7)).shape == (2, 3, 8, 3)


def test_seven_dof_is_yaw_only():
    seven = torch.tensor([[1.0, 2, 3, 1, 2, 3, 0.5]])
    nine = torch.tensor([[1.0, 2, 3, 1, 2, 3, 0.5, 0, 0]])
    torch.testing.assert_close(box3d_corners(seven), box3d_corners(nine))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="6, 7 or 9"):
        box3d_corners(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(N, 8, 3\)"):
        box3d_overlap(torch.zeros(2, 4, 3), torch.zeros(2, 8, 3))


def test_empty_inputs():
    vol, iou = box3d_overlap(torch.zeros(0, 8, 3), torch.zeros(3, 8, 3))
    assert vol.shape == (0, 3) and iou.shape == (0, 3)
    assert np.all(box3d_iou(torch.zeros(0, 9), torch.zeros(2, 9)).numpy() == 0)


def test_float32_clipping_matches_float64():
    """float32 inputs are clipped in float32 (set-up in float64): same volumes as float64 inputs to 1e-5."""
    gen = torch.Generator().manual_seed(5)
    boxes1, boxes2 = random_boxes(400, gen, spread=0.5), random_boxes(400, gen, spread=0.5)
    boxes2[:100, 6:] = boxes1[:100, 6:]  # parallel axes: the coplanar bookkeeping runs too
    boxes2[100:200, 6:] = boxes1[100:200, 6:] + 1e-4
    c1, c2 = box3d_corners(boxes1), box3d_corners(boxes2)
    vol64 = box3d_overlap(c1, c2, paired=True)[0]
    vol32, iou32 = box3d_overlap(c1.float(), c2.float(), paired=True)
    assert vol32.dtype == iou32.dtype == torch.float32
    torch.testing.assert_close(vol32.double(), vol64, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tilt", [1e-7, 1e-5, 1e-3, 1e-2])
def test_near_coplanar_faces_float32(tilt):
    a = torch.tensor([0.0, 0, 0, 2, 2, 2, 0, 0, 0])
    b = a.clone()
    b[0], b[6], b[7] = 0.7, tilt, tilt
    ca, cb = box3d_corners(a[None]), box3d_corners(b[None])
    ref = reference_volume(ca[0].double().numpy(), cb[0].double().numpy())
    assert box3d_overlap(ca, cb)[0].item() == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_all_pairs_equal_paired():
    gen = torch.Generator().manual_seed(6)
    c1, c2 = box3d_corners(random_boxes(9, gen).float()), box3d_corners(random_boxes(7, gen).float())
    vol, iou = box3d_overlap(c1, c2)
    pv, pi = box3d_overlap(c1.repeat_interleave(7, 0), c2.repeat(9, 1, 1), paired=True)
    assert torch.equal(vol.flatten(), pv) and torch.equal(iou.flatten(), pi)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fallback_of_the_clipping_agrees(monkeypatch, dtype):
    """Pairs whose clipping is flagged (rounding made a non-convex sign pattern) go to the line formula."""
    gen = torch.Generator().manual_seed(7)
    c1, c2 = box3d_corners(random_boxes(60, gen).to(dtype)), box3d_corners(random_boxes(60, gen).to(dtype))
    clipped = box3d_overlap(c1, c2, paired=True)[0]
    clip = boxes._clip_polygons
    monkeypatch.setattr(boxes, "_clip_polygons", lambda *a: (clip(*a)[0] * 0 + 5.0, torch.ones_like(clip(*a)[1])))
    fallback = box3d_overlap(c1, c2, paired=True)[0]
    assert (fallback > 0).float().mean() > 0.5
    torch.testing.assert_close(fallback, clipped, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)


def test_clip_table_is_sutherland_hodgman():
    """Slab clipping of a square by the table agrees with the exact area of square ∩ slab."""
    rect = torch.tensor([[1.0, 1.0]] * 5, dtype=torch.float64)
    inf = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)  # always inside
    cases = [  # (nx, ny, hi, lo) and the area of [-1, 1]^2 ∩ {-lo <= nx x + ny y <= hi}
        ([1.0, 0.0, 0.5, 0.5], 2.0),
        ([0.0, 1.0, 2.0, 0.0], 2.0),
        ([1.0, 0.0, 3.0, -2.0], 0.0),  # slab beside the square
        ([math.sqrt(0.5), math.sqrt(0.5), 0.0, 0.0], 0.0),  # empty slab through the centre
        ([math.sqrt(0.5), math.sqrt(0.5), math.sqrt(0.5), math.sqrt(0.5)], 3.0),  # corners cut off
    ]
    slabs = torch.stack([torch.stack([torch.tensor(c, dtype=torch.float64), inf, inf]) for c, _ in cases])
    area, bad = polygon_clip._clip_polygons(rect, slabs)
    assert not bad.any()
    torch.testing.assert_close(area, torch.tensor([a for _, a in cases], dtype=torch.float64))
