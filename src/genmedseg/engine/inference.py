"""Use a trained segmenter: the Python API (``genmedseg.load``), ``evaluate`` on a split and ``predict`` on files.

Images are resized to the model's input size; the method is asked for its answer on the metric grid: each image's
own size (``native``, the default), the input size (``model``, as the GMS / Wave-GMS papers evaluate) or N x N. A
method that answers at any resolution is queried there; the others' maps are resized (bilinear). Ground truth is
resized to the grid with ``nearest-exact`` (PIL's NEAREST, as the training pipeline), so masks, metrics and HD95 are
all on the grid. Every extra map of a prediction (e.g. ``uncertainty``) is written to a folder of its own.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmedseg.atomic import atomic_write
from genmedseg.config import BF16_PRECISION, FULL_PRECISION, INFERENCE_PRECISIONS
from genmedseg.data import discover, image_to_float, read_image, read_mask, resize_image, write_mask_png
from genmedseg.data.io import IMAGE_EXTENSIONS, write_probability_png
from genmedseg.engine.model_card import add_evaluation
from genmedseg.errors import ConfigError, DataError
from genmedseg.folders import EvaluationFolder, RunFolder, model_folder_of
from genmedseg.metrics import THRESHOLD, segmentation_metrics, summarize
from genmedseg.models.base import MEMORY_FORMAT, SegmentationMethod, image_generators
from genmedseg.models.registry import load_pretrained, require_role
from genmedseg.prompts import PromptSource, scale_boxes

METRIC_COLUMNS = ("name", "dice", "iou", "hd95", "gt_empty", "pred_empty", "pred_full")
RESOLUTIONS = ("native", "model")
SEED_OPTION = "seed"
"""A sampling option of this name seeds the per-image generators instead of reaching the method's ``predict``."""
PROBABILITY = "probability"


class Segmenter:
    """A trained segmentation model ready for image arrays or files (``genmedseg.load(path)`` returns one).

    Example::

        segmenter = genmedseg.load("runs/glas")
        mask = segmenter.predict("image.png")          # bool H x W at the image's own size
        proba = segmenter.predict_proba(image_array)   # float32 H x W in [0, 1]
        maps = segmenter.predict_maps(image_array, sampling={"ensemble": 5})  # probability, uncertainty, ...
    """

    def __init__(
        self, method: SegmentationMethod, folder: Path, device: str | None = None, precision: str = FULL_PRECISION
    ) -> None:
        if precision not in INFERENCE_PRECISIONS:
            raise ConfigError(f"--precision {precision!r}: choose {' or '.join(INFERENCE_PRECISIONS)}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.method = method.to(self.device, memory_format=MEMORY_FORMAT).eval()
        self.folder = folder
        self.precision = precision

    @property
    def image_size(self) -> int:
        return self.method.image_size

    def predict_maps(
        self, image: np.ndarray | str | os.PathLike, boxes: np.ndarray | None = None, sampling: Mapping | None = None
    ) -> dict[str, np.ndarray]:
        """``probability`` and every extra map (float32, H x W) of one image (array or file) at its own size.

        ``boxes``: ``(K, 4)`` boxes ``(x_min, y_min, x_max, y_max)`` in the image's pixels, for methods that take
        prompts. ``sampling``: the method's sampling options (``genmedseg models`` lists them).
        """
        array = read_image(image) if isinstance(image, (str, os.PathLike)) else image_to_float(image)
        prompts = None if boxes is None else [np.asarray(boxes, dtype=np.float32).reshape(-1, 4)]
        return self.predict_batch([array], prompts=prompts, sampling=sampling)[0]

    def predict_proba(
        self, image: np.ndarray | str | os.PathLike, boxes: np.ndarray | None = None, sampling: Mapping | None = None
    ) -> np.ndarray:
        """Foreground probability (float32, H x W, in [0, 1]) of one image (array or file)."""
        return self.predict_maps(image, boxes, sampling)[PROBABILITY]

    def predict(
        self, image: np.ndarray | str | os.PathLike, boxes: np.ndarray | None = None, sampling: Mapping | None = None
    ) -> np.ndarray:
        """Binary mask (bool, H x W) of one image (array or file): probability above ``THRESHOLD``."""
        return self.predict_proba(image, boxes, sampling) > THRESHOLD

    def predict_batch(
        self,
        images: Sequence[np.ndarray],
        sizes: Sequence[tuple[int, int]] | None = None,
        prompts: Sequence[np.ndarray] | None = None,
        keys: Sequence[str] | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """Maps of float RGB images (H x W x 3 in [0, 1]), each at ``sizes[i]`` (default: its own size).

        ``prompts[i]``: boxes ``(K, 4)`` in image ``i``'s pixels. ``keys[i]`` names image ``i`` for the per-image
        random generators of a sampling method (default: its position), so that its sample does not depend on the
        batch it is in.
        """
        options = self.method.resolve_sampling(sampling)
        seed = options.pop(SEED_OPTION, None)
        sizes = list(sizes or [image.shape[:2] for image in images])
        size = (self.image_size, self.image_size)
        batch = torch.stack([resize_image(torch.from_numpy(image).permute(2, 0, 1), size) for image in images])
        batch = batch.to(self.device, memory_format=MEMORY_FORMAT)
        boxes = (
            None
            if prompts is None
            else [
                torch.from_numpy(scale_boxes(boxes, image.shape[:2], size)).to(self.device)
                for boxes, image in zip(prompts, images, strict=True)
            ]
        )
        generators = None if seed is None else image_generators(seed, keys or map(str, range(len(images))))
        outputs: list[dict[str, np.ndarray]] = [{} for _ in images]
        for target, members in _group_by(sizes).items():
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, torch.bfloat16, self.precision == BF16_PRECISION),
            ):
                prediction = self.method.predict(
                    batch[members],
                    size=target,
                    prompts=None if boxes is None else [boxes[i] for i in members],
                    generator=None if generators is None else [generators[i] for i in members],
                    **options,
                )
            maps = {PROBABILITY: prediction.probability, **prediction.maps}
            for position, index in enumerate(members):
                outputs[index] = {
                    name: values[position, 0].float().clamp(0, 1).cpu().numpy() for name, values in maps.items()
                }
        return outputs


