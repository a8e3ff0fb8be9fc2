from __future__ import annotations

import numpy as np
import pytest
import torch

from lit3drft.models import build_policy
from lit3drft.models.geometry import depth_ray_map, geometry_patches, point_map


def test_geometry_patches_follow_the_processor_patch_order(lora_policy):
    """Feed one image through the real processor and through ``geometry_patches``: rows must coincide."""
    from PIL import Image

    ip = lora_policy.processor.image_processor
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)  # 4x6 patches: no resize
    out = ip(images=[Image.fromarray(img)], return_tensors="pt")
    grid = out["image_grid_thw"]
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    x = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - mean) / std
    rows = geometry_patches([[x]], grid, ip.patch_size, ip.merge_size, ip.temporal_patch_size)
    p = ip.patch_size
    pix = out["pixel_values"].view(-1, 3, ip.temporal_patch_size, p, p)[:, :, 0].reshape(len(rows), -1)
    assert torch.allclose(rows, pix, atol=1e-4)


def test_depth_ray_map_centre_ray_points_forward():
    k = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    m = depth_ray_map(np.full((48, 64), 3.0, np.float32), k)
    assert torch.allclose(m[0], torch.full((48, 64), float(np.log1p(3.0))))
    assert torch.allclose(m[1:].norm(dim=0), torch.ones(48, 64), atol=1e-5)
    centre = m[1:, 24, 32]  # the principal point (32, 24) is a pixel centre
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)


def test_point_map_puts_each_rendered_pixel_inside_its_objects_box_in_the_first_camera():
    """The renderer's depth and poses, through ``point_map``: every pixel the renderer says shows object j (in a
    frame the camera reached by walking) lies in j's box expressed in the *first* frame's camera."""
    from lit3drft.data.geometry import box_rotation, world_box_to_camera
    from lit3drft.data.render import render_frame
    from lit3drft.data.scene import SceneKnobs, make_scene

    scene = make_scene("pts", np.random.default_rng(3), SceneKnobs(frames=12))
    first, later = scene.cam2world[0], scene.cam2world[9]
    assert not np.allclose(first, later)
    _, depth, inst = render_frame(scene, later)
    m = point_map(depth, scene.intrinsics, later, first)
    assert torch.allclose(m[3], torch.log1p(torch.from_numpy(depth)))
    checked = 0
    for j, obj in enumerate(scene.objects):
        pix = torch.from_numpy(inst == j + 1)
        if pix.sum() < 5:
            continue
        box = world_box_to_camera(obj.box, first)
        pts = m[:3][:, pix].double().numpy().T  # (N, 3) in the first camera
        local = (pts - box[:3]) @ box_rotation(box)  # in the box's own axes
        assert (np.abs(local) <= box[3:6] / 2 + 2e-3).all(), obj.category
        checked += 1
    assert checked >= 2


def test_point_map_own_channels_put_each_pixel_inside_its_objects_box_in_its_own_camera():
    """``points_own``'s extra channels: every pixel of object j lies in j's box in the frame's *own* camera (the
    camera a grounding answer's box is given in), and the first four channels are ``points``' exactly."""
    from lit3drft.data.geometry import box_rotation, world_box_to_camera
    from lit3drft.data.render import render_frame
    from lit3drft.data.scene import SceneKnobs, make_scene

    scene = make_scene("own", np.random.default_rng(4), SceneKnobs(frames=12))
    first, later = scene.cam2world[0], scene.cam2world[8]
    _, depth, inst = render_frame(scene, later)
    m = point_map(depth, scene.intrinsics, later, first, own=True)
    assert m.shape[0] == 7 and torch.equal(m[:4], point_map(depth, scene.intrinsics, later, first))
    checked = 0
    for j, obj in enumerate(scene.objects):
        pix = torch.from_numpy(inst == j + 1)
        if pix.sum() < 5:
            continue
        box = world_box_to_camera(obj.box, later)
        local = (m[4:][:, pix].double().numpy().T - box[:3]) @ box_rotation(box)
        assert (np.abs(local) <= box[3:6] / 2 + 2e-3).all(), obj.category
        wrong = world_box_to_camera(obj.box, first)  # the first camera's box does not hold them
        assert not (
            np.abs((m[4:][:, pix].double().numpy().T - wrong[:3]) @ box_rotation(wrong)) <= wrong[3:6] / 2 + 2e-3
        ).all()
        checked += 1
    assert checked >= 2


