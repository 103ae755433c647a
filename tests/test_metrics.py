"""genmedseg.metrics: hand-computed cases, the empty-mask rule, and agreement with medpy and MONAI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from genmedseg.metrics import (
    THRESHOLD,
    batch_dice,
    binarize,
    dice,
    directed_surface_distances,
    hd95,
    iou,
    mask_surface,
    segmentation_metrics,
    summarize,
)


def _square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _random_blob(rng: np.random.Generator, shape: tuple[int, int], area_fraction: float) -> np.ndarray:
    """Smoothed noise cut at a quantile: one or a few irregular blobs, some touching the image border."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=3)
    return field > np.quantile(field, 1 - area_fraction)


def _random_pairs(count: int, shape: tuple[int, int] = (40, 56), seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (_random_blob(rng, shape, rng.uniform(0.05, 0.4)), _random_blob(rng, shape, rng.uniform(0.05, 0.4)))
        for _ in range(count)
    ]


def _two_blob_case() -> tuple[np.ndarray, np.ndarray]:
    """gt = a 2x2 square plus one far pixel; pred = the square only (the pixel is missed)."""
    pred = _square((4, 12), 0, 0, 2)
    gt = pred.copy()
    gt[0, 10] = True
    return pred, gt


# --- hand-computed cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1, 3, 7])
@pytest.mark.parametrize("shape", [(32, 32), (20, 50)])
def test_square_shifted_sideways(shift: int, shape: tuple[int, int]) -> None:
    # Side-10 squares overlapping on 10 x (10 - shift) pixels. The right column of each square is
    # `shift` away from the other's right column, and no surface pixel is farther, so HD95 = shift.
    gt = _square(shape, 5, 5, 10)
    pred = _square(shape, 5, 5 + shift, 10)
    assert dice(pred, gt) == pytest.approx((10 - shift) / 10)
    assert iou(pred, gt) == pytest.approx((10 - shift) / (10 + shift))
    assert hd95(pred, gt) == pytest.approx(shift)


def test_square_shift_in_spacing_units() -> None:
    # (row, column) spacing: a 3-row shift is 3 * 2.0 mm, a 3-column shift is 3 * 0.5 mm.
    gt = _square((32, 32), 5, 5, 10)
    assert hd95(_square((32, 32), 8, 5, 10), gt, spacing=(2.0, 0.5)) == pytest.approx(6.0)
    assert hd95(_square((32, 32), 5, 8, 10), gt, spacing=(2.0, 0.5)) == pytest.approx(1.5)
    assert hd95(_square((32, 32), 5, 8, 10), gt, spacing=0.25) == pytest.approx(0.75)


def test_two_by_two_squares_one_apart() -> None:
    # Every pixel of a 2x2 square is surface; pooled distances 0,0,0,0,1,1,1,1 -> 95th percentile 1.
    gt = _square((4, 5), 0, 0, 2)
    pred = _square((4, 5), 0, 1, 2)
    assert dice(pred, gt) == pytest.approx(0.5)
    assert iou(pred, gt) == pytest.approx(1 / 3)
    assert hd95(pred, gt) == pytest.approx(1.0)


def test_single_pixels() -> None:
    pred = np.zeros((5, 6), dtype=bool)
    gt = np.zeros((5, 6), dtype=bool)
    pred[0, 0] = True
    gt[3, 4] = True
    assert segmentation_metrics(pred, gt) == {
        "dice": 0.0,
        "iou": 0.0,
        "hd95": pytest.approx(5.0),
        "gt_empty": False,
        "pred_empty": False,
        "pred_full": False,
    }
    assert segmentation_metrics(gt, gt)["dice"] == 1.0
    assert segmentation_metrics(gt, gt)["hd95"] == 0.0


def test_disjoint_squares() -> None:
    gt = _square((4, 9), 0, 0, 2)
    pred = _square((4, 9), 0, 5, 2)
    assert dice(pred, gt) == 0.0
    assert iou(pred, gt) == 0.0
    assert hd95(pred, gt) == pytest.approx(5.0)


def test_missed_second_blob() -> None:
    # Surface distances: pred->gt 0,0,0,0; gt->pred 0,0,0,0,9 (the far pixel to the square's corner).
    # Pooled: eight 0s and one 9; 95th percentile at rank 0.95 * 8 = 7.6 -> 0.6 * 9 = 5.4.
    pred, gt = _two_blob_case()
    assert dice(pred, gt) == pytest.approx(8 / 9)
    assert iou(pred, gt) == pytest.approx(4 / 5)
    assert hd95(pred, gt) == pytest.approx(5.4)
    assert sorted(directed_surface_distances(gt, pred)) == pytest.approx([0, 0, 0, 0, 9])


