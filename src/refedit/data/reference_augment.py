"""Paint-by-Example's exemplar augmentation, the one implementation both training paths use.

The authors' dataset (Fantasy-Studio/Paint-by-Example, ``ldm/data/open-images.py``) runs albumentations 0.4.3:
``Resize(224, 224)``, ``HorizontalFlip(p=0.5)``, ``Rotate(limit=20)`` (p=0.5), ``Blur(p=0.3)``,
``ElasticTransform(p=0.3)``, all with that version's defaults. Those defaults make the augmentation strong: the
rotation pads by reflection (OpenCV ``BORDER_REFLECT_101``), the blur is a box filter of 3, 5 or 7 px, and the
"elastic" transform is mostly a random affine warp (each of three anchor points moved by ``U(-50, 50)`` px, at
224 px) followed by a displacement field of uniform noise smoothed by a 50 px Gaussian times ``alpha=1``, which
moves pixels by a small fraction of a pixel. It is PbE's guard against learning to copy and paste.

Here the same operations run on tensors (any device), with the parameters drawn from a numpy generator, at the
authors' working size (``work_size=224``) whatever the reference's size: the strength stays the authors' relative to
the image, and the result is resized afterwards when another size is asked for. Geometry follows OpenCV
(``getRotationMatrix2D`` about ``(w/2, h/2)``, ``getAffineTransform``, bilinear sampling, reflect-101 borders); the
steps are not quantised to 8 bit in between as albumentations' uint8 pipeline is.
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d


def reflect101(coord: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel coordinates folded into [0, n-1] the way OpenCV's BORDER_REFLECT_101 extends an image (about the
    first and last pixel centres). Bilinear sampling at the folded coordinate equals sampling the extended image."""
    if n == 1:
        return torch.zeros_like(coord)
    period = 2.0 * (n - 1)
    c = torch.remainder(coord, period)
    return torch.where(c > n - 1, period - c, c)


def remap(x: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor) -> torch.Tensor:
    """``cv2.remap`` (bilinear, BORDER_REFLECT_101) of (B,C,H,W): ``out[..., i, j] = x at (map_x[i, j], map_y[i, j])``
    in pixel coordinates; maps are (B,H,W) or (H,W)."""
    h, w = x.shape[-2:]
    gx = reflect101(map_x, w) * (2.0 / max(w - 1, 1)) - 1
    gy = reflect101(map_y, h) * (2.0 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)
    if grid.dim() == 3:
        grid = grid[None].expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def warp_affine(x: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """``cv2.warpAffine(x, matrix, (w, h))`` (bilinear, BORDER_REFLECT_101): `matrix` (2,3) maps source pixels to
    output pixels, so each output pixel samples the source at the inverse map."""
    h, w = x.shape[-2:]
    inv = torch.from_numpy(cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))).to(x.device)
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float64),
                            torch.arange(w, device=x.device, dtype=torch.float64), indexing="ij")
    sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
    return remap(x, sx.float(), sy.float())


def rotation_matrix(angle: float, hw: tuple[int, int]) -> np.ndarray:
    """albumentations 0.4.3 ``F.rotate``: ``cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)`` (degrees,
    counter-clockwise on screen)."""
    h, w = hw
    return cv2.getRotationMatrix2D((w / 2, h / 2), float(angle), 1.0)


def elastic_anchors(hw: tuple[int, int]) -> np.ndarray:
    """The three points albumentations 0.4.3's ``elastic_transform`` moves: the centre +- a third of the short
    side (its ``center_square`` is built from (height, width) and used as (x, y), as here)."""
    h, w = hw
    center = np.float32((h, w)) // 2
    side = min(h, w) // 3
    return np.float32([center + side, [center[0] + side, center[1] - side], center - side])


@functools.lru_cache(maxsize=8)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix G with ``G @ v == scipy.ndimage.gaussian_filter1d(v, sigma)`` (mode 'reflect', truncate 4):
    the filter is linear, so its matrix is its response to the identity; two products replace the 2-D filter."""
    return gaussian_filter1d(np.eye(n), sigma, axis=0)


def smooth_noise(noise: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(noise, sigma)`` of a 2-D array, as two matrix products."""
    h, w = noise.shape
    return _gaussian_matrix(h, float(sigma)) @ noise @ _gaussian_matrix(w, float(sigma)).T


