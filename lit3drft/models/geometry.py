"""The 3D geometry prior: per-patch geometry features, 2x2-merged, through a small MLP, added to visual tokens.

VG-LLM (and 3D-RFT's "3D prior") add geometry-encoder patch tokens element-wise to Qwen's visual embeddings.
Here the encoder is pluggable:

- ``none``: no module at all; the policy is exactly the plain Qwen model.
- ``depth``: a small trainable encoder over per-frame depth and camera-ray maps (``Sample.depth`` and
  ``Sample.intrinsics``; the synthetic benchmark renders them, real data can supply sensor depth).
- ``points``: the same encoder over point maps: every pixel's 3D point in the **first frame's camera**
  (from depth, intrinsics and the frames' poses, ``Sample.cam2world``), which is what VGGT's point head
  predicts from RGB alone; here it comes from the source's depth and poses (ScanNet's RGB-D sensor and
  its camera trajectory; the renderer's for the embedded benchmark), an oracle-geometry stand-in for VGGT.
- ``points_own``: ``points`` plus every pixel's 3D point in **its own frame's camera** (7 channels): what VGGT's
  point head and its depth head (with the camera head's intrinsics) give together. The grounding answer's box is
  in the answered frame's own camera, which ``points`` leaves the model to infer from depth and patch position
  alone; a ``points`` prior loads into it with the new channels' weights at zero (the same features at step 0).
- ``vggt``: a frozen VGGT aggregator loaded from a local checkpoint (needs the ``vggt`` package and weights).

Alignment with Qwen's tokens: the image processor flattens each frame into patches ordered
``(t, h/2, w/2, 2, 2)``, so the four patches of one merged visual token are consecutive rows of
``pixel_values``. ``geometry_patches`` lays the depth/ray maps out in exactly that order (one row per
patch, ``4 * patch**2`` values), so the encoder needs no knowledge of the grid: a linear patch embedding,
then groups of ``merge**2`` consecutive rows are concatenated and mapped by the MLP to the LLM width.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

GEOMETRY_CHANNELS = 4
"""Input channels per pixel of the ``depth`` encoder (log(1 + depth) and the unit camera-ray direction) and of the
``points`` encoder (the first camera's x, y, z and log(1 + depth))."""

CHANNELS: dict[str, int] = {
    "depth": GEOMETRY_CHANNELS,
    "points": GEOMETRY_CHANNELS,
    "points_own": GEOMETRY_CHANNELS + 3,
}
"""Input channels per pixel of each map-based prior: ``points_own`` appends the frame's own-camera x, y, z."""


def _pixel_rays(h: int, w: int, intrinsics: np.ndarray) -> Tensor:
    """``(3, H * W)`` float64 rays ``K^-1 [u, v, 1]`` (z = 1) through the pixel centres, which sit at integer
    coordinates (OpenCV/ScanNet; the renderer's intrinsics have ``cx = (W - 1) / 2``)."""
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)]).reshape(3, -1).double()
    return torch.linalg.inv(torch.as_tensor(intrinsics, dtype=torch.float64)) @ pix


def depth_ray_map(depth: np.ndarray, intrinsics: np.ndarray) -> Tensor:
    """``(4, H, W)`` map: ``log1p(depth)`` and the unit ray ``K^-1 [u, v, 1]`` of each pixel centre (pixel ``(u, v)``
    has its centre at the integer coordinates ``(u, v)``, the OpenCV/ScanNet convention the renderer's intrinsics use:
    ``cx = (W - 1) / 2``).

    Example:
        >>> m = depth_ray_map(np.full((4, 6), 2.0, np.float32), np.array([[3.0, 0, 3], [0, 3.0, 2], [0, 0, 1]]))
        >>> m.shape, round(float(m[1:].norm(dim=0).min()), 4), round(float(m[0, 0, 0]), 4)  # unit rays, log(1 + 2)
        (torch.Size([4, 4, 6]), 1.0, 1.0986)
    """
    h, w = depth.shape
    rays = _pixel_rays(h, w, intrinsics)
    rays = (rays / rays.norm(dim=0, keepdim=True)).reshape(3, h, w).float()
    d = torch.log1p(torch.as_tensor(depth, dtype=torch.float32).clamp_min(0)).unsqueeze(0)
    return torch.cat([d, rays])