def _group_by(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(tuple(int(side) for side in size), []).append(index)
    return groups


def load(path: str | Path, device: str | None = None, precision: str = FULL_PRECISION) -> Any:
    """Load a trained model from a run folder (its ``model/``) or a model folder: a :class:`Segmenter` for a
    segmentation method, a :class:`~genmedseg.engine.generation.Synthesizer` for a generator.

    ``precision``: ``"bf16-mixed"`` segments under bfloat16 autocast (faster where bf16 is native: recent GPUs, AMX
    CPUs; probabilities within about 1e-2 of float32)."""
    folder = model_folder_of(path)
    method = load_pretrained(path)
    if method.role == "generator":
        from genmedseg.engine.generation import Synthesizer

        return Synthesizer(method, folder.path, device)
    return Segmenter(method, folder.path, device, precision)


def load_segmenter(
    path: str | Path, verb: str, device: str | None = None, precision: str = FULL_PRECISION
) -> Segmenter:
    """A :class:`Segmenter`, or an error naming the verbs that fit the model's role."""
    model = load(path, device, precision)
    require_role(model.method, verb)
    return model


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def format_summary(summary: dict[str, Any]) -> str:
    """The mean ± std (n) lines of an evaluation summary, as the CLI and the demo print them."""
    return "\n".join(
        f"  {metric:5s} {summary[metric]['mean']:.4f} ± {summary[metric]['std']:.4f}  (n={summary[metric]['n']})"
        for metric in ("dice", "iou", "hd95")
    )


def metric_grid(resolution: str | int, image_size: int, native: tuple[int, int]) -> tuple[int, int]:
    """The size metrics are computed at: ``native`` (the image's), ``model`` (the input size) or N (N x N)."""
    if resolution == "native":
        return native
    if resolution == "model":
        return image_size, image_size
    return int(resolution), int(resolution)


def check_resolution(resolution: str | int) -> str | int:
    """``native``, ``model`` or a positive integer (from the command line, text)."""
    if isinstance(resolution, int) or str(resolution).isdigit():
        if int(resolution) < 1:
            raise ConfigError(f"--resolution {resolution}: give a positive N, `native` or `model`")
        return int(resolution)
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"--resolution {resolution!r}: choose native, model or a number N (an N x N grid)")
    return resolution


