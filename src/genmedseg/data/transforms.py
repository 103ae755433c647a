"""Paired image/mask transforms (MONAI dictionary transforms) with explicit normalisation.

Input dict: ``image`` C x H x W (uint8, uint16, bool or float in [0, 1]) and ``mask`` 1 x H x W (bool, integer
with foreground > 0, or float with foreground > 0.5), optionally ``labels`` 1 x H x W integer class ids. Output:
``image`` float32 C x S x S in [0, 1], ``mask`` float32 1 x S x S in {0, 1} and ``labels`` int64 1 x S x S (moved
and resized with the mask, nearest), as plain tensors.

Normalisation is decided by the dtype, never by the values: uint8 is divided by 255, uint16 by 65535, and float
input must already be in [0, 1] (anything else is refused). This avoids the albumentations ``ToFloat`` trap in which
the same code yields [0, 1] or [0, 1/255] depending on the library version (see Wave-GMS vs GMS).

Training augmentation (after resizing, all on image and mask together): flips on both axes (p 0.5 each),
RandRotate90 (p 0.5), colour jitter on the image (p 0.2: brightness, contrast, saturation, hue ±0.1), and
shift-scale-rotate (p 0.4: shift ±15 %, scale ±10 % per axis, rotation ±20°, zero padding, nearest for the mask),
then the image is clipped to [0, 1] and the mask re-binarised. Randomness is a pure function of the seed given to
:func:`set_seed`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandAffined,
    RandFlipd,
    Randomizable,
    RandomizableTransform,
    RandRotate90d,
)
from monai.utils import ensure_tuple_rep
from torch.nn import functional

from genmedseg.data.io import scale_to_unit_range

IMAGE_KEY = "image"
MASK_KEY = "mask"
LABELS_KEY = "labels"
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as torchvision and PIL use for grayscale


def _as_float_tensor(value: Any) -> torch.Tensor:
    return torch.as_tensor(value).to(torch.float32)


class ScaleToUnitRanged(MapTransform):
    """Convert images to float32 in [0, 1] by their dtype (:func:`genmedseg.data.io.scale_to_unit_range`).

    uint8 / 255, uint16 / 65535, bool as 0/1; float input must already be in [0, 1] and is never divided again.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = torch.from_numpy(scale_to_unit_range(np.asarray(out[key])))
        return out


class BinariseMaskd(MapTransform):
    """Make masks float32 {0, 1}: bool as is, integers foreground = value > 0, floats foreground = value > 0.5.

    Used at the start (any binary encoding in) and at the end of the pipeline (after interpolation).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            mask = torch.as_tensor(out[key])
            if mask.dtype == torch.bool:
                binary = mask
            elif mask.is_floating_point():
                binary = mask > 0.5
            else:
                binary = mask > 0
            out[key] = binary.to(torch.float32)
        return out


class ClipUnitRanged(MapTransform):
    """Clamp images to [0, 1] (interpolation and colour jitter can overshoot slightly)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = _as_float_tensor(out[key]).clamp(0.0, 1.0)
        return out


