"""Data: reading images and masks, dataset layouts and splits, check-data, paired transforms, a synthetic set.

The readers, the layout and the checks need only NumPy and Pillow and are imported at once; the torch/MONAI parts
(``SegmentationDataset``, transforms) and the synthetic generator (SciPy) are imported on first use, so that
``genmedseg check-data`` and ``predict`` start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

from genmedseg.data.checks import assert_dataset_ok, check_dataset, check_index, format_report
from genmedseg.data.io import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    MaskStats,
    decoded_image,
    image_to_float,
    mask_stats,
    read_image,
    read_label_map,
    read_mask,
    read_mask_with_stats,
    read_pair,
    read_probability_png,
    scale_to_unit_range,
    write_mask_png,
    write_probability_png,
)
from genmedseg.data.layout import (
    EXTRA_PREFIX,
    DatasetIndex,
    Problem,
    carve_validation,
    discover,
    list_images,
    with_extra_training,
)

_LAZY = {
    "SegmentationDataset": "genmedseg.data.dataset",
    "EpochShuffleSampler": "genmedseg.data.dataset",
    "augmentation_seed": "genmedseg.data.dataset",
    "train_transforms": "genmedseg.data.transforms",
    "eval_transforms": "genmedseg.data.transforms",
    "set_seed": "genmedseg.data.transforms",
    "resize_image": "genmedseg.data.transforms",
    "make_synthetic_dataset": "genmedseg.data.synthetic",
}

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "MaskStats",
    "decoded_image",
    "image_to_float",
    "mask_stats",
    "read_image",
    "read_label_map",
    "read_mask",
    "read_mask_with_stats",
    "read_pair",
    "read_probability_png",
    "scale_to_unit_range",
    "write_mask_png",
    "write_probability_png",
    "EXTRA_PREFIX",
    "DatasetIndex",
    "Problem",
    "carve_validation",
    "discover",
    "list_images",
    "with_extra_training",
    "assert_dataset_ok",
    "check_dataset",
    "check_index",
    "format_report",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