def test_points_prior_widens_into_points_own_unchanged(make_cfg, samples, tmp_path):
    """A trained ``points`` prior loads into ``points_own`` (own-camera channels at zero): the same logits; any
    other kind mismatch is refused with both kinds named."""
    from lit3drft.models.build import export_pretrained

    torch.manual_seed(1)
    pts = build_policy(make_cfg(geometry="points")).eval()
    with torch.no_grad():
        for p in pts.geometry.parameters():
            p.normal_(0, 0.05)
    path = export_pretrained(pts, tmp_path / "base", dtype=torch.float32)
    pts = build_policy(make_cfg(geometry="points", pretrained=str(path), preset="")).eval()
    own = build_policy(make_cfg(geometry="points_own", pretrained=str(path), preset="")).eval()
    assert own.geometry.embed[0].weight.shape[1] == 7 * own.geometry.patch**2
    with torch.no_grad():
        ref = pts(pts.collate(samples, with_answer=True)).logits
        assert torch.allclose(own(own.collate(samples, with_answer=True)).logits, ref, atol=1e-5)
        own.geometry.embed[0].weight[:, 4 * own.geometry.patch**2 :].normal_(0, 0.05)  # the new channels matter
        assert not torch.allclose(own(own.collate(samples, with_answer=True)).logits, ref, atol=1e-4)
    with pytest.raises(ValueError, match="made for model.geometry=points.*model.geometry=depth"):
        build_policy(make_cfg(geometry="depth", pretrained=str(path), preset=""))


@pytest.mark.parametrize("kind", ["depth", "points", "points_own"])
def test_geometry_prior_changes_outputs_only_when_enabled(make_cfg, samples, kind):
    plain = build_policy(make_cfg()).eval()
    geo = build_policy(make_cfg(geometry=kind)).eval()
    batch_plain, batch_geo = plain.collate(samples, with_answer=True), geo.collate(samples, with_answer=True)
    assert "geometry_values" in batch_geo and "geometry_values" not in batch_plain
    with torch.no_grad():
        ref = plain(batch_plain).logits
        assert torch.equal(geo(batch_geo).logits, ref)  # zero-initialised merger: identity at the start
        torch.nn.init.normal_(geo.geometry.merger.mlp[-1].weight, std=0.5)
        changed = geo(batch_geo).logits
        assert not torch.allclose(changed, ref, atol=1e-3)
        samples[0].depth = [d * 2 for d in samples[0].depth]  # other depth, other output
        assert not torch.allclose(geo(geo.collate(samples, with_answer=True)).logits, changed, atol=1e-4)
    trainable = {n for n, p in geo.named_parameters() if p.requires_grad}
    assert any(n.startswith("geometry.") for n in trainable)
    # generation and log-probs agree with the prior on
    r = geo.generate_group(samples, num_generations=2, max_new_tokens=5)
    with torch.no_grad():
        assert torch.allclose(geo.sequence_logprobs(r), r.logprobs, atol=1e-4)


def test_points_prior_without_poses_is_a_clear_error(make_cfg, samples):
    geo = build_policy(make_cfg(geometry="points"))
    samples[1].cam2world = None
    with pytest.raises(ValueError, match="geometry=points needs Sample.cam2world.*test/1 has none"):
        geo.collate(samples, with_answer=True)


def test_vggt_without_package_is_a_clear_error(make_cfg):
    with pytest.raises((ImportError, ValueError), match="vggt"):
        build_policy(make_cfg(geometry="vggt"))