def _spatial_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def resize_image(image: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize a float ``C x H x W`` (or ``B x C x H x W``) tensor exactly as the evaluation transform does.

    ``bilinear``/``bicubic`` are anti-aliased (see :class:`AntialiasedResized`); use ``nearest-exact`` for masks.
    A tensor already at ``size`` is returned unchanged.
    """
    size = _spatial_size(size)
    if tuple(image.shape[-2:]) == size:
        return image
    smooth = mode in ("bilinear", "bicubic")
    batch = image if image.ndim == 4 else image[None]
    resized = functional.interpolate(
        batch, size=size, mode=mode, antialias=smooth, align_corners=False if smooth else None
    )
    return resized if image.ndim == 4 else resized[0]


class AntialiasedResized(MapTransform):
    """Resize C x H x W arrays to ``spatial_size`` with ``torch.nn.functional.interpolate``, one mode per key.

    ``bilinear``/``bicubic`` use torch's anti-aliasing (PIL-like, a proper box-weighted filter when shrinking), not
    MONAI's ``Resized(anti_aliasing=True)``, whose zero-padded Gaussian darkens image borders by up to ~15 %.
    ``nearest-exact`` samples pixel centres (PIL's NEAREST), unlike torch's legacy ``nearest``, which shifts thin
    structures by half a pixel.
    """

    def __init__(
        self, keys: Any, spatial_size: tuple[int, int], mode: Any = "bilinear", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = spatial_size
        self.mode = ensure_tuple_rep(mode, len(self.keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key, mode in self.key_iterator(out, self.mode):
            out[key] = resize_image(_as_float_tensor(out[key]), self.spatial_size, mode)
        return out


def _hue_rotation(angle: float) -> torch.Tensor:
    """3 x 3 matrix rotating RGB colours by ``angle`` radians about the gray axis (keeps gray and mean intensity)."""
    cos, sin = math.cos(angle), math.sin(angle)
    ones = torch.full((3, 3), (1.0 - cos) / 3.0)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) * (sin / math.sqrt(3.0))
    return torch.eye(3) * cos + ones + cross


class RandColorJitterd(RandomizableTransform, MapTransform):
    """With probability ``prob``, jitter brightness, contrast, saturation and hue of RGB images, in that order.

    Factors are drawn uniformly: brightness and contrast and saturation in ``[1 - x, 1 + x]``, hue shift in
    ``[-hue, hue]`` as a fraction of the colour circle (torchvision/albumentations convention). One coin decides
    for all four, as in albumentations' ``ColorJitter``. Contrast blends with the mean gray level, saturation with
    the per-pixel gray level; non-RGB images get brightness and contrast only.
    """

    def __init__(
        self,
        keys: Any,
        prob: float = 0.2,
        brightness: float = 0.1,
        contrast: float = 0.1,
        saturation: float = 0.1,
        hue: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self._factors = (1.0, 1.0, 1.0, 0.0)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._factors = (
                self.R.uniform(1 - self.brightness, 1 + self.brightness),
                self.R.uniform(1 - self.contrast, 1 + self.contrast),
                self.R.uniform(1 - self.saturation, 1 + self.saturation),
                self.R.uniform(-self.hue, self.hue),
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        for key in self.key_iterator(out):
            out[key] = self._jitter(_as_float_tensor(out[key]))
        return out

    def _jitter(self, image: torch.Tensor) -> torch.Tensor:
        brightness, contrast, saturation, hue = self._factors
        image = (image * brightness).clamp(0.0, 1.0)
        weights = torch.tensor(_LUMA_WEIGHTS).view(3, 1, 1) if image.shape[0] == 3 else None
        gray = (image * weights).sum(0, keepdim=True) if weights is not None else image
        image = ((image - gray.mean()) * contrast + gray.mean()).clamp(0.0, 1.0)
        if weights is None:
            return image
        gray = (image * weights).sum(0, keepdim=True)
        image = ((image - gray) * saturation + gray).clamp(0.0, 1.0)
        rotated = torch.einsum("ij,jhw->ihw", _hue_rotation(2.0 * math.pi * hue), image)
        return rotated.clamp(0.0, 1.0)


def _prepare_and_resize(size: tuple[int, int], image_key: str, mask_key: str) -> list[Any]:
    keys = [image_key, mask_key, LABELS_KEY]
    return [
        ScaleToUnitRanged(keys=image_key),
        BinariseMaskd(keys=mask_key),
        AntialiasedResized(
            keys=keys, spatial_size=size, mode=("bilinear", "nearest-exact", "nearest-exact"), allow_missing_keys=True
        ),
    ]


def _finish(image_key: str, mask_key: str) -> list[Any]:
    return [
        ClipUnitRanged(keys=image_key),
        BinariseMaskd(keys=mask_key),
        EnsureTyped(keys=[image_key, mask_key], data_type="tensor", dtype=torch.float32, track_meta=False),
        EnsureTyped(keys=LABELS_KEY, data_type="tensor", dtype=torch.int64, track_meta=False, allow_missing_keys=True),
    ]


def eval_transforms(
    image_size: int | tuple[int, int] = 224, image_key: str = IMAGE_KEY, mask_key: str = MASK_KEY
) -> Compose:
    """Deterministic evaluation pipeline: normalise by dtype, resize to ``image_size``, clip and binarise (class ids
    under ``labels``, when the input has them, follow the mask)."""
    size = _spatial_size(image_size)
    return Compose(_prepare_and_resize(size, image_key, mask_key) + _finish(image_key, mask_key))


def train_transforms(
    image_size: int | tuple[int, int] = 224,
    flip_prob: float = 0.5,
    rotate90_prob: float = 0.5,
    jitter_prob: float = 0.2,
    jitter_strength: float = 0.1,
    affine_prob: float = 0.4,
    shift_fraction: float = 0.15,
    scale_range: float = 0.1,
    rotate_degrees: float = 20.0,
    image_key: str = IMAGE_KEY,
    mask_key: str = MASK_KEY,
) -> Compose:
    """Training pipeline: the evaluation resize followed by the GMS/Wave-GMS augmentations (module docstring).

    Call :func:`set_seed` before each use to make the draw reproducible.
    """
    size = _spatial_size(image_size)
    keys = [image_key, mask_key, LABELS_KEY]
    augment = [
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=0, allow_missing_keys=True),
        RandFlipd(keys=keys, prob=flip_prob, spatial_axis=1, allow_missing_keys=True),
        RandRotate90d(keys=keys, prob=rotate90_prob, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True),
        RandColorJitterd(
            keys=image_key,
            prob=jitter_prob,
            brightness=jitter_strength,
            contrast=jitter_strength,
            saturation=jitter_strength,
            hue=jitter_strength,
        ),
        RandAffined(
            keys=keys,
            prob=affine_prob,
            rotate_range=(math.radians(rotate_degrees),),
            translate_range=(shift_fraction * size[0], shift_fraction * size[1]),
            scale_range=(scale_range, scale_range),
            mode=("bilinear", "nearest", "nearest"),
            padding_mode="zeros",
            allow_missing_keys=True,
        ),
    ]
    return Compose(_prepare_and_resize(size, image_key, mask_key) + augment + _finish(image_key, mask_key))


def set_seed(transform: Randomizable, seed: int) -> Randomizable:
    """Reseed ``transform`` (and every random transform inside a Compose) so its next draws depend only on ``seed``."""
    transform.set_random_state(seed=int(seed) % (2**32))
    return transform
