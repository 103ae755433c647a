"""How good is a generated dataset: faithfulness to its masks, and realism, beside the real images of those masks.

``evaluate-synthetic SEG_RUN NEW_DIR`` reads ``NEW_DIR/provenance.json`` (written by ``genmedseg generate``), which
names the source mask of every synthetic pair; the real image of each source mask is found in the dataset the masks
came from. Then:

- **Faithfulness** (the paper's criterion): the segmenter ``SEG_RUN`` (any genmedseg segmentation run, trained on
  real data) segments every synthetic image; Dice against its conditioning mask, next to the same model's Dice on
  the real images of those masks. Both on the synthetic images' grid: the real image is resized to it (antialiased
  bilinear) and its mask with nearest-exact, i.e. the conditioning mask, so resolution does not favour either side.
  Foreground is every class id above 0 (segmenters are binary).
- **Realism**: the Fréchet distance between Gaussians fitted to encoder features of real and of synthetic images.
  The encoder is the frozen tiny-VAE encoder (TAESD family; ``--vae``, else ``GENMEDSEG_VAE``); an image's feature
  is the spatial mean and standard deviation of each latent channel. It is *not* FID (no Inception network), and
  its values are comparable only under the same encoder, image size and sample sizes. Its floor is the same distance
  between two random halves of the real images; the synthetic images are also compared with one real half at the
  same sample sizes, which is the comparison the floor is for (the distance grows as samples shrink).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmedseg.atomic import atomic_write
from genmedseg.data import discover, read_image, read_label_map, resize_image
from genmedseg.engine.inference import load_segmenter
from genmedseg.errors import ConfigError, DataError
from genmedseg.metrics import THRESHOLD, dice, frechet_distance, segmentation_metrics, summarize

DISTANCE_NAME = "Fréchet distance (TAESD-family encoder features: per-channel latent mean and std)"
PROVENANCE = "provenance.json"


def evaluate_synthetic(
    seg_run: str | Path,
    synthetic_dir: str | Path,
    out: str | Path | None = None,
    vae: str | None = None,
    batch_size: int = 8,
    sampling: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Faithfulness and realism of the generated dataset ``synthetic_dir`` (see the module docstring).

    Returns the summary (also written to ``out/summary.json``, with per-pair rows in ``out/metrics.csv``).
    ``sampling``: the segmenter's sampling options; ``seed``: the split of the real images into halves.
    """
    synthetic_dir = Path(synthetic_dir)
    provenance = read_provenance(synthetic_dir)
    segmenter = load_segmenter(seg_run, "evaluate-synthetic", device)
    pairs = provenance["pairs"]
    synthetic_images = [read_image(synthetic_dir / "images" / f"{pair['name']}.png") for pair in pairs]
    conditioning = [read_label_map(synthetic_dir / "masks" / f"{pair['name']}.png") > 0 for pair in pairs]
    grid = synthetic_images[0].shape[:2]
    grayscale = all(np.array_equal(image[..., 0], image[..., 2]) for image in synthetic_images)
    real = real_pairs_of(provenance)
    sources = list(dict.fromkeys(pair["source_mask"] for pair in pairs))
    missing = [source for source in sources if Path(source).name not in real]
    if missing:
        raise DataError(
            f"{synthetic_dir / PROVENANCE}: no real image for {len(missing)} source mask(s), e.g. {missing[0]}; the "
            f"masks must come from a dataset folder (images/ + masks/) that is still at {provenance.get('masks')}"
        )
    real_images, real_masks = [], []
    for source in sources:
        image_path, mask_path = real[Path(source).name]
        image, mask = _on_grid(read_image(image_path), read_label_map(mask_path) > 0, grid)
        real_images.append(image.mean(axis=2, keepdims=True).repeat(3, axis=2) if grayscale else image)
        real_masks.append(mask)

    names = [pair["name"] for pair in pairs]
    synthetic_rows, synthetic_masks = _segment(segmenter, synthetic_images, conditioning, names, batch_size, sampling)
    real_rows, real_predictions = _segment(segmenter, real_images, real_masks, sources, batch_size, sampling)
    real_dice = {source: row["dice"] for source, row in zip(sources, real_rows, strict=True)}
    gaps = [row["dice"] - real_dice[pair["source_mask"]] for row, pair in zip(synthetic_rows, pairs, strict=True)]

    from genmedseg.vae import load_tiny_vae

    encoder = load_tiny_vae(vae).to(segmenter.device)
    real_features = encoder_features(encoder, real_images, batch_size)
    synthetic_features = encoder_features(encoder, synthetic_images, batch_size)
    realism = realism_distances(real_features, synthetic_features, seed)
    summary = {
        "segmenter": str(Path(seg_run).resolve()),
        "synthetic": str(synthetic_dir.resolve()),
        "generator": provenance.get("model"),
        "generator_sampling": provenance.get("sampling"),
        "grid": list(grid),
        "grayscale": grayscale,
        "n_synthetic": len(pairs),
        "n_real": len(sources),
        "faithfulness": {
            "synthetic_vs_conditioning_mask": summarize(synthetic_rows),
            "real_vs_its_mask": summarize(real_rows),
            "dice_gap_mean": float(np.mean(gaps)),
            "control_synthetic_vs_another_mask": _mismatched_dice(synthetic_masks, conditioning, pairs),
            "control_real_vs_another_mask": _mismatched_dice(real_predictions, real_masks, None),
            "note": "Dice of the segmenter's mask on each synthetic image against the mask it was generated from, "
            "beside its Dice on the real images of those masks (same grid); the controls score the same predictions "
            "against the mask of another source (what a prediction that ignores the image's mask would get)",
        },
        "realism": {
            "name": DISTANCE_NAME,
            "encoder": {"source": str(vae) if vae else "GENMEDSEG_VAE or the default", **encoder.config},
            "feature_dims": int(real_features.shape[1]),
            **realism,
        },
    }
    if out is not None:
        _write(Path(out), summary, pairs, synthetic_rows, real_dice)
    return summary


