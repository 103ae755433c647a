"""What every dataset reader of ``genmedseg prepare`` shares: the case record, finding folders in a download,
pairing files, the seeded split, and writing the GMS layout and its report atomically.

A reader (one per dataset, grouped by family in the sibling modules) only says where the download keeps its
images and masks: it returns a :class:`RawDataset` of :class:`Case` records. Everything else, decoding every file,
merging and binarising masks, converting images, the split and the report, is done here once, the same way for
every dataset.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import re
import secrets
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from genmedseg import __version__
from genmedseg.atomic import atomic_write
from genmedseg.data.io import IMAGE_EXTENSIONS, decoded_image, read_mask_with_stats, write_mask_png
from genmedseg.data.layout import SPLITS, name_rank
from genmedseg.errors import ConfigError, DataError

REPORT_NAME = "prepare_report.md"
META_NAME = "meta.csv"
COPIED_SUFFIXES = (".png", ".jpg", ".jpeg")
"""Images in these formats are copied byte for byte (after a full decode check); others are converted to PNG when
PNG holds their pixels exactly (8-bit, 16-bit gray, palette), else copied too."""
_SEARCH_DEPTH = 4
_LOSSLESS_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


@dataclass(frozen=True)
class Case:
    """One image of a download and the mask file(s) that go with it.

    ``name`` is the stem written to ``images/`` and ``masks/``. Several ``masks`` are merged by pixel-wise OR.
    ``label_map`` marks instance label maps (0 = background, 1..K = objects), made binary as ``label > 0``;
    otherwise masks are binarised by :func:`genmedseg.data.read_mask`'s rule. ``split`` is the official split
    (``train``/``val``/``test``) where the dataset has one, ``subset`` the official part it came from (e.g. GlaS
    ``testA``), ``group`` keeps images of one lesion or patient in one split, and ``stratum`` (e.g. BUSI's class)
    is split separately so that each split keeps the class proportions.
    """

    name: str
    image: Path
    masks: tuple[Path, ...]
    label_map: bool = False
    split: str | None = None
    subset: str | None = None
    group: str | None = None
    stratum: str | None = None


@dataclass
class RawDataset:
    """What a reader found in a download: the cases, and everything it set aside, with the reason, for the report.

    ``split_source`` describes the official split (None when the dataset has none); ``dropped`` lists files that
    could not be used (``(file, reason)``); ``ignored`` groups the other files seen by reason; ``notes`` are
    sentences for the report (caveats of the dataset, what the reader merged or left out), and ``warnings`` the
    ones the command also prints (e.g. a possible leak between splits).
    """

    root: Path
    cases: list[Case]
    split_source: str | None = None
    dropped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PrepareOptions:
    """The settings of one ``genmedseg prepare`` run (see the CLI for their meaning)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    exclude_normal: bool = False
    workers: int = 8


@dataclass(frozen=True)
class _Written:
    """What writing one case produced, for meta.csv and the report."""

    case: Case
    image_name: str
    converted_from: str | None
    width: int
    height: int
    foreground: float
    thresholded: bool
    instances: int | None


@dataclass
class PrepareResult:
    """The outcome of a prepare run: where the dataset is, its split sizes, and the warnings worth printing."""

    out_dir: Path
    counts: dict[str, int]
    dropped: int
    warnings: list[str]

    def summary(self) -> str:
        """A few lines for the terminal: the folder, the split sizes, the drops, and the warnings."""
        sizes = ", ".join(f"{split} {count}" for split, count in self.counts.items())
        lines = [f"prepared {self.out_dir}: {sizes}; {self.dropped} file(s) dropped (see {REPORT_NAME})"]
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- finding things


def walk_folders(root: Path, depth: int = _SEARCH_DEPTH) -> Iterator[Path]:
    """``root`` and its sub-folders down to ``depth`` levels, breadth first and sorted, without hidden folders or
    the ``__MACOSX`` folders that macOS archives add."""
    level = [root]
    for _ in range(depth + 1):
        following = []
        for folder in level:
            yield folder
            try:
                children = sorted(folder.iterdir())
            except OSError:  # an unreadable folder holds nothing prepare can use
                continue
            following += [
                child
                for child in children
                if child.is_dir() and not child.name.startswith(".") and child.name != "__MACOSX"
            ]
        level = following


def child_folder(parent: Path, name: str) -> Path | None:
    """The sub-folder of ``parent`` called ``name`` (compared case-insensitively), or None."""
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def unwrap(folder: Path) -> Path:
    """``folder``, or the folder of the same name that an archive tool nested inside it (``X/X/``)."""
    inner = child_folder(folder, folder.name)
    only_child = inner is not None and not any(p.is_file() and not p.name.startswith(".") for p in folder.iterdir())
    return inner if only_child else folder


def find_folders(root: Path, name: str) -> list[Path]:
    """Every folder called ``name`` (case-insensitively) under ``root``, ``root`` included, unwrapped."""
    found = [folder for folder in walk_folders(root) if folder.name.lower() == name.lower()]
    outermost = [folder for folder in found if not any(other in folder.parents for other in found)]
    return [unwrap(folder) for folder in outermost]


def not_found(root: Path, what: str, expected: str) -> DataError:
    """The error for a download in which ``what`` is missing: what was expected, and where to look it up."""
    return DataError(
        f"{root}: found no {what} (expected {expected}); point RAW_DIR at the unpacked download "
        "(docs/data.md lists each dataset's layout)"
    )


def one_folder(root: Path, candidates: list[Path], what: str, expected: str) -> Path:
    """The single folder of ``candidates``; a DataError that says what was expected when there is none or several."""
    if not candidates:
        raise not_found(root, what, expected)
    if len(candidates) > 1:
        listed = ", ".join(str(folder) for folder in candidates)
        raise DataError(f"{root}: several {what} ({listed}); give the one to use as RAW_DIR")
    return candidates[0]


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder``, sorted, without hidden files (``.DS_Store``, ``._*``)."""
    return [path for path in sorted(folder.iterdir()) if path.is_file() and not path.name.startswith(".")]


def is_image_file(path: Path) -> bool:
    """True for the file extensions genmedseg reads as images or masks."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def safe_name(stem: str) -> str:
    """A file name stem that needs no quoting: runs of other characters than letters, digits, ``.``, ``-`` and
    ``_`` become one ``_`` (BUSI's ``benign (12)`` becomes ``benign_12``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") or "image"


def image_files(raw: RawDataset, folder: Path) -> list[Path]:
    """The image files of ``folder``; its other files are recorded in ``raw`` as ignored."""
    files = visible_files(folder)
    raw.ignored["not an image file"] += [path for path in files if not is_image_file(path)]
    return [path for path in files if is_image_file(path)]


def pair_by_stem(
    raw: RawDataset,
    images: list[Path],
    masks: list[Path],
    mask_stem: Callable[[str], str] = lambda stem: stem,
    **case_fields: Any,
) -> list[Case]:
    """Cases for the ``images`` whose mask, the file of ``masks`` with the stem ``mask_stem(image stem)`` (compared
    case-insensitively, any extension), exists. Images without a mask are recorded in ``raw`` as dropped, masks
    without an image as ignored; ``case_fields`` are passed on to every :class:`Case`."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in masks:
        by_stem[path.stem.lower()].append(path)
    cases, used = [], set()
    for path in images:
        key = mask_stem(path.stem).lower()
        found = by_stem.get(key, [])
        if len(found) == 1:
            cases.append(Case(safe_name(path.stem), path, (found[0],), **case_fields))
        elif not found:
            raw.dropped.append((path, f"no mask {mask_stem(path.stem)}.*"))
        else:
            raw.dropped.append((path, f"several masks: {', '.join(p.name for p in found)}"))
        used.add(key)
    for key in sorted(set(by_stem) - used):
        raw.ignored["mask without an image"] += by_stem[key]
    return cases


# ------------------------------------------------------------------------------------------------- splitting


def _count(fraction: float, total: int) -> int:
    return math.floor(fraction * total + 0.5)


def seeded_split(cases: list[Case], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split ``cases`` into train/val/test names: ``round(fraction * n)`` images each for test and val (per
    stratum), the rest train.

    Groups (one lesion, one patient) are kept whole: they are taken in the order of :func:`name_rank` of the group
    and seed, into test until its share is reached, then into val, then train. Without groups each image is its
    own group, so the counts are exact. The result depends only on the names, groups, strata and seed.
    """
    strata: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        strata[case.stratum or ""].append(case)
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    for stratum in sorted(strata):
        members = strata[stratum]
        groups: dict[str, list[str]] = defaultdict(list)
        for case in members:
            groups[case.group or f"image:{case.name}"].append(case.name)
        quota = {"test": _count(test_fraction, len(members)), "val": _count(val_fraction, len(members))}
        taken = {"test": 0, "val": 0}
        for group in sorted(groups, key=lambda key: name_rank(key, seed)):
            target = next((split for split in ("test", "val") if taken[split] < quota[split]), "train")
            splits[target] += groups[group]
            if target != "train":
                taken[target] += len(groups[group])
    return {split: sorted(names) for split, names in splits.items()}


def assign_splits(raw: RawDataset, options: PrepareOptions) -> tuple[dict[str, str], list[str]]:
    """The split of every case (name -> split) and sentences that say how it was made.

    The official split is kept where the dataset has one; a split it lacks is carved from its train part (test
    with ``test_fraction``, val with ``val_fraction``). A dataset without an official split is split with both.
    """
    description = []
    official = {case.name: case.split for case in raw.cases if case.split}
    if official:
        present = set(official.values())
        if "train" not in present:
            raise DataError(
                f"{raw.root}: no image of the official train part was found ({raw.split_source}); "
                "add its folder to RAW_DIR"
            )
        description.append(f"official split kept ({raw.split_source}): " + _sizes(official.values()))
        train = [case for case in raw.cases if case.split == "train"]
        val_fraction = options.val_fraction if "val" not in present else 0.0
        test_fraction = options.test_fraction if "test" not in present else 0.0
        carved = seeded_split(train, val_fraction, test_fraction, options.seed)
        assignment = dict(official)
        for split, names in carved.items():
            assignment.update(dict.fromkeys(names, split))
        for split, fraction in (("test", test_fraction), ("val", val_fraction)):
            if fraction:
                description.append(
                    f"{split}: {len(carved[split])} images carved from the official train part "
                    f"({fraction:.0%}, seed {options.seed}, {_grouping(raw)})"
                )
        if "test" in present and options.test_fraction != PrepareOptions.test_fraction:
            description.append("--test-fraction was not used: the official test split is kept")
    else:
        carved = seeded_split(raw.cases, options.val_fraction, options.test_fraction, options.seed)
        assignment = {name: split for split, names in carved.items() for name in names}
        description.append(
            f"no official split: seeded split with val {options.val_fraction:.0%}, test {options.test_fraction:.0%}, "
            f"seed {options.seed} ({_grouping(raw)})"
        )
    if not any(split == "train" for split in assignment.values()):
        raise ConfigError(
            f"the fractions leave no image for training (val {options.val_fraction}, test {options.test_fraction} "
            f"of {len(assignment)} images); lower --val-fraction or --test-fraction"
        )
    return assignment, description


def _grouping(raw: RawDataset) -> str:
    parts = []
    if any(case.group for case in raw.cases):
        parts.append("groups kept whole")
    if any(case.stratum for case in raw.cases):
        parts.append("stratified by " + ", ".join(sorted({case.stratum or "-" for case in raw.cases})))
    return "; ".join(parts) or "image by image"


def _sizes(splits: Iterable[str]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for split in splits:
        counts[split] += 1
    return ", ".join(f"{split} {counts[split]}" for split in SPLITS if counts[split])


def check_options(options: PrepareOptions) -> None:
    """Refuse fractions outside [0, 1) or adding up to 1 or more, before any file is read."""
    for flag, value in (("--val-fraction", options.val_fraction), ("--test-fraction", options.test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{flag} {value}: must be at least 0 and below 1, e.g. {flag} 0.1")
    if options.val_fraction + options.test_fraction >= 1.0:
        raise ConfigError(
            f"--val-fraction {options.val_fraction} and --test-fraction {options.test_fraction} leave nothing "
            "for training; keep their sum below 1"
        )


# -------------------------------------------------------------------------------------------------- writing


def label_map_foreground(path: Path) -> tuple[np.ndarray, int]:
    """Foreground (``label > 0``) of an instance label map, and its number of instances.

    Grayscale, 16-bit and palette files give their stored values (palette indices) as the labels, whatever their
    range: a map with more than 127 instances is not mistaken for a 0/255 mask. A colour file is refused.
    """
    img = decoded_image(path)
    if img.mode in ("RGB", "RGBA"):
        colour = np.asarray(img)[:, :, :3]
        if (colour != colour[:, :, :1]).any():
            raise DataError(f"{path}: a colour image where an instance label map (one id per pixel) was expected")
        labels = colour[:, :, 0]
    elif img.mode in ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"):
        labels = np.asarray(img)
    else:
        raise DataError(f"{path}: mode {img.mode} cannot hold an instance label map; expected a single-channel file")
    instances = np.unique(labels)
    return labels > 0, int(np.count_nonzero(instances))


def _merged_mask(case: Case, image_size: tuple[int, int]) -> tuple[np.ndarray, bool, int | None]:
    """The case's masks merged by OR, whether any mask had more than two values, and the instance count."""
    merged, thresholded, instances = None, False, None
    for path in case.masks:
        if case.label_map:
            mask, count = label_map_foreground(path)
            instances = (instances or 0) + count
        else:
            mask, stats = read_mask_with_stats(path)
            thresholded |= stats.distinct_values > 2
        if mask.shape != image_size:
            raise DataError(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {case.image.name} is "
                f"{image_size[1]}x{image_size[0]}"
            )
        merged = mask if merged is None else merged | mask
    assert merged is not None, "a case always has a mask"
    return merged, thresholded, instances


def _write_case(case: Case, out: Path) -> _Written:
    """Decode the case's image and masks, then write ``images/`` and ``masks/`` files (each atomically)."""
    img = decoded_image(case.image)
    image_size = (img.height, img.width)
    mask, thresholded, instances = _merged_mask(case, image_size)
    suffix = case.image.suffix.lower()
    if suffix in COPIED_SUFFIXES or img.mode not in _LOSSLESS_PNG_MODES:
        image_name, converted_from = f"{case.name}{suffix}", None
        atomic_write(out / "images" / image_name, lambda temporary: shutil.copyfile(case.image, temporary))
    else:
        image_name, converted_from = f"{case.name}.png", suffix
        atomic_write(out / "images" / image_name, lambda temporary: img.save(temporary, format="PNG"))
    write_mask_png(out / "masks" / f"{case.name}.png", mask)
    return _Written(case, image_name, converted_from, img.width, img.height, float(mask.mean()), thresholded, instances)


def _try_write(case: Case, out: Path) -> _Written | tuple[Case, str]:
    try:
        return _write_case(case, out)
    except DataError as error:
        return case, str(error)


def _check_unique_names(cases: list[Case]) -> None:
    sources: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        sources[case.name.lower()].append(case)
    clashes = [group for group in sources.values() if len(group) > 1]
    if clashes:
        listed = "; ".join(" and ".join(str(case.image) for case in group) for group in clashes[:5])
        raise DataError(f"{len(clashes)} output name(s) would be used twice: {listed}; rename one of each")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _write_split_file(out: Path, dataset: str, assignment: dict[str, str]) -> str:
    lists = {split: {"name_list": sorted(n for n, s in assignment.items() if s == split)} for split in SPLITS}
    name = f"{dataset.replace('-', '_')}_train_test_names.pkl"
    atomic_write(out / name, lambda temporary: temporary.write_bytes(pickle.dumps(lists, protocol=4)))
    return name


_META_COLUMNS = (
    "name",
    "image_file",
    "split",
    "official_subset",
    "group",
    "stratum",
    "source_image",
    "source_masks",
    "width",
    "height",
    "foreground_fraction",
    "instances",
)


def _write_meta(out: Path, raw: RawDataset, written: list[_Written], assignment: dict[str, str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_META_COLUMNS)
    for item in written:
        case = item.case
        writer.writerow(
            (
                case.name,
                item.image_name,
                assignment[case.name],
                case.subset or "",
                case.group or "",
                case.stratum or "",
                _relative(case.image, raw.root),
                ";".join(_relative(path, raw.root) for path in case.masks),
                item.width,
                item.height,
                f"{item.foreground:.5f}",
                "" if item.instances is None else item.instances,
            )
        )
    atomic_write(out / META_NAME, lambda temporary: temporary.write_text(buffer.getvalue(), encoding="utf-8"))


def _short(reason: str, path: Path, root: Path) -> str:
    """A reader's message without the file name it starts with (the report names the file) and with paths
    relative to the download."""
    return reason.removeprefix(f"{path}: ").replace(f"{root}{os.sep}", "")


def _listing(paths: list[Path], root: Path, shown: int = 5) -> str:
    names = ", ".join(f"`{_relative(path, root)}`" for path in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _report(
    dataset: str,
    raw: RawDataset,
    options: PrepareOptions,
    written: list[_Written],
    assignment: dict[str, str],
    split_description: list[str],
    split_file: str,
    dropped: list[tuple[Path, str]],
) -> str:
    counts = {split: sum(1 for s in assignment.values() if s == split) for split in SPLITS}
    lines = [
        f"# genmedseg prepare: {dataset}",
        "",
        f"- raw download: `{raw.root}`",
        f"- genmedseg {__version__}, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- settings: val fraction {options.val_fraction}, test fraction {options.test_fraction}, "
        f"seed {options.seed}" + (", normal cases excluded" if options.exclude_normal else ""),
        f"- written: {len(written)} image/mask pairs in `images/` and `masks/` (masks 0/255 PNG), the split in "
        f"`{split_file}`, provenance per image in `{META_NAME}`",
        "",
        "## Split",
        "",
        "| split | images |",
        "|---|---|",
        *[f"| {split} | {counts[split]} |" for split in SPLITS],
        "",
        *[f"- {sentence}" for sentence in split_description],
        "",
        "## Merged and converted",
        "",
    ]
    merged = [item for item in written if len(item.case.masks) > 1]
    lines.append(
        f"- {len(merged)} image(s) had several mask files, merged into one mask by pixel-wise OR"
        + (": " + ", ".join(f"`{item.case.name}` ({len(item.case.masks)} masks)" for item in merged) if merged else "")
    )
    converted: dict[str, int] = defaultdict(int)
    for item in written:
        converted[item.converted_from or "copied"] += 1
    lines.append(f"- images copied byte for byte (after a full decode check): {converted.pop('copied', 0)}")
    lines += [f"- images converted {source} -> PNG (lossless, same pixels): {n}" for source, n in converted.items()]
    label_maps = [item for item in written if item.instances is not None]
    if label_maps:
        lines.append(
            f"- {len(label_maps)} instance label map(s) made binary as label > 0 "
            f"({sum(item.instances or 0 for item in label_maps)} instances in all)"
        )
    thresholded = [item for item in written if item.thresholded]
    lines.append(
        f"- {len(thresholded)} mask(s) had more than two values (JPEG noise or anti-aliasing) and were thresholded "
        "by genmedseg's mask rule (foreground = value > half the range, i.e. >= 128 for 8-bit)"
    )
    empty = [item for item in written if item.foreground == 0.0]
    lines.append(f"- {len(empty)} mask(s) are empty (no foreground), kept: a model must learn to say 'nothing'")
    lines += ["", "## Dropped", ""]
    lines += [f"- `{_relative(path, raw.root)}`: {_short(reason, path, raw.root)}" for path, reason in dropped]
    if not dropped:
        lines.append("- nothing")
    lines += ["", "## Ignored files", ""]
    lines += [
        f"- {reason}: {len(paths)} ({_listing(paths, raw.root)})" for reason, paths in raw.ignored.items() if paths
    ] or ["- none"]
    if raw.warnings:
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in raw.warnings]]
    if raw.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in raw.notes]]
    return "\n".join(lines) + "\n"


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``out_dir`` that exists and is not an empty folder: prepare never overwrites."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: already exists and is not empty; give a new OUT_DIR (prepare never overwrites)")


