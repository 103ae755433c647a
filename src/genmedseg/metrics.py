"""Per-image binary segmentation metrics (Dice, IoU, HD95) shared by every method of genmedseg.

One definition, used by evaluation (numpy/scipy, on saved masks) and by validation during training
(:func:`batch_dice`, torch), so that the numbers a run logs and the numbers it reports agree.

Binarisation
    Bool arrays are used as they are; numeric arrays are binarised as ``value > THRESHOLD`` (0.5), so
    0/1 masks, 0/255 masks and probability maps all work. A probability of exactly 0.5 is background.

Surface and distances (HD95)
    The surface of a mask is ``mask XOR binary_erosion(mask)`` with the 3x3 cross (4-connectivity,
    ``scipy.ndimage.generate_binary_structure(2, 1)``); outside the image counts as background, so mask
    pixels on the image border are surface pixels. A directed surface distance is the Euclidean distance
    (``scipy.ndimage.distance_transform_edt``, in ``spacing`` units, pixels by default) from a surface
    pixel of one mask to the nearest surface pixel of the other. HD95 is the 95th percentile (numpy's
    linear interpolation) of the pooled distances of both directions, as in ``medpy.metric.binary.hd95``.
    MONAI instead takes the larger of the two directed 95th percentiles (see docs/metrics.md).

Empty-mask rule (no case is ever dropped, and a missed lesion costs)
    - both empty: Dice 1, IoU 1, HD95 0 (a correct rejection);
    - exactly one empty: Dice 0, IoU 0, HD95 = the image diagonal ``sqrt(H**2 + W**2)``;
    - both non-empty: the usual definitions.

    The diagonal (in ``spacing`` units) exceeds every distance between two pixels of the image, so a
    missed lesion or a hallucinated one scores worse than any detection. medpy raises on empty masks
    and the original Wave-GMS returned HD95 = 0 for them, which rewarded a miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import ndimage

THRESHOLD = 0.5
"""Foreground is ``value > THRESHOLD``, for predictions and ground truth, in numpy and in torch."""

METRIC_NAMES = ("dice", "iou", "hd95")

Spacing = float | Sequence[float] | None

# 4-connectivity: the same surface as medpy's default (connectivity=1) and as MONAI.
_SURFACE_STRUCTURE = ndimage.generate_binary_structure(2, 1)


def binarize(values: ArrayLike, threshold: float = THRESHOLD) -> np.ndarray:
    """Return the bool mask ``values > threshold`` (bool input is returned as it is)."""
    array = np.asarray(values)
    if array.dtype == np.bool_:
        return array
    return array > threshold


def mask_surface(mask: ArrayLike) -> np.ndarray:
    """Return the surface of a 2D mask: the mask pixels with a 4-neighbour outside it or off the image."""
    binary = binarize(mask)
    return binary ^ ndimage.binary_erosion(binary, structure=_SURFACE_STRUCTURE, border_value=0)


def directed_surface_distances(pred: ArrayLike, gt: ArrayLike, spacing: Spacing = None) -> np.ndarray:
    """Distances from every surface pixel of ``pred`` to the nearest surface pixel of ``gt``.

    Both masks must be non-empty. Distances are in ``spacing`` units (a number, or one value per axis
    as ``(row, column)``), pixels when ``spacing`` is None.
    """
    pred_mask, gt_mask = _binary_pair(pred, gt)
    if not pred_mask.any() or not gt_mask.any():
        raise ValueError(
            "directed_surface_distances needs two non-empty masks "
            f"(pred has {int(pred_mask.sum())} foreground pixels, gt has {int(gt_mask.sum())})"
        )
    return _directed_distances(mask_surface(pred_mask), mask_surface(gt_mask), _spacing_pair(spacing))


def dice(pred: ArrayLike, gt: ArrayLike) -> float:
    """Dice ``2|P & G| / (|P| + |G|)`` of two 2D masks; 1 when both are empty."""
    return _dice(*_binary_pair(pred, gt))


def iou(pred: ArrayLike, gt: ArrayLike) -> float:
    """Intersection over union ``|P & G| / |P | G|`` of two 2D masks; 1 when both are empty."""
    return _iou(*_binary_pair(pred, gt))


def hd95(pred: ArrayLike, gt: ArrayLike, spacing: Spacing = None) -> float:
    """95th percentile of the pooled symmetric surface distances (medpy's HD95) of two 2D masks.

    In pixels, or in ``spacing`` units (a number, or ``(row, column)`` spacing). Empty masks follow the
    module's empty-mask rule: both empty gives 0, exactly one empty gives the image diagonal.
    """
    pred_mask, gt_mask = _binary_pair(pred, gt)
    return _hd95(pred_mask, gt_mask, _spacing_pair(spacing))


def segmentation_metrics(pred: ArrayLike, gt: ArrayLike, spacing: Spacing = None) -> dict[str, float | bool]:
    """All per-image metrics of one prediction: ``dice, iou, hd95, gt_empty, pred_empty, pred_full`` (the last: every
    pixel predicted foreground, the other trivial answer a stuck model gives)."""
    pred_mask, gt_mask = _binary_pair(pred, gt)
    return {
        "dice": _dice(pred_mask, gt_mask),
        "iou": _iou(pred_mask, gt_mask),
        "hd95": _hd95(pred_mask, gt_mask, _spacing_pair(spacing)),
        "gt_empty": not gt_mask.any(),
        "pred_empty": not pred_mask.any(),
        "pred_full": bool(pred_mask.all()),
    }


def summarize(rows: Sequence[dict]) -> dict:
    """Mean, sample std (ddof=1; 0.0 for one image) and count of each metric over per-image rows.

    Every row counts: a row whose metric is NaN or infinite is an error, never skipped. Also returns
    how many images had an empty ground truth (``n_gt_empty``), an empty prediction (``n_pred_empty``) and a
    prediction that covers the whole image (``n_pred_full``, counted when the rows have ``pred_full``).
    """
    if not rows:
        raise ValueError("summarize got no rows: there is no image to summarize")
    summary: dict = {}
    for name in METRIC_NAMES:
        values = np.array([float(row[name]) for row in rows], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            where = ", ".join(_describe_row(rows, index) for index in bad[:5])
            raise ValueError(f"{name} is not finite in {bad.size} row(s): {where}; every image must have a value")
        summary[name] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "n": int(values.size),
        }
    summary["n_gt_empty"] = sum(bool(row["gt_empty"]) for row in rows)
    summary["n_pred_empty"] = sum(bool(row["pred_empty"]) for row in rows)
    summary["n_pred_full"] = sum(bool(row.get("pred_full", False)) for row in rows)
    return summary


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, d)`` and ``(m, d)``:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with sample covariances (ddof 1).

    The formula of FID, for any feature space; name the features when reporting it. ``scipy.linalg.sqrtm`` gives the
    matrix square root; when the product is singular (fewer samples than dimensions), 1e-6 is added to both
    diagonals, and the imaginary part that rounding leaves is dropped. Both sets need at least 2 samples.
    """
    from scipy import linalg

    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"feature sets of shapes {a.shape} and {b.shape}: need (n >= 2, d) and (m >= 2, d)")
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    trace = np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(np.real(root))
    return float(np.sum((mean_a - mean_b) ** 2) + trace)


