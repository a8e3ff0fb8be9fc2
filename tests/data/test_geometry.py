import numpy as np
import pytest

from lit3drft.data.geometry import (
    box_corners,
    canonical_box,
    euler_zxy_to_matrix,
    look_at_cam2world,
    matrix_to_euler_zxy,
    rect_distance,
    rot_x,
    rot_y,
    rot_z,
    transform_box,
    world_box_to_camera,
)

rng = np.random.default_rng(0)


def random_box():
    return np.r_[
        rng.normal(size=3), rng.uniform(0.2, 2, 3), rng.uniform(-3, 3), rng.uniform(-1.4, 1.4), rng.uniform(-3, 3)
    ]


def corner_set_distance(a, b):
    return np.abs(a[:, None] - b[None]).sum(-1).min(1).max()


def test_euler_zxy_matches_rotation_product_and_round_trips():
    for _ in range(100):
        y, r, p = rng.uniform(-3, 3), rng.uniform(-1.5, 1.5), rng.uniform(-3, 3)
        m = euler_zxy_to_matrix(y, r, p)
        np.testing.assert_allclose(m, rot_z(y) @ rot_x(r) @ rot_y(p))
        np.testing.assert_allclose(euler_zxy_to_matrix(*matrix_to_euler_zxy(m)), m, atol=1e-6)


def test_corners_follow_pytorch3d_order():
    c = box_corners([0, 0, 0, 2, 4, 6, 0, 0, 0])
    np.testing.assert_allclose(c[0], [-1, -2, -3])
    np.testing.assert_allclose(c[6], [1, 2, 3])
    # 0-3 one face cyclic (z = -3), i + 4 adjacent to i
    assert np.all(c[:4, 2] == -3) and np.all(c[4:, 2] == 3)
    np.testing.assert_allclose(c[4:, :2], c[:4, :2])


def test_canonical_box_is_the_same_cuboid():
    for _ in range(200):
        b = random_box()
        assert corner_set_distance(box_corners(b), box_corners(canonical_box(b))) < 1e-6


def test_camera_world_camera_round_trip():
    for _ in range(50):
        c2w = look_at_cam2world(
            rng.uniform(0, 5, 3), rng.uniform(-3, 3), rng.uniform(-0.6, 0.3), rng.uniform(-0.1, 0.1)
        )
        world = np.r_[rng.uniform(0, 5, 3), rng.uniform(0.3, 2, 3), rng.uniform(-3, 3), 0, 0]
        cam = world_box_to_camera(world, c2w)
        back = transform_box(cam, c2w)
        assert corner_set_distance(box_corners(back), box_corners(world)) < 1e-6
        cam2 = world_box_to_camera(back, c2w)
        np.testing.assert_allclose(cam2, cam, atol=1e-6)


def test_look_at_is_opencv():
    c2w = look_at_cam2world(np.zeros(3), heading=0.0, pitch=0.0, roll=0.0)
    np.testing.assert_allclose(c2w[:3, 2], [1, 0, 0], atol=1e-12)  # z forward along +x
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)  # y down
    np.testing.assert_allclose(c2w[:3, 0], [0, -1, 0], atol=1e-12)  # x right
    assert np.isclose(np.linalg.det(c2w[:3, :3]), 1)


@pytest.mark.parametrize("seed", range(5))
def test_rect_distance_against_brute_force(seed):
    r = np.random.default_rng(seed)

    def rect():
        c, s, a = r.uniform(0, 4, 2), r.uniform(0.2, 1.5, 2), r.uniform(-3, 3)
        loc = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * s / 2
        return loc @ rot_z(a)[:2, :2].T + c

    a, b = rect(), rect()
    t = np.linspace(0, 1, 400)[:, None]
    pa = np.concatenate([a[i] + t * (a[(i + 1) % 4] - a[i]) for i in range(4)])
    pb = np.concatenate([b[i] + t * (b[(i + 1) % 4] - b[i]) for i in range(4)])
    brute = np.linalg.norm(pa[:, None] - pb[None], axis=-1).min()
    d = rect_distance(a, b)
    assert d == 0 or abs(d - brute) < 5e-3