def test_surface_is_inner_boundary_with_4_connectivity() -> None:
    ring = _square((5, 5), 1, 1, 3)
    ring[2, 2] = False
    assert np.array_equal(mask_surface(_square((5, 5), 1, 1, 3)), ring)
    # Off the image is background: a mask filling the image has the image border as its surface.
    full = np.ones((4, 5), dtype=bool)
    assert mask_surface(full).sum() == 2 * 4 + 2 * 5 - 4
    # With the cross, a diagonal neighbour outside does not make a pixel surface: a plus-shaped
    # mask keeps its centre.
    plus = ndimage.generate_binary_structure(2, 1)
    padded = np.pad(plus, 1)
    assert not mask_surface(padded)[2, 2]


# --- the empty-mask rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred_empty", "gt_empty", "expected"),
    [
        (True, True, {"dice": 1.0, "iou": 1.0, "hd95": 0.0}),
        (True, False, {"dice": 0.0, "iou": 0.0, "hd95": 10.0}),
        (False, True, {"dice": 0.0, "iou": 0.0, "hd95": 10.0}),
        (False, False, {"dice": 1.0, "iou": 1.0, "hd95": 0.0}),
    ],
)
def test_empty_mask_rule(pred_empty: bool, gt_empty: bool, expected: dict) -> None:
    # A 6x8 image: diagonal sqrt(36 + 64) = 10.
    lesion = _square((6, 8), 2, 3, 2)
    empty = np.zeros((6, 8), dtype=bool)
    row = segmentation_metrics(empty if pred_empty else lesion, empty if gt_empty else lesion)
    assert row == {**expected, "gt_empty": gt_empty, "pred_empty": pred_empty, "pred_full": False}


def test_a_full_prediction_is_flagged() -> None:
    """Foreground everywhere is the other trivial answer of a stuck model; the row says so."""
    lesion = _square((6, 8), 2, 3, 2)
    row = segmentation_metrics(np.ones((6, 8), dtype=bool), lesion)
    assert row["pred_full"] and not row["pred_empty"]
    assert summarize([{"name": "a", **row}])["n_pred_full"] == 1


def test_empty_mask_diagonal_in_spacing_units() -> None:
    lesion = _square((6, 8), 2, 3, 2)
    empty = np.zeros((6, 8), dtype=bool)
    # sqrt((6 * 0.5)^2 + (8 * 0.25)^2) = sqrt(9 + 4)
    assert hd95(empty, lesion, spacing=(0.5, 0.25)) == pytest.approx(math.sqrt(13))
    assert hd95(empty, empty, spacing=(0.5, 0.25)) == 0.0


def test_a_miss_costs_more_than_the_worst_detection() -> None:
    # The farthest two pixels can be is corner to corner: sqrt(5^2 + 8^2) < the diagonal sqrt(6^2 + 9^2).
    far_apart_pred = np.zeros((6, 9), dtype=bool)
    far_apart_gt = np.zeros((6, 9), dtype=bool)
    far_apart_pred[0, 0] = True
    far_apart_gt[5, 8] = True
    worst_detection = hd95(far_apart_pred, far_apart_gt)
    assert worst_detection == pytest.approx(math.hypot(5, 8))
    assert hd95(np.zeros((6, 9), dtype=bool), far_apart_gt) == pytest.approx(math.hypot(6, 9))
    assert hd95(np.zeros((6, 9), dtype=bool), far_apart_gt) > worst_detection


# --- inputs --------------------------------------------------------------------------------------------


def test_numeric_masks_are_binarized_at_the_threshold() -> None:
    assert THRESHOLD == 0.5
    assert np.array_equal(binarize(np.array([0.0, 0.5, 0.51, 1.0, 255.0])), [False, False, True, True, True])
    pred, gt = _two_blob_case()
    as_uint8 = segmentation_metrics(pred.astype(np.uint8) * 255, gt.astype(np.uint8))
    as_proba = segmentation_metrics(np.where(pred, 0.9, 0.5), gt.astype(np.float32))
    assert as_uint8 == as_proba == segmentation_metrics(pred, gt)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        dice(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        hd95(np.zeros((3, 4)), np.zeros((4, 3)))


def test_rejects_non_2d_masks_and_bad_spacing() -> None:
    with pytest.raises(ValueError, match="2D"):
        iou(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))
    square = _square((8, 8), 2, 2, 3)
    for spacing in (0.0, (1.0, -1.0), (1.0, 1.0, 1.0)):
        with pytest.raises(ValueError, match="spacing"):
            hd95(square, square, spacing=spacing)