def evaluate(
    model_path: str | Path,
    data_root: str | Path,
    out: str | Path,
    split: str = "test",
    split_file: str | None = None,
    resolution: str | int = "native",
    batch_size: int = 8,
    device: str | None = None,
    prompts: PromptSource | None = None,
    sampling: Mapping[str, Any] | None = None,
    precision: str = FULL_PRECISION,
) -> dict[str, Any]:
    """Segment every image of ``split`` and write masks, probabilities, extra maps, ``metrics.csv`` and
    ``summary.json`` (which records the metric grid, the prompts and the sampling behind the numbers)."""
    resolution = check_resolution(resolution)
    segmenter = load_segmenter(model_path, "evaluate", device, precision)
    options = segmenter.method.resolve_sampling(sampling)
    if prompts is not None and segmenter.method.prompt_kind is None:
        raise ConfigError(f"{segmenter.method.name} takes no prompts; leave out --prompts")
    index = discover(data_root, split_file)
    if split not in index.splits or not index.splits[split]:
        raise ConfigError(
            f"{data_root}: no {split!r} split; splits here: {sorted(k for k, v in index.splits.items() if v)}"
        )
    folder = _prediction_folders(out)
    rows, maps = [], set()
    position = {name: number for number, name in enumerate(index.splits[split])}
    for names in _batches(index.splits[split], batch_size):
        images = [read_image(index.pairs[name][0]) for name in names]
        truths = [read_mask(index.pairs[name][1]) for name in names]
        grids = [metric_grid(resolution, segmenter.image_size, truth.shape) for truth in truths]
        boxes = (
            None
            if prompts is None
            else [prompts.boxes_for(name, truth, position[name]) for name, truth in zip(names, truths, strict=True)]
        )
        predictions = segmenter.predict_batch(images, sizes=grids, prompts=boxes, keys=names, sampling=options)
        for name, truth, grid, prediction in zip(names, truths, grids, predictions, strict=True):
            if grid != truth.shape:
                truth = resize_image(torch.from_numpy(truth)[None].float(), grid, mode="nearest-exact")[0].numpy() > 0.5
            mask = _write_prediction(folder, name, prediction)
            maps.update(prediction)
            rows.append({"name": name, **segmentation_metrics(mask, truth)})
    summary = {
        **summarize(rows),
        "model": str(segmenter.folder.resolve()),
        "data": str(index.root.resolve()),
        "split": split,
        "resolution": resolution,
        "prompts": None if prompts is None else prompts.describe(),
        "sampling": options,
        "maps": sorted(maps - {PROBABILITY}),
    }
    _write_metrics(folder.metrics, rows)
    atomic_write(folder.summary, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    card = segmenter.folder / "README.md"
    if card.is_file():
        updated = add_evaluation(card.read_text(), summary["data"], split, summary)
        atomic_write(card, lambda path: path.write_text(updated))
    _record_evaluation(segmenter.folder, folder.path)
    return summary


def _record_evaluation(model_folder: Path, evaluation: Path) -> None:
    """Add the evaluation folder to its run's ``run.json`` (when the model is a run's), for the runs table."""
    run = RunFolder(model_folder.parent)
    if model_folder.name != run.model.path.name or not run.record.is_file():
        return
    try:
        record = json.loads(run.record.read_text())
    except ValueError:
        return
    folders = [entry for entry in record.get("evaluations", []) if entry != str(evaluation.resolve())]
    record["evaluations"] = [*folders, str(evaluation.resolve())]
    # A read-only run folder: the evaluation itself is written; only the runs table will not find it.
    with contextlib.suppress(OSError):
        atomic_write(run.record, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))


def _prediction_folders(out: str | Path) -> EvaluationFolder:
    folder = EvaluationFolder(Path(out))
    folder.masks.mkdir(parents=True, exist_ok=True)
    folder.probabilities.mkdir(exist_ok=True)
    return folder


def _write_prediction(folder: EvaluationFolder, stem: str, maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """Write ``masks/<stem>.png`` (thresholded), ``probabilities/<stem>.png`` and ``<map>/<stem>.png`` for every
    extra map; return the mask."""
    mask = maps[PROBABILITY] > THRESHOLD
    write_mask_png(folder.masks / f"{stem}.png", mask)
    for name, values in maps.items():
        target = folder.probabilities if name == PROBABILITY else folder.map_folder(name)
        write_probability_png(target / f"{stem}.png", values)
    return mask


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
    inputs = list(inputs)
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
    model_path: str | Path,
    inputs: Iterable[str | Path],
    out: str | Path,
    batch_size: int = 8,
    device: str | None = None,
    prompts: PromptSource | None = None,
    sampling: Mapping[str, Any] | None = None,
    precision: str = FULL_PRECISION,
) -> list[Path]:
    """Segment image files of any size; write ``out/masks/<stem>.png``, ``out/probabilities/<stem>.png`` and a
    folder per extra map.

    A file that cannot be read is reported and skipped; the others are still segmented.
    """
    segmenter = load_segmenter(model_path, "predict", device, precision)
    options = segmenter.method.resolve_sampling(sampling)
    if prompts is not None and segmenter.method.prompt_kind is None:
        raise ConfigError(f"{segmenter.method.name} takes no prompts; leave out --prompts")
    if prompts is not None and prompts.needs_masks():
        raise ConfigError("--prompts from-mask needs ground-truth masks; `predict` has none: give a box file")
    files, failures, written = find_images(inputs), [], []
    stems = [path.stem for path in files]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise DataError(f"several input files would write the same mask name: {', '.join(clashes)}; rename them")
    folder = _prediction_folders(out)
    for chunk in _batches(files, batch_size):
        readable = []
        for path in chunk:
            try:
                readable.append((path, read_image(path)))
            except DataError as error:
                failures.append(str(error))
        if not readable:
            continue
        boxes = None if prompts is None else [prompts.boxes_for(path.stem, None, 0) for path, _ in readable]
        predictions = segmenter.predict_batch(
            [image for _, image in readable], prompts=boxes, keys=[path.stem for path, _ in readable], sampling=options
        )
        for (path, _), prediction in zip(readable, predictions, strict=True):
            _write_prediction(folder, path.stem, prediction)
            written.append(folder.masks / f"{path.stem}.png")
    if failures:
        raise DataError(
            f"{len(failures)} of {len(files)} files could not be read (the other masks were written):\n  "
            + "\n  ".join(failures)
        )
    return written