def _claim_out_dir(out_dir: Path) -> Path:
    """Check ``out_dir`` again (a while has passed since the first check) and make a temporary sibling to write in.

    The sibling is on the same file system, so the final rename is atomic, and hidden (a leading dot), so no
    dataset search sees it; ``mkdir`` gives it the permissions of any folder the user creates.
    """
    check_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    temporary.mkdir()
    return temporary


def write_dataset(dataset: str, raw: RawDataset, out_dir: Path, options: PrepareOptions) -> PrepareResult:
    """Decode, convert and split ``raw`` into ``out_dir`` (GMS layout, split pickle, meta.csv, report).

    Everything is written into a temporary sibling folder that is renamed to ``out_dir`` at the end, so a failed
    or interrupted prepare leaves no half-made ``out_dir`` (and no temporary folder).
    """
    if not raw.cases:
        reasons = "; ".join(f"{path.name}: {reason}" for path, reason in raw.dropped[:5])
        raise DataError(f"{raw.root}: no usable image/mask pair found" + (f" ({reasons})" if reasons else ""))
    _check_unique_names(raw.cases)
    temporary = _claim_out_dir(out_dir)
    try:
        (temporary / "images").mkdir()
        (temporary / "masks").mkdir()
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
            outcomes = list(pool.map(lambda case: _try_write(case, temporary), raw.cases))
        written = [outcome for outcome in outcomes if isinstance(outcome, _Written)]
        failed = [outcome for outcome in outcomes if not isinstance(outcome, _Written)]
        # A case fails while decoding, before any of its files is written: nothing of it is left to remove.
        dropped = raw.dropped + [(case.image, reason) for case, reason in failed]
        if not written:
            raise DataError(f"{raw.root}: every image or mask failed to decode; first: {dropped[0][1]}")
        kept = RawDataset(raw.root, [item.case for item in written], raw.split_source)
        assignment, split_description = assign_splits(kept, options)
        split_file = _write_split_file(temporary, dataset, assignment)
        _write_meta(temporary, raw, written, assignment)
        report = _report(dataset, raw, options, written, assignment, split_description, split_file, dropped)
        atomic_write(temporary / REPORT_NAME, lambda path: path.write_text(report, encoding="utf-8"))
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    counts = {split: sum(1 for s in assignment.values() if s == split) for split in SPLITS}
    return PrepareResult(out_dir, counts, len(dropped), list(raw.warnings))
