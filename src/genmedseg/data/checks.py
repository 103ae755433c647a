"""check-data: decode every file of a dataset and report every problem at once, not only the first.

Errors (training refuses the dataset): unreadable, truncated or corrupt files, missing masks, image/mask size
mismatches, names in a split without files, names in two splits. Warnings (usable, but look): masks with more than
two values (the report names the rule that binarised them), empty masks (legitimate for normal cases, counted),
images in no split, stray files.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from genmedseg.data.io import mask_stats, read_image, size_mismatch_message
from genmedseg.data.layout import DatasetIndex, Problem, discover
from genmedseg.errors import DataError

__all__ = ["Problem", "assert_dataset_ok", "check_dataset", "check_index", "format_report"]


def _without_path_prefix(error: DataError, path: Path) -> str:
    """The message of a reader's DataError without its leading ``path: `` (a Problem carries the path)."""
    return str(error).removeprefix(f"{path}: ")


def _check_pair(image_path: Path, mask_path: Path) -> list[Problem]:
    problems: list[Problem] = []
    image_hw = stats = None
    try:
        image_hw = read_image(image_path).shape[:2]
    except DataError as error:
        problems.append(Problem(image_path, _without_path_prefix(error, image_path), "error", "unreadable"))
    try:
        stats = mask_stats(mask_path)
    except DataError as error:
        problems.append(Problem(mask_path, _without_path_prefix(error, mask_path), "error", "unreadable"))
    if stats is None:
        return problems
    if image_hw is not None and image_hw != stats.shape:
        message = size_mismatch_message(image_path, image_hw, mask_path, stats.shape)
        problems.append(Problem(image_path, message.removeprefix(f"{image_path}: "), "error", "size_mismatch"))
    foreground = stats.foreground_pixels / (stats.shape[0] * stats.shape[1] or 1)
    if stats.distinct_values > 2:
        problems.append(
            Problem(
                mask_path,
                f"{stats.distinct_values} distinct values, binarised by the rule {stats.rule!r} "
                f"({foreground:.1%} foreground); save masks as 0/255 if that is not what you meant",
                "warning",
                "non_binary_mask",
            )
        )
    if stats.alpha_only:
        problems.append(
            Problem(
                mask_path,
                "colour channels are empty and the shape is only in the alpha channel, which is ignored; "
                "save the mask as a grayscale 0/255 PNG",
                "error",
                "alpha_only_mask",
            )
        )
    elif stats.foreground_pixels == 0 and stats.nonzero_pixels:
        problems.append(
            Problem(
                mask_path,
                f"non-zero pixels but none counts as foreground under the rule {stats.rule!r}; save the mask as 0/255",
                "warning",
                "faint_mask",
            )
        )
    elif stats.foreground_pixels == 0:
        problems.append(
            Problem(mask_path, "empty mask (no foreground); fine for normal cases", "warning", "empty_mask")
        )
    return problems


def check_index(index: DatasetIndex, workers: int = 8) -> list[Problem]:
    """The problems of ``index`` (found while indexing) plus those found by decoding every image and mask fully.

    Files are decoded on a thread pool of ``workers`` threads (decoding is I/O bound and Pillow releases the GIL);
    the problems come back in a deterministic order: indexing problems first, then pairs in name order.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        per_pair = list(pool.map(lambda paths: _check_pair(*paths), index.pairs.values()))
    return list(index.problems) + [problem for problems in per_pair for problem in problems]


def check_dataset(
    root: str | os.PathLike, split_file: str | os.PathLike | None = None, workers: int = 8
) -> list[Problem]:
    """Index ``root`` (see :func:`genmedseg.data.layout.discover`) and decode every file; return every problem."""
    return check_index(discover(root, split_file), workers)


def _display_path(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(path.relative_to(root)) or "."
        except ValueError:
            pass
    return str(path)


def format_report(problems: list[Problem], n_pairs: int, root: str | os.PathLike | None = None) -> str:
    """A readable report: a one-line summary, then every problem (errors first) with its file and message.

    Paths are shown relative to ``root`` when given.
    """
    root = Path(root) if root is not None else None
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if not problems:
        return f"Checked {n_pairs} image/mask pairs: no problems found."
    kinds = Counter(p.kind for p in problems)
    by_kind = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    lines = [f"Checked {n_pairs} image/mask pairs: {len(errors)} error(s), {len(warnings)} warning(s) ({by_kind})."]
    lines += [f"{p.severity.upper():8} {_display_path(p.path, root)}: {p.message}" for p in errors + warnings]
    return "\n".join(lines)


def assert_dataset_ok(
    dataset: DatasetIndex | str | os.PathLike,
    split_file: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 8,
) -> tuple[DatasetIndex, list[Problem]]:
    """Check a dataset (an index, or a folder indexed with the other arguments); raise :class:`DataError` with the
    full report if there is any error.

    Returns the index and the (warning-only) problems, so that training can log them without checking twice.
    """
    index = dataset if isinstance(dataset, DatasetIndex) else discover(dataset, split_file, val_fraction, seed)
    problems = check_index(index, workers)
    if any(p.severity == "error" for p in problems):
        report = format_report(problems, len(index.pairs), index.root)
        raise DataError(
            f"{index.root}: the dataset has errors; fix them and run `genmedseg check-data` again.\n{report}"
        )
    return index, problems
