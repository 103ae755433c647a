"""Properties of genmedseg.metrics that hold for every pair of masks, checked with hypothesis on random masks.

Which metrics are invariant to padding (adding background rows and columns around both masks):
- Dice and IoU: always (they count pixels of the masks only).
- HD95 between two non-empty masks: yes. The surface of a mask touching the border is the same before and after
  padding (outside the image counts as background), so every distance is unchanged.
- HD95 with exactly one empty mask: no. It is the image diagonal by the empty-mask rule, which grows with the
  padding; both empty gives 0 at any size.
"""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from genmedseg.metrics import batch_dice, dice, hd95, iou, segmentation_metrics

# Bounded and reproducible: the same examples in every run (no example database written to the repository).
PROPERTY = settings(max_examples=60, deadline=timedelta(seconds=2), derandomize=True, database=None)


@st.composite
def mask_pairs(draw: st.DrawFn, max_side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean masks of one random shape (1 to ``max_side`` pixels a side), empty and full ones included."""
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    masks = arrays(np.bool_, shape, elements=st.booleans())
    special = st.sampled_from([np.zeros(shape, dtype=bool), np.ones(shape, dtype=bool)])
    return draw(st.one_of(masks, special)), draw(st.one_of(masks, masks, special))


paddings = st.tuples(*[st.integers(0, 4)] * 4)


def _pad(mask: np.ndarray, padding: tuple[int, int, int, int]) -> np.ndarray:
    top, bottom, left, right = padding
    return np.pad(mask, ((top, bottom), (left, right)), constant_values=False)


@PROPERTY
@given(mask_pairs())
def test_metrics_are_symmetric(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    assert dice(pred, gt) == dice(gt, pred)
    assert iou(pred, gt) == iou(gt, pred)
    assert hd95(pred, gt) == hd95(gt, pred)


@PROPERTY
@given(mask_pairs())
def test_bounds_and_the_dice_iou_relation(pair: tuple[np.ndarray, np.ndarray]) -> None:
    pred, gt = pair
    d, j, h = dice(pred, gt), iou(pred, gt), hd95(pred, gt)
    assert 0.0 <= j <= d <= 1.0
    assert math.isclose(d, 2 * j / (1 + j), rel_tol=1e-12)
    diagonal = math.hypot(*pred.shape)
    assert 0.0 <= h <= diagonal
    if pred.any() and gt.any():
        # Two pixels of the image are at most hypot(H - 1, W - 1) apart: a detection always beats a miss.
        assert h <= math.hypot(pred.shape[0] - 1, pred.shape[1] - 1) < diagonal


@PROPERTY
@given(mask_pairs())
def test_identical_masks_score_perfectly(pair: tuple[np.ndarray, np.ndarray]) -> None:
    mask = pair[0]
    assert dice(mask, mask) == 1.0 and iou(mask, mask) == 1.0 and hd95(mask, mask) == 0.0


@PROPERTY
@given(mask_pairs())
def test_empty_mask_rules(pair: tuple[np.ndarray, np.ndarray]) -> None:
    mask = pair[0]
    empty = np.zeros_like(mask)
    both_empty = segmentation_metrics(empty, empty)
    assert (both_empty["dice"], both_empty["iou"], both_empty["hd95"]) == (1.0, 1.0, 0.0)
    if mask.any():
        for pred, gt in ((mask, empty), (empty, mask)):
            row = segmentation_metrics(pred, gt)
            assert (row["dice"], row["iou"]) == (0.0, 0.0)
            assert row["hd95"] == math.hypot(*mask.shape)
            assert row["gt_empty"] == (not gt.any()) and row["pred_empty"] == (not pred.any())


@PROPERTY
@given(mask_pairs(), paddings)
def test_padding_invariance_where_it_holds(pair: tuple[np.ndarray, np.ndarray], padding: tuple) -> None:
    pred, gt = pair
    padded_pred, padded_gt = _pad(pred, padding), _pad(gt, padding)
    assert dice(padded_pred, padded_gt) == dice(pred, gt)
    assert iou(padded_pred, padded_gt) == iou(pred, gt)
    if pred.any() == gt.any():  # both non-empty, or both empty
        assert math.isclose(hd95(padded_pred, padded_gt), hd95(pred, gt), rel_tol=1e-12, abs_tol=1e-12)
    else:  # exactly one empty: the diagonal of the padded image
        assert hd95(padded_pred, padded_gt) == math.hypot(*padded_pred.shape)


@PROPERTY
@given(mask_pairs(), st.integers(0, 7))
def test_flips_and_transposes_change_nothing(pair: tuple[np.ndarray, np.ndarray], symmetry: int) -> None:
    def move(mask: np.ndarray) -> np.ndarray:
        mask = mask.T if symmetry & 4 else mask
        return mask[:: -1 if symmetry & 1 else 1, :: -1 if symmetry & 2 else 1]

    pred, gt = pair
    assert dice(move(pred), move(gt)) == dice(pred, gt)
    assert math.isclose(hd95(move(pred), move(gt)), hd95(pred, gt), rel_tol=1e-12, abs_tol=1e-12)


@PROPERTY
@given(mask_pairs(), st.floats(0.1, 10.0))
def test_hd95_scales_with_an_isotropic_spacing(pair: tuple[np.ndarray, np.ndarray], spacing: float) -> None:
    pred, gt = pair
    assert math.isclose(hd95(pred, gt, spacing=spacing), spacing * hd95(pred, gt), rel_tol=1e-9, abs_tol=1e-12)


@PROPERTY
@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_batch_dice_agrees_with_dice(batch: int, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    proba = rng.random((batch, 1, height, width))
    proba[rng.random(proba.shape) < 0.1] = 0.5  # exactly the threshold: background in both
    target = (rng.random((batch, 1, height, width)) < rng.uniform(0, 1)).astype(np.float64)
    target[rng.integers(0, batch)] = 0.0  # an empty ground truth in every batch
    scores = batch_dice(torch.from_numpy(proba).float(), torch.from_numpy(target).float())
    expected = [dice(proba[i, 0], target[i, 0]) for i in range(batch)]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=0, atol=1e-6)