def read_provenance(synthetic_dir: Path) -> dict[str, Any]:
    path = synthetic_dir / PROVENANCE
    if not path.is_file():
        raise DataError(
            f"{synthetic_dir}: no {PROVENANCE}; evaluate-synthetic takes a folder written by `genmedseg generate`, "
            "which names the source mask of every pair"
        )
    try:
        provenance = json.loads(path.read_text())
        if not provenance["pairs"]:
            raise KeyError("pairs")
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a provenance file of `genmedseg generate` ({error})") from None
    return provenance


def real_pairs_of(provenance: Mapping[str, Any]) -> dict[str, tuple[Path, Path]]:
    """Mask file name -> (real image, mask) in the dataset the masks came from (``provenance["masks"]``, absolute);
    by file name, because the recorded source paths may be relative to where ``generate`` ran."""
    masks_root = Path(provenance.get("masks") or "")
    if not (masks_root / "images").is_dir():
        return {}
    index = discover(masks_root, val_fraction=0.0)
    return {mask.name: (image, mask) for image, mask in index.pairs.values()}


def _on_grid(image: np.ndarray, mask: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A real image (antialiased bilinear) and its mask (nearest-exact) resized to the synthetic images' grid."""
    pixels = resize_image(torch.from_numpy(image).permute(2, 0, 1), grid).permute(1, 2, 0).numpy()
    labels = resize_image(torch.from_numpy(mask[None].astype(np.float32)), grid, mode="nearest-exact")[0].numpy()
    return np.ascontiguousarray(pixels, dtype=np.float32), labels > 0.5


def _segment(
    segmenter: Any,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    keys: Sequence[str],
    batch_size: int,
    sampling: Mapping[str, Any] | None,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Per-image metric rows of the segmenter's masks against ``masks``, and those binary masks."""
    rows, predicted = [], []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        maps = segmenter.predict_batch(list(images[chunk]), keys=list(keys[chunk]), sampling=sampling)
        for key, prediction, mask in zip(keys[chunk], maps, masks[chunk], strict=True):
            binary = prediction["probability"] > THRESHOLD
            rows.append({"name": key, **segmentation_metrics(binary, mask)})
            predicted.append(binary)
    return rows, predicted


def _mismatched_dice(
    predictions: Sequence[np.ndarray], masks: Sequence[np.ndarray], pairs: Sequence[Mapping[str, Any]] | None
) -> float | None:
    """Mean Dice of each prediction against the mask of the next item from another source (cyclically): the
    score of predictions that owe nothing to their own mask. None with a single source."""
    sources = [pair["source_mask"] for pair in pairs] if pairs is not None else list(range(len(masks)))
    if len(set(sources)) < 2:
        return None
    scores = []
    for i, prediction in enumerate(predictions):
        j = next(k % len(masks) for k in range(i + 1, i + len(masks)) if sources[k % len(masks)] != sources[i])
        scores.append(dice(prediction, masks[j]))
    return float(np.mean(scores))


@torch.no_grad()
def encoder_features(encoder: Any, images: Sequence[np.ndarray], batch_size: int = 8) -> np.ndarray:
    """``(n, 2C)`` features of RGB images in [0, 1]: each latent channel's spatial mean and standard deviation."""
    device = next(encoder.parameters()).device
    features = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in images[start : start + batch_size]])
        latents = encoder.encode(batch.to(device).float()).float().flatten(2)
        features.append(torch.cat([latents.mean(2), latents.std(2, unbiased=False)], dim=1).cpu())
    return torch.cat(features).double().numpy()