def batch_dice(proba: torch.Tensor, target: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Per-image hard Dice (B,) of ``proba > threshold`` against ``target > THRESHOLD``, for validation.

    ``proba`` and ``target`` have the same shape with the batch first, e.g. (B, 1, H, W). Same
    binarisation and empty rule (both empty gives 1) as :func:`dice`, so that the Dice logged during
    training is the Dice that evaluation reports.
    """
    if proba.shape != target.shape:
        raise ValueError(f"proba and target shapes differ: {tuple(proba.shape)} vs {tuple(target.shape)}")
    if proba.ndim < 2:
        raise ValueError(f"batch_dice needs a batch of images (B, ...), got shape {tuple(proba.shape)}")
    pred_mask = (proba > threshold).flatten(1)
    target_mask = (target > THRESHOLD).flatten(1)
    # Integer counts: a float16 sum would lose pixels on large images.
    intersection = (pred_mask & target_mask).sum(dim=1)
    total = pred_mask.sum(dim=1) + target_mask.sum(dim=1)
    both_empty = total == 0
    ratio = 2.0 * intersection.double() / total.clamp(min=1).double()
    return torch.where(both_empty, torch.ones_like(ratio), ratio).float()


def _binary_pair(pred: ArrayLike, gt: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred_mask, gt_mask = binarize(pred), binarize(gt)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"pred and gt shapes differ: pred {pred_mask.shape} vs gt {gt_mask.shape}")
    if pred_mask.ndim != 2:
        raise ValueError(f"pred and gt must be 2D masks (H, W), got shape {pred_mask.shape}")
    return pred_mask, gt_mask


def _spacing_pair(spacing: Spacing) -> tuple[float, float]:
    if spacing is None:
        return (1.0, 1.0)
    pair = (float(spacing),) * 2 if np.isscalar(spacing) else tuple(float(value) for value in spacing)
    if len(pair) != 2 or not all(value > 0 and math.isfinite(value) for value in pair):
        raise ValueError(f"spacing must be a positive number or a (row, column) pair, got {spacing!r}")
    return pair


def _dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    total = int(pred_mask.sum()) + int(gt_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, gt_mask).sum()) / total


def _iou(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    union = int(np.logical_or(pred_mask, gt_mask).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(pred_mask, gt_mask).sum()) / union


def _hd95(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: tuple[float, float]) -> float:
    pred_empty, gt_empty = not pred_mask.any(), not gt_mask.any()
    if pred_empty and gt_empty:
        return 0.0
    if pred_empty or gt_empty:
        height, width = pred_mask.shape
        return math.hypot(height * spacing[0], width * spacing[1])
    pred_surface, gt_surface = mask_surface(pred_mask), mask_surface(gt_mask)
    pooled = np.concatenate(
        [_directed_distances(pred_surface, gt_surface, spacing), _directed_distances(gt_surface, pred_surface, spacing)]
    )
    return float(np.percentile(pooled, 95))


def _directed_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    # The EDT measures the distance to the nearest zero, so the target surface must be the zeros.
    return ndimage.distance_transform_edt(~to_surface, sampling=spacing)[from_surface]


def _describe_row(rows: Sequence[dict], index: int) -> str:
    name = rows[index].get("name")
    return f"row {index}" + (f" ({name})" if name is not None else "")