def point_map(depth: np.ndarray, intrinsics: np.ndarray, cam2world: np.ndarray, first2world: np.ndarray,
              own: bool = False) -> Tensor:  # fmt: skip
    """``(4, H, W)`` map: each pixel's 3D point (metres) in the camera of ``first2world`` and ``log1p(depth)``;
    with ``own``, ``(7, H, W)``: then the point in the frame's own camera (``points_own``).

    ``depth`` is camera depth (z, OpenCV convention), ``cam2world`` the frame's pose, ``first2world`` the first
    frame's: every frame's points share one coordinate system, the one detection boxes are given in; the own-camera
    points are those a grounding answer's box is given in.

    Example:
        >>> k = np.array([[2.0, 0, 2], [0, 2.0, 2], [0, 0, 1]])
        >>> shifted = np.eye(4); shifted[0, 3] = 1.0  # this frame's camera sits 1 m right of the first's
        >>> m = point_map(np.full((4, 4), 3.0, np.float32), k, shifted, np.eye(4))
        >>> [round(float(v), 3) for v in m[:3, 3, 3]]  # pixel (3, 3): 1.5 m right of and below the axis
        [2.5, 1.5, 3.0]
        >>> [round(float(v), 3) for v in point_map(np.full((4, 4), 3.0, np.float32), k, shifted, np.eye(4), own=True)[4:, 3, 3]]
        [1.5, 1.5, 3.0]
    """
    h, w = depth.shape
    z = torch.as_tensor(depth, dtype=torch.float64).clamp_min(0).reshape(1, -1)
    cam = _pixel_rays(h, w, intrinsics) * z
    rel = torch.linalg.inv(torch.as_tensor(first2world, dtype=torch.float64)) @ torch.as_tensor(cam2world).double()
    pts = (rel[:3, :3] @ cam + rel[:3, 3:]).reshape(3, h, w).float()
    maps = [pts, torch.log1p(z.float()).reshape(1, h, w)]
    if own:
        maps.append(cam.reshape(3, h, w).float())
    return torch.cat(maps)