# --- summarize -----------------------------------------------------------------------------------------


def test_summarize_counts_every_row() -> None:
    rows = [
        {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "gt_empty": True, "pred_empty": True},
        {"dice": 0.0, "iou": 0.0, "hd95": 10.0, "gt_empty": False, "pred_empty": True},
        {"dice": 0.5, "iou": 0.25, "hd95": 2.0, "gt_empty": False, "pred_empty": False},
    ]
    summary = summarize(rows)
    assert summary["dice"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.5), "n": 3}
    assert summary["iou"]["mean"] == pytest.approx(1.25 / 3)
    assert summary["hd95"] == {"mean": pytest.approx(4.0), "std": pytest.approx(math.sqrt(28)), "n": 3}
    assert summary["n_gt_empty"] == 1
    assert summary["n_pred_empty"] == 2


def test_summarize_one_row_has_zero_std() -> None:
    summary = summarize([{"dice": 0.8, "iou": 0.6, "hd95": 3.0, "gt_empty": False, "pred_empty": False}])
    assert summary["dice"] == {"mean": 0.8, "std": 0.0, "n": 1}


def test_summarize_refuses_nan_and_no_rows() -> None:
    rows = [
        {"name": "a", "dice": 0.8, "iou": 0.6, "hd95": 3.0, "gt_empty": False, "pred_empty": False},
        {"name": "b", "dice": float("nan"), "iou": 0.6, "hd95": 3.0, "gt_empty": False, "pred_empty": False},
    ]
    with pytest.raises(ValueError, match=r"dice.*row 1 \(b\)"):
        summarize(rows)
    with pytest.raises(ValueError, match="no rows"):
        summarize([])


# --- batch_dice (training-time validation) -------------------------------------------------------------


def test_batch_dice_agrees_with_dice() -> None:
    rng = np.random.default_rng(1)
    # Two decimals: float16 keeps every value on the same side of the threshold (and keeps ties).
    proba = rng.uniform(size=(6, 1, 24, 20)).round(2).astype(np.float32)
    proba[0, 0, :5, :5] = THRESHOLD  # ties are background in both
    proba[4] = 0.0  # empty prediction against a non-empty target
    proba[5] = 0.0  # empty prediction against an empty target
    target = (rng.uniform(size=proba.shape) > 0.6).astype(np.float32)
    target[5] = 0.0
    expected = [dice(proba[i, 0], target[i, 0]) for i in range(len(proba))]
    result = batch_dice(torch.from_numpy(proba), torch.from_numpy(target))
    assert result.shape == (6,)
    assert result.dtype == torch.float32
    assert result.tolist() == pytest.approx(expected, abs=1e-6)
    assert result[4].item() == 0.0
    assert result[5].item() == 1.0
    half = batch_dice(torch.from_numpy(proba).half(), torch.from_numpy(target).half())
    assert half.tolist() == pytest.approx(expected, abs=1e-6)


def test_batch_dice_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(2, 1, 4, 4\).*\(2, 4, 4\)"):
        batch_dice(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4))


# --- agreement with medpy ------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [None, (0.7, 1.3)])
def test_agrees_with_medpy_on_random_blobs(spacing: tuple[float, float] | None) -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    for pred, gt in _random_pairs(8):
        assert dice(pred, gt) == pytest.approx(binary.dc(pred, gt), abs=1e-12)
        assert iou(pred, gt) == pytest.approx(binary.jc(pred, gt), abs=1e-12)
        assert hd95(pred, gt, spacing=spacing) == pytest.approx(binary.hd95(pred, gt, voxelspacing=spacing), abs=1e-9)


def test_medpy_raises_on_empty_masks_where_we_apply_the_rule() -> None:
    binary = pytest.importorskip("medpy.metric.binary")
    lesion = _square((6, 8), 2, 3, 2)
    empty = np.zeros((6, 8), dtype=bool)
    with pytest.raises(RuntimeError, match="does not contain any binary object"):
        binary.hd95(empty, lesion)
    with pytest.raises(RuntimeError, match="does not contain any binary object"):
        binary.hd95(empty, empty)
    assert hd95(empty, lesion) == pytest.approx(10.0)


