"""Box prompts for methods that take them: from the ground truth (the SAM papers' protocol) or from a file.

A box is ``(x_min, y_min, x_max, y_max)`` in pixels of the image it belongs to, with the maxima inclusive (the
last foreground column and row), as SAM-family tools write them. An image may have several boxes or none; a method
given none answers for the whole image.

Box files: JSON ``{"name": [[x_min, y_min, x_max, y_max], ...]}`` (a single box may be given without the outer
list), or CSV with the columns ``name,x_min,y_min,x_max,y_max`` (one row per box). Names are image stems.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genmedseg.errors import ConfigError, DataError

FROM_MASK = "from-mask"
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


def box_of_mask(mask: np.ndarray, jitter: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
    """The bounding box ``(1, 4)`` of a 2-D mask's foreground, each side moved out by U{0..jitter} pixels (clipped
    to the image); ``(0, 4)`` for an empty mask."""
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    box = np.array([columns.min(), rows.min(), columns.max(), rows.max()], dtype=np.float64)
    if jitter:
        rng = rng or np.random.default_rng()
        box += rng.integers(0, jitter + 1, size=4) * np.array([-1, -1, 1, 1])
        height, width = mask.shape
        box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    return box[None].astype(np.float32)


def boxes_from_masks(masks: object, jitter: int = 0, rng: np.random.Generator | None = None) -> list:
    """One ground-truth box tensor ``(K, 4)`` per mask of a ``(B, 1, H, W)`` tensor (K = 0 for an empty mask)."""
    import torch

    arrays = masks.detach().cpu().numpy() > 0.5
    return [torch.from_numpy(box_of_mask(mask[0], jitter, rng)).to(masks.device) for mask in arrays]


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Boxes of an image of size ``from_hw`` in the pixels of the same image resized to ``to_hw``."""
    scale = np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]] * 2, dtype=np.float32)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale).astype(np.float32)


@dataclass(frozen=True)
class PromptSource:
    """Where the prompts of an evaluation or a prediction come from: the ground truth, or a box file."""

    kind: str
    path: Path | None = None
    jitter: int = 0
    seed: int = 0
    boxes: dict[str, np.ndarray] = field(default_factory=dict)

    def needs_masks(self) -> bool:
        return self.kind == FROM_MASK

    def boxes_for(self, name: str, mask: np.ndarray | None, index: int) -> np.ndarray:
        """The boxes ``(K, 4)`` of image ``name`` (``index``-th of the run, which seeds the jitter)."""
        if self.kind == FROM_MASK:
            if mask is None:
                raise ConfigError("--prompts from-mask needs ground-truth masks; `predict` has none: give a box file")
            return box_of_mask(mask, self.jitter, np.random.default_rng([self.seed, index]))
        return self.boxes.get(name, np.zeros((0, 4), dtype=np.float32))

    def describe(self) -> str:
        """In words, for summaries, model cards and reports."""
        if self.kind == FROM_MASK:
            jitter = f", each side moved out by up to {self.jitter} px" if self.jitter else ""
            return f"ground-truth boxes (one per image around all foreground{jitter})"
        return f"boxes from {self.path} ({len(self.boxes)} images; the others get none)"


def prompt_source(spec: str | os.PathLike | None, jitter: int = 0, seed: int = 0) -> PromptSource | None:
    """``--prompts``: None, ``from-mask``, or a JSON / CSV box file."""
    if spec is None:
        if jitter:
            raise ConfigError("--prompt-jitter goes with --prompts from-mask")
        return None
    if jitter < 0:
        raise ConfigError(f"--prompt-jitter must be 0 or more pixels, got {jitter}")
    if str(spec) == FROM_MASK:
        return PromptSource(FROM_MASK, jitter=jitter, seed=seed)
    if jitter:
        raise ConfigError("--prompt-jitter goes with --prompts from-mask, not with a box file")
    path = Path(spec)
    return PromptSource("file", path=path, boxes=read_boxes(path))


def read_boxes(path: Path) -> dict[str, np.ndarray]:
    """The boxes of a JSON or CSV box file by image name (see the module docstring)."""
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: no such file; give a JSON or CSV box file, or `from-mask`")
    if path.suffix.lower() == ".json":
        return _read_json_boxes(path)
    if path.suffix.lower() == ".csv":
        return _read_csv_boxes(path)
    raise ConfigError(
        f"--prompts {path}: unknown box file type; use .json or .csv (columns name,{','.join(BOX_COLUMNS)})"
    )


def _checked(path: Path, where: str, values: object) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float32).reshape(-1, 4)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {where}: a box is four numbers x_min, y_min, x_max, y_max; got {values!r}") from None
    if not np.isfinite(array).all() or (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
        raise DataError(f"{path}: {where}: boxes need finite x_min <= x_max and y_min <= y_max; got {values!r}")
    return array


def _read_json_boxes(path: Path) -> dict[str, np.ndarray]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise DataError(f'{path}: expected {{"name": [[x_min, y_min, x_max, y_max], ...]}}, got {type(raw).__name__}')
    return {Path(str(name)).stem: _checked(path, f"image {name!r}", boxes) for name, boxes in raw.items()}


def _read_csv_boxes(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in ("name", *BOX_COLUMNS) if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: needs the columns name,{','.join(BOX_COLUMNS)} (missing {', '.join(missing)})")
        boxes: dict[str, list[np.ndarray]] = {}
        for line, row in enumerate(reader, start=2):
            box = _checked(path, f"line {line}", [row[column] for column in BOX_COLUMNS])
            boxes.setdefault(Path(row["name"].strip()).stem, []).append(box)
    return {name: np.concatenate(rows) for name, rows in boxes.items()}