def realism_distances(real: np.ndarray, synthetic: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """The Fréchet distance of real vs synthetic features, its floor (two random halves of the real set), and the
    synthetic set (a random subset as large as the first half) against the second half: the floor's sample sizes."""
    if len(real) < 4 or len(synthetic) < 2:
        raise ConfigError(
            f"{len(real)} real and {len(synthetic)} synthetic images: the realism distance needs at least 4 real "
            "(two halves of 2) and 2 synthetic images"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(real))
    first, second = real[order[: len(real) // 2]], real[order[len(real) // 2 :]]
    subset = synthetic[rng.permutation(len(synthetic))[: len(first)]]
    return {
        "real_vs_synthetic": frechet_distance(real, synthetic),
        "floor_real_half_vs_real_half": frechet_distance(first, second),
        "synthetic_vs_real_half_same_sizes": frechet_distance(subset, second),
        "sizes": {"real": len(real), "synthetic": len(synthetic), "halves": [len(first), len(second)]},
        "split_seed": seed,
    }


def format_synthetic_summary(summary: Mapping[str, Any]) -> str:
    """A few lines for the terminal."""
    faith, realism = summary["faithfulness"], summary["realism"]
    synthetic, real = faith["synthetic_vs_conditioning_mask"]["dice"], faith["real_vs_its_mask"]["dice"]
    return "\n".join(
        [
            f"faithfulness (Dice of the segmenter vs the mask, grid {summary['grid'][0]}x{summary['grid'][1]}):",
            f"  synthetic images vs their conditioning masks: {synthetic['mean']:.4f} +- {synthetic['std']:.4f}"
            f" (n={synthetic['n']})",
            f"  real images of those masks:                   {real['mean']:.4f} +- {real['std']:.4f} (n={real['n']})",
            "  control, the same predictions vs another source's mask: synthetic"
            f" {_number(faith['control_synthetic_vs_another_mask'])},"
            f" real {_number(faith['control_real_vs_another_mask'])}",
            f"realism: {realism['name']}:",
            f"  real vs synthetic: {realism['real_vs_synthetic']:.4f}",
            f"  synthetic vs a real half (floor's sizes): {realism['synthetic_vs_real_half_same_sizes']:.4f};"
            f" floor (real half vs real half): {realism['floor_real_half_vs_real_half']:.4f}",
        ]
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _write(
    out: Path,
    summary: Mapping[str, Any],
    pairs: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    real_dice: Mapping[str, float],
) -> None:
    out.mkdir(parents=True, exist_ok=True)

    def write_rows(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "source_mask", "dice_synthetic", "dice_real"])
            for pair, row in zip(pairs, rows, strict=True):
                source = pair["source_mask"]
                writer.writerow([pair["name"], source, f"{row['dice']:.6f}", f"{real_dice[source]:.6f}"])

    atomic_write(out / "metrics.csv", write_rows)
    atomic_write(out / "summary.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