# --- agreement and disagreement with MONAI -------------------------------------------------------------
# MONAI (checked with 1.6) finds the same surfaces (scipy erosion with the cross, after cropping with a
# one-pixel background margin) and the same exact Euclidean distances (a KD-tree over surface pixels),
# so its directed distance sets equal ours. Its HD95 differs in how they are aggregated: it takes the
# 95th percentile of each direction and keeps the larger, where medpy and genmedseg take the 95th
# percentile of both directions pooled. The two agree when both directions look alike (a shifted
# square) and differ when one direction has an outlier the other lacks (a missed far blob: it is 1 of 5
# distances in its own direction but 1 of 9 in the pooled set). It also returns NaN for any empty
# mask, and expects 0/1 values (its HD95 counts only the value 1 as foreground; 0/255 masks give NaN).


def _as_monai_batch(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]


def _monai_hd95(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    metrics = pytest.importorskip("monai.metrics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks; the value is what the tests check
        return metrics.compute_hausdorff_distance(
            _as_monai_batch(pred), _as_monai_batch(gt), include_background=True, percentile=95, spacing=spacing
        ).item()


def test_dice_iou_agree_with_monai_on_random_blobs() -> None:
    metrics = pytest.importorskip("monai.metrics")
    for pred, gt in _random_pairs(8, seed=2):
        p, g = _as_monai_batch(pred), _as_monai_batch(gt)
        assert dice(pred, gt) == pytest.approx(metrics.compute_dice(p, g, include_background=True).item(), abs=1e-6)
        assert iou(pred, gt) == pytest.approx(metrics.compute_iou(p, g, include_background=True).item(), abs=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # raised inside MONAI by its own deprecated argument
@pytest.mark.parametrize("spacing", [None, (0.7, 1.3)])
def test_monai_hd95_is_max_of_our_directed_percentiles(spacing: tuple[float, float] | None) -> None:
    monai_utils = pytest.importorskip("monai.metrics.utils")
    for pred, gt in _random_pairs(6, seed=3):
        ours_pg = directed_surface_distances(pred, gt, spacing)
        ours_gp = directed_surface_distances(gt, pred, spacing)
        _, (monai_pg, monai_gp), _ = monai_utils.get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(gt), spacing=spacing, symmetric=True
        )
        assert np.sort(monai_pg.numpy()) == pytest.approx(np.sort(ours_pg), abs=1e-5)
        assert np.sort(monai_gp.numpy()) == pytest.approx(np.sort(ours_gp), abs=1e-5)
        max_of_directed = max(np.percentile(ours_pg, 95), np.percentile(ours_gp, 95))
        assert _monai_hd95(pred, gt, spacing) == pytest.approx(max_of_directed, abs=1e-4)


def test_monai_hd95_agrees_on_a_shifted_square_and_differs_on_a_missed_blob() -> None:
    gt = _square((32, 32), 5, 5, 10)
    pred = _square((32, 32), 5, 8, 10)
    assert _monai_hd95(pred, gt) == pytest.approx(hd95(pred, gt)) == pytest.approx(3.0)

    pred, gt = _two_blob_case()
    # gt->pred alone: 0,0,0,0,9 -> rank 0.95 * 4 = 3.8 -> 0.8 * 9 = 7.2; pooled (ours, medpy): 5.4.
    assert _monai_hd95(pred, gt) == pytest.approx(7.2, abs=1e-5)
    assert hd95(pred, gt) == pytest.approx(5.4)


def test_monai_on_empty_and_0_255_masks() -> None:
    metrics = pytest.importorskip("monai.metrics")
    lesion = _square((6, 8), 2, 3, 2)
    empty = np.zeros((6, 8), dtype=bool)
    assert math.isnan(_monai_hd95(empty, lesion))
    assert math.isnan(_monai_hd95(empty, empty))
    # Dice with an empty ground truth is NaN by default (ignore_empty=True); ignore_empty=False is our rule.
    p, g = _as_monai_batch(empty), _as_monai_batch(empty)
    assert math.isnan(metrics.compute_dice(p, g, include_background=True).item())
    assert metrics.compute_dice(p, g, include_background=True, ignore_empty=False).item() == 1.0
    assert metrics.compute_iou(p, g, include_background=True, ignore_empty=False).item() == 1.0
    assert math.isnan(_monai_hd95(lesion * 255, lesion * 255))
    assert math.isnan(metrics.compute_dice(_as_monai_batch(lesion * 255), _as_monai_batch(lesion * 255)).item())
    assert hd95(lesion * 255, lesion * 255) == 0.0
