from __future__ import annotations

import numpy as np
import torch

from lit3drft.models import build_policy
from lit3drft.models.geometry import depth_ray_map, geometry_patches


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
    centre = m[1:, 23:25, 31:33].mean((1, 2))
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)


def test_geometry_prior_changes_outputs_only_when_enabled(make_cfg, samples):
    plain = build_policy(make_cfg()).eval()
    geo = build_policy(make_cfg(geometry="depth")).eval()
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


def test_vggt_without_package_is_a_clear_error(make_cfg):
    import pytest

    with pytest.raises((ImportError, ValueError), match="vggt"):
        build_policy(make_cfg(geometry="vggt"))