def elastic_fields(seed: int, hw: tuple[int, int], alpha: float, sigma: float, alpha_affine: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(affine matrix (2,3), dx (H,W), dy (H,W)) of albumentations 0.4.3's ``elastic_transform`` for one draw:
    anchors moved by ``U(-alpha_affine, alpha_affine)``, then ``gaussian_filter(U(-1, 1), sigma) * alpha`` per axis
    (``approximate=False``)."""
    h, w = hw
    rs = np.random.default_rng(seed)
    src = elastic_anchors(hw)
    dst = src + rs.uniform(-alpha_affine, alpha_affine, size=src.shape).astype(np.float32)
    matrix = cv2.getAffineTransform(src, dst)
    dx = np.float32(smooth_noise(rs.random((h, w)) * 2 - 1, sigma) * alpha)
    dy = np.float32(smooth_noise(rs.random((h, w)) * 2 - 1, sigma) * alpha)
    return matrix, dx, dy


class ReferenceAugment:
    """Paint-by-Example's exemplar augmentation (see the module docstring); defaults are the authors'.

    ``augment`` works on (B,3,h,w) tensors in [0, 1] on any device (the method's on-device path);
    ``__call__`` on one uint8 crop (the data path). Both draw one parameter set per image from the numpy
    generator they are given, so a sample is reproducible from its generator.
    """

    def __init__(self, work_size: int = 224, p_flip: float = 0.5, p_rotate: float = 0.5, max_angle: float = 20.0,
                 p_blur: float = 0.3, blur_kernels: tuple[int, ...] = (3, 5, 7), p_elastic: float = 0.3,
                 elastic_alpha: float = 1.0, elastic_sigma: float = 50.0, elastic_alpha_affine: float = 50.0) -> None:
        if int(work_size) < 8:
            raise ValueError(f"ReferenceAugment: work_size must be >= 8 px, got {work_size}")
        if any(int(k) < 1 or int(k) % 2 == 0 for k in blur_kernels):
            raise ValueError(f"ReferenceAugment: blur_kernels must be odd sizes >= 1, got {list(blur_kernels)}")
        self.work_size = int(work_size)
        self.p_flip, self.p_rotate, self.max_angle = float(p_flip), float(p_rotate), float(max_angle)
        self.p_blur, self.blur_kernels = float(p_blur), tuple(int(k) for k in blur_kernels)
        self.p_elastic = float(p_elastic)
        self.elastic_alpha, self.elastic_sigma = float(elastic_alpha), float(elastic_sigma)
        self.elastic_alpha_affine = float(elastic_alpha_affine)

    def draw(self, rng: np.random.Generator) -> dict[str, Any]:
        """One image's parameters, in the authors' order: {hflip, angle, blur (kernel), elastic (seed)} for the
        steps that apply."""
        params: dict[str, Any] = {}
        if rng.random() < self.p_flip:
            params["hflip"] = True
        if rng.random() < self.p_rotate:
            params["angle"] = float(rng.uniform(-self.max_angle, self.max_angle))
        if rng.random() < self.p_blur:
            params["blur"] = int(rng.choice(self.blur_kernels))
        if rng.random() < self.p_elastic:
            params["elastic"] = int(rng.integers(0, 2**31 - 1))
        return params

    def apply(self, x: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """(1,3,S,S) in [0, 1] at the working size -> the augmented image (not clamped)."""
        hw = tuple(x.shape[-2:])
        if params.get("hflip"):
            x = x.flip(-1)
        if "angle" in params:
            x = warp_affine(x, rotation_matrix(params["angle"], hw))
        if "blur" in params:
            k = params["blur"]
            x = kornia.filters.box_blur(x, (k, k), border_type="reflect")  # = cv2.blur's BORDER_REFLECT_101
        if "elastic" in params:
            matrix, dx, dy = elastic_fields(params["elastic"], hw, self.elastic_alpha, self.elastic_sigma,
                                            self.elastic_alpha_affine)
            x = warp_affine(x, matrix)
            yy, xx = torch.meshgrid(torch.arange(hw[0], dtype=torch.float32), torch.arange(hw[1], dtype=torch.float32),
                                    indexing="ij")
            x = remap(x, (xx + torch.from_numpy(dx)).to(x.device), (yy + torch.from_numpy(dy)).to(x.device))
        return x

    def augment(self, images: torch.Tensor, rng: np.random.Generator, out_size: int | None = None
                ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """(B,3,h,w) in [0, 1] -> (B,3,out,out) in [0, 1] and each image's parameters. Resized to the working size
        first (bilinear without antialiasing, as the authors' ``cv2.INTER_LINEAR``), to `out_size` at the end."""
        s = self.work_size
        x = images.float()
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        params = [self.draw(rng) for _ in range(x.shape[0])]
        x = torch.cat([self.apply(xi[None], p) for xi, p in zip(x, params)]).clamp(0, 1)
        if out_size is not None and int(out_size) != s:
            x = F.interpolate(x, size=(int(out_size),) * 2, mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
        return x, params

    def __call__(self, crop: np.ndarray, rng: np.random.Generator, out_size: int | None = None
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """uint8 (h, w, 3) crop -> float32 (3, out, out) in [-1, 1] (out = `out_size`, else the working size) and
        the drawn parameters."""
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255.0
        out, params = self.augment(x, rng, out_size)
        return out[0].mul_(2).sub_(1), params[0]