def geometry_patches(entries: list[list[Tensor]], grid_thw: Tensor, patch: int, merge: int, temporal: int) -> Tensor:
    """Per-patch rows ``(sum(t*h*w), C*patch*patch)`` in the order of the processor's ``pixel_values``.

    ``entries``: per image (one map) or per video (one map per frame), ``(C, H, W)`` maps; ``grid_thw``: the
    processor's ``image_grid_thw`` / ``video_grid_thw`` for the same entries. Like the processor, a video is
    padded with its last frame to a multiple of ``temporal``; the frames of one temporal patch are averaged.

    Example:
        >>> rows = geometry_patches([[torch.rand(4, 30, 50)]], torch.tensor([[1, 4, 6]]), patch=14, merge=2, temporal=2)
        >>> rows.shape
        torch.Size([24, 784])
    """
    rows = []
    for maps, (t, h, w) in zip(entries, grid_thw.tolist()):
        maps = list(maps) + [maps[-1]] * (t * temporal - len(maps)) if t > 1 else maps[:1]
        per_t = len(maps) // t
        for i in range(t):
            group = torch.stack(maps[i * per_t : (i + 1) * per_t]).float().mean(0)  # (C, H, W)
            x = F.interpolate(group[None], size=(h * patch, w * patch), mode="bilinear", align_corners=False)[0]
            c = x.shape[0]
            # (C, h/m, m, p, w/m, m, p) -> (h/m, w/m, m, m, C, p, p): Qwen's patch order, see module docstring
            x = x.reshape(c, h // merge, merge, patch, w // merge, merge, patch)
            rows.append(x.permute(1, 4, 2, 5, 0, 3, 6).reshape(h * w, c * patch * patch))
    return torch.cat(rows) if rows else torch.zeros(0, GEOMETRY_CHANNELS * patch * patch)


class PatchMerger(nn.Module):
    """``merge**2`` consecutive patch features -> LLM width (Qwen's merger shape: LN, Linear, GELU, Linear).

    The last layer starts at zero, so switching the prior on leaves a pretrained model unchanged at step 0.
    """

    def __init__(self, dim: int, out_dim: int, merge: int) -> None:
        super().__init__()
        self.group = merge * merge
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim * self.group, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:  # (N * merge**2, dim) -> (N, out_dim)
        return self.mlp(self.norm(x).reshape(-1, self.group * x.shape[-1]))


class DepthGeometryEncoder(nn.Module):
    """Trainable encoder of depth + ray maps: patch embedding (a stride-``patch`` conv as a Linear) + MLP."""

    def __init__(self, dim: int, out_dim: int, patch: int, merge: int, channels: int = GEOMETRY_CHANNELS) -> None:
        super().__init__()
        self.patch, self.merge, self.channels = patch, merge, channels
        self.embed = nn.Sequential(nn.Linear(channels * patch * patch, dim), nn.GELU(), nn.Linear(dim, dim))
        self.merger = PatchMerger(dim, out_dim, merge)

    def forward(self, geometry_values: Tensor, **_: object) -> Tensor:  # noqa: D417
        """``(num_patches, C*p*p)`` rows from ``geometry_patches`` -> ``(num_patches / merge**2, out_dim)``."""
        w = self.embed[0].weight
        return self.merger(self.embed(geometry_values.to(w.device, w.dtype)))


class VGGTGeometryEncoder(nn.Module):
    """Frozen VGGT aggregator (patch 14, like Qwen) on the frames resized to Qwen's grid, + trainable merger."""

    def __init__(self, path: str, out_dim: int, patch: int, merge: int) -> None:
        super().__init__()
        try:
            from vggt.models.vggt import VGGT
        except ImportError as e:
            raise ImportError(
                "model.geometry=vggt needs the `vggt` package (pip install git+https://github.com/facebookresearch/vggt) "
                "and a local checkpoint in model.vggt_path (e.g. a download of facebook/VGGT-1B)"
            ) from e
        if not path:
            raise ValueError("model.geometry=vggt needs model.vggt_path: a local VGGT checkpoint directory")
        self.vggt = VGGT.from_pretrained(path).eval().requires_grad_(False)
        self.patch, self.merge = patch, merge
        dim = 2 * self.vggt.aggregator.patch_embed.embed_dim  # frame + global attention tokens, concatenated
        self.merger = PatchMerger(dim, out_dim, merge)

    @torch.no_grad()
    def _tokens(self, frames: Tensor) -> Tensor:  # (F, 3, H, W) in [0, 1] -> (F, H/p * W/p, dim)
        tokens, start = self.vggt.aggregator(frames[None])
        return tokens[-1][0, :, start:]

    def forward(self, geometry_values: Tensor | None = None, geometry_frames: Tensor | None = None,
                grid_thw: Tensor | None = None) -> Tensor:  # fmt: skip
        """``geometry_frames`` ``(N, 3, H, W)`` in [0, 1] (one per image, H, W multiples of 14) -> merged rows."""
        if geometry_frames is None or grid_thw is None:
            raise ValueError("geometry=vggt needs geometry_frames and grid_thw in the batch (policy.collate adds them)")
        rows = []
        device = next(self.vggt.parameters()).device
        for img, (_, h, w) in zip(geometry_frames, grid_thw.tolist()):
            x = F.interpolate(img[None].float(), size=(h * self.patch, w * self.patch), mode="bilinear")
            tok = self._tokens(x.to(device))[0]  # (h*w, dim), row-major
            tok = tok.reshape(h // self.merge, self.merge, w // self.merge, self.merge, -1).permute(0, 2, 1, 3, 4)
            rows.append(tok.reshape(h * w, -1))
        return self.merger(torch.cat(rows).to(self.merger.norm.weight.dtype))


def build_geometry_encoder(
    kind: str, dim: int, out_dim: int, patch: int, merge: int, vggt_path: str = ""
) -> nn.Module | None:
    """The encoder for ``model.geometry`` (None for ``none``)."""
    if kind == "none":
        return None
    if kind in CHANNELS:
        return DepthGeometryEncoder(dim, out_dim, patch, merge, CHANNELS[kind])
    if kind == "vggt":
        return VGGTGeometryEncoder(vggt_path, out_dim, patch, merge)
    raise ValueError(f"unknown model.geometry {kind!r}; valid choices: none, depth, points, points_own, vggt")
