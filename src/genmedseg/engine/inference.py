"""Use a trained model: the Python API (``genmedseg.load``), ``evaluate`` on a split and ``predict`` on files.

Predictions are made at the model's input size and the probability map is resized (bilinear) back to each image's
original size before thresholding, so masks, metrics and HD95 are all at the original resolution. (The original
GMS / Wave-GMS code evaluates at 224 x 224 instead; ``resolution="model"`` reproduces that.)
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genmedseg.atomic import atomic_write
from genmedseg.data import discover, image_to_float, read_image, read_mask, resize_image, write_mask_png
from genmedseg.data.io import IMAGE_EXTENSIONS, write_probability_png
from genmedseg.engine.model_card import add_evaluation
from genmedseg.errors import ConfigError, DataError
from genmedseg.metrics import THRESHOLD, segmentation_metrics, summarize
from genmedseg.models.base import CARD_FILE, CONFIG_FILE, MEMORY_FORMAT, SegmentationMethod, load_pretrained

METRIC_COLUMNS = ("name", "dice", "iou", "hd95", "gt_empty", "pred_empty")
RESOLUTIONS = ("native", "model")


class Segmenter:
    """A trained model ready to segment images given as arrays (``genmedseg.load(path)`` returns one).

    Example::

        segmenter = genmedseg.load("runs/glas")
        mask = segmenter.predict(image)          # bool H x W at the image's own size
        proba = segmenter.predict_proba(image)   # float32 H x W in [0, 1]
    """

    def __init__(self, method: SegmentationMethod, image_size: int, folder: Path, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.method = method.to(self.device, memory_format=MEMORY_FORMAT).eval()
        self.image_size = image_size
        self.folder = folder

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Foreground probability (float32, H x W, in [0, 1]) of one image array (H x W, H x W x 3 or x 4)."""
        return self.predict_proba_batch([image_to_float(image)])[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Binary mask (bool, H x W) of one image array: probability above ``THRESHOLD``."""
        return self.predict_proba(image) > THRESHOLD

    def predict_proba_batch(self, images: list[np.ndarray], output_size: int | None = None) -> list[np.ndarray]:
        """Probabilities of float RGB images (H x W x 3 in [0, 1]), each at its own size or at ``output_size``."""
        batch = torch.stack([resize_image(torch.from_numpy(image).permute(2, 0, 1), self.image_size) for image in images])
        proba = self.method.predict_proba(batch.to(self.device, memory_format=MEMORY_FORMAT)).float()
        outputs = []
        for image, single in zip(images, proba):
            size = (output_size, output_size) if output_size else image.shape[:2]
            resized = F.interpolate(single[None], size=size, mode="bilinear", align_corners=False)
            outputs.append(resized[0, 0].clamp(0, 1).cpu().numpy())
        return outputs


def load(path: str | Path, device: str | None = None) -> Segmenter:
    """Load a trained model from a run folder (its ``model/``) or a model folder."""
    path = Path(path)
    folder = path / "model" if (path / "model" / CONFIG_FILE).is_file() else path
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{path}: no trained model here (expected {path}/model/{CONFIG_FILE} or {path}/{CONFIG_FILE}); "
            "a run gets its model folder when training finishes"
        )
    method = load_pretrained(folder)
    image_size = json.loads((folder / CONFIG_FILE).read_text())["training"]["image_size"]
    return Segmenter(method, image_size, folder, device)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def format_summary(summary: dict[str, Any]) -> str:
    """The mean ± std (n) lines of an evaluation summary, as the CLI and the demo print them."""
    return "\n".join(
        f"  {metric:5s} {summary[metric]['mean']:.4f} ± {summary[metric]['std']:.4f}  (n={summary[metric]['n']})"
        for metric in ("dice", "iou", "hd95")
    )


def evaluate(
    model_path: str | Path,
    data_root: str | Path,
    out: str | Path,
    split: str = "test",
    split_file: str | None = None,
    resolution: str = "native",
    batch_size: int = 8,
    device: str | None = None,
) -> dict[str, Any]:
    """Segment every image of ``split`` and write masks, probabilities, ``metrics.csv`` and ``summary.json``."""
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"resolution={resolution!r} is not one of {RESOLUTIONS}")
    segmenter = load(model_path, device)
    index = discover(data_root, split_file)
    if split not in index.splits or not index.splits[split]:
        raise ConfigError(f"{data_root}: no {split!r} split; splits here: {sorted(k for k, v in index.splits.items() if v)}")
    out = _prediction_folders(out)
    output_size = segmenter.image_size if resolution == "model" else None
    rows = []
    for names in _batches(index.splits[split], batch_size):
        images = [read_image(index.pairs[name][0]) for name in names]
        for name, proba in zip(names, segmenter.predict_proba_batch(images, output_size)):
            truth = read_mask(index.pairs[name][1])
            if output_size:
                truth = resize_image(torch.from_numpy(truth)[None].float(), output_size, mode="nearest")[0] > 0.5
                truth = truth.numpy()
            prediction, _ = _write_prediction(out, name, proba)
            rows.append({"name": name, **segmentation_metrics(prediction, truth)})
    summary = {
        **summarize(rows),
        "model": str(segmenter.folder.resolve()),
        "data": str(Path(data_root).resolve()),
        "split": split,
        "resolution": resolution,
    }
    _write_metrics(out / "metrics.csv", rows)
    atomic_write(out / "summary.json", lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    card = segmenter.folder / CARD_FILE
    if card.is_file():
        updated = add_evaluation(card.read_text(), summary["data"], split, summary)
        atomic_write(card, lambda path: path.write_text(updated))
    return summary


def _prediction_folders(out: str | Path) -> Path:
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "probabilities").mkdir(exist_ok=True)
    return out


def _write_prediction(out: Path, stem: str, proba: np.ndarray) -> tuple[np.ndarray, Path]:
    """Write ``masks/<stem>.png`` (thresholded) and ``probabilities/<stem>.png``; return the mask and its path."""
    mask, path = proba > THRESHOLD, out / "masks" / f"{stem}.png"
    write_mask_png(path, mask)
    write_probability_png(out / "probabilities" / f"{stem}.png", proba)
    return mask, path


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({key: _format(row[key]) for key in METRIC_COLUMNS})

    atomic_write(path, write)


def _format(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) else value


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in the given folders, in sorted order."""
    found: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        elif entry.is_file():
            found.append(entry)
        else:
            raise DataError(f"{entry}: no such file or folder")
    if not found:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, inputs))}")
    return found


def predict(
    model_path: str | Path, inputs: Iterable[str | Path], out: str | Path, batch_size: int = 8, device: str | None = None
) -> list[Path]:
    """Segment image files of any size; write ``out/masks/<stem>.png`` and ``out/probabilities/<stem>.png``.

    A file that cannot be read is reported and skipped; the others are still segmented.
    """
    segmenter = load(model_path, device)
    files, failures, written = find_images(inputs), [], []
    stems = [path.stem for path in files]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise DataError(f"several input files would write the same mask name: {', '.join(clashes)}; rename them")
    out = _prediction_folders(out)
    for chunk in _batches(files, batch_size):
        readable = []
        for path in chunk:
            try:
                readable.append((path, read_image(path)))
            except DataError as error:
                failures.append(str(error))
        if not readable:
            continue
        for (path, _), proba in zip(readable, segmenter.predict_proba_batch([image for _, image in readable])):
            written.append(_write_prediction(out, path.stem, proba)[1])
    if failures:
        raise DataError(
            f"{len(failures)} of {len(files)} files could not be read (the other masks were written):\n  "
            + "\n  ".join(failures)
        )
    return written
