"""Finding image/mask pairs and their train/val/test split in a dataset folder.

Expected layout (the GMS one, plus a CSV alternative)::

    root/images/<stem>.<ext>          ext: .png .jpg .jpeg .bmp .tif .tiff (any case)
    root/masks/<stem>.<ext>           or <stem>_segmentation.<ext> (ISIC/HAM) or <stem>_mask.<ext> (Kaggle)
    root/<anything>_train_test_names.pkl   {'train': {'name_list': [...]}, 'test': {...}, optional 'val': {...}}
    or root/split.csv                 columns name,split (split in train/val/test)

Without a split file every pair is ``train`` (with a ``no_split_file`` warning). Without a ``val`` list a
validation split is carved from ``train`` (never from ``test``). Problems found on the way (names without files,
images without masks, duplicate stems) are collected in :attr:`DatasetIndex.problems` rather than raised one at a
time; :mod:`genmedseg.data.checks` adds the problems that need decoding the files.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from genmedseg.data.io import IMAGE_EXTENSIONS
from genmedseg.errors import ConfigError, DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
MASK_SUFFIXES: tuple[str, ...] = ("", "_segmentation", "_mask")
"""Mask stem = image stem + one of these (same name; ISIC/HAM10000 ``_segmentation``; Kaggle ``_mask``)."""

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
NO_SPLIT_FILE_MESSAGE = (
    "no split file: every pair is used for training (validation is carved from it) and there is no test split; "
    "write a split.csv (columns name,split) or a <name>_train_test_names.pkl, or make the dataset from its "
    "download with `genmedseg prepare NAME RAW_DIR OUT_DIR`, which writes a seeded train/val/test split"
)
"""The warning (kind ``no_split_file``) that a dataset without a split file gets, in check-data and training."""
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_PICKLE_SPLIT_GLOB = "*_train_test_names.pkl"
_CSV_SPLIT_NAME = "split.csv"

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file concerned, what is wrong and how to fix it, and how bad it is.

    ``severity`` is ``"error"`` (training refuses the dataset) or ``"warning"`` (usable, but worth a look);
    ``kind`` is a short stable code (``"missing_mask"``, ``"empty_mask"``, ...) for counting and for tests.
    """

    path: Path
    message: str
    severity: Severity
    kind: str


@dataclass
class DatasetIndex:
    """The pairs of a dataset folder and its splits.

    ``pairs`` maps each name (the image stem) to ``(image_path, mask_path)``, ordered by name. ``splits`` maps
    ``train``/``val``/``test`` to sorted lists of names that have a pair. ``split_source`` and ``val_source`` say
    where the split and the validation list came from, for logs and model cards.
    """

    root: Path
    pairs: dict[str, tuple[Path, Path]]
    splits: dict[str, list[str]]
    split_source: str
    val_source: str
    problems: list[Problem] = field(default_factory=list)

    def names(self, split: str) -> list[str]:
        """Names of one split, or of every pair for ``split="all"``."""
        if split == "all":
            return list(self.pairs)
        if split not in self.splits:
            raise DataError(f"{self.root}: no split {split!r}; available: {', '.join(self.splits) or 'none'}, all")
        return list(self.splits[split])

    def summary(self) -> str:
        """One line: pair count and split sizes, with the origin of the validation split."""
        sizes = ", ".join(f"{name} {len(names)}" for name, names in self.splits.items())
        return f"{self.root}: {len(self.pairs)} pairs; {sizes}; split: {self.split_source}; val: {self.val_source}"


def _strip_image_extension(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else path.name


def list_images(folder: str | os.PathLike, problems: list[Problem] | None = None) -> dict[str, Path]:
    """Image files of ``folder`` by stem, sorted by stem.

    Hidden files (``.DS_Store``, macOS ``._*`` resource forks, temporary files) are skipped silently. Files with
    another extension and stems shared by two files (``a.png`` and ``a.jpg``) are left out; when ``problems`` is
    given they are recorded there (warning and error respectively).
    """
    return _files_by_stem(Path(folder), problems)[0]


def _files_by_stem(folder: Path, problems: list[Problem] | None) -> tuple[dict[str, Path], set[str]]:
    """Unique image files by stem, and the stems shared by several files (see :func:`list_images`)."""
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            if problems is not None:
                problems.append(
                    Problem(
                        path,
                        f"ignored: extension {path.suffix or '(none)'} is not one of "
                        f"{' '.join(IMAGE_EXTENSIONS)}; convert it to PNG or move it out",
                        "warning",
                        "unsupported_file",
                    )
                )
            continue
        by_stem[path.stem].append(path)
    images, duplicated = {}, set()
    for stem in sorted(by_stem):
        paths = by_stem[stem]
        if len(paths) == 1:
            images[stem] = paths[0]
            continue
        duplicated.add(stem)
        if problems is not None:
            problems.append(
                Problem(
                    paths[0],
                    f"{len(paths)} files share the name {stem!r} ({', '.join(p.name for p in paths)}); "
                    "rename or delete all but one",
                    "error",
                    "duplicate_stem",
                )
            )
    return images, duplicated


def _match_masks(
    images: dict[str, Path], masks: dict[str, Path], duplicated: set[str], problems: list[Problem]
) -> dict[str, tuple[Path, Path]]:
    """Pair images with masks by stem; ``duplicated`` stems (images or masks) were reported already."""
    pairs: dict[str, tuple[Path, Path]] = {}
    used = {stem + suffix for stem in duplicated for suffix in MASK_SUFFIXES}
    for stem, image_path in images.items():
        candidates = [stem + suffix for suffix in MASK_SUFFIXES if stem + suffix in masks]
        if len(candidates) == 1:
            pairs[stem] = (image_path, masks[candidates[0]])
            used.add(candidates[0])
        elif not candidates and any(stem + suffix in duplicated for suffix in MASK_SUFFIXES):
            continue
        elif not candidates:
            looked_for = ", ".join(f"{stem}{suffix}.*" for suffix in MASK_SUFFIXES)
            problems.append(
                Problem(
                    image_path,
                    f"no mask (looked for masks/{looked_for}); add the mask or remove the image",
                    "error",
                    "missing_mask",
                )
            )
        else:
            used.update(candidates)
            problems.append(
                Problem(
                    image_path,
                    f"several masks match: {', '.join(masks[c].name for c in candidates)}; keep one",
                    "error",
                    "ambiguous_mask",
                )
            )
    for stem in sorted(set(masks) - used):
        problems.append(
            Problem(
                masks[stem],
                "mask with no image of the same name (or of the name without _segmentation/_mask); "
                "rename it to match its image or remove it (several masks per image must be merged into one)",
                "warning",
                "orphan_mask",
            )
        )
    return pairs


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles only plain containers: any class or function reference is refused, so no code can run."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(
            f"{self._path}: not a plain split file: it refers to {module}.{name}, and genmedseg only reads pickles "
            "of dicts/lists/strings (refused without running anything); write the split as split.csv instead"
        )


def _read_pickle_split(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = _PlainUnpickler(file, path).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise DataError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc}); re-create the split file "
            "or write split.csv (columns name,split)"
        ) from None
    if not isinstance(raw, dict):
        raise DataError(
            f"{path}: expected a dict {{'train': {{'name_list': [...]}}, 'test': ...}}, got {type(raw).__name__}"
        )
    lists = {}
    for key, value in raw.items():
        if isinstance(value, dict) and "name_list" in value:
            value = value["name_list"]
        if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
            raise DataError(f"{path}: split {key!r} must be {{'name_list': [str, ...]}} or a list of names")
        lists[key] = list(value)
    return lists


def _read_csv_split(path: Path) -> dict[str, list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(
            f"{path}: not a readable UTF-8 CSV file ({exc}); save it as CSV with columns name,split"
        ) from None
    header = [column.strip().lower() for column in rows[0]] if rows else []
    if "name" not in header or "split" not in header:
        raise DataError(
            f"{path}: needs the columns name,split (found {', '.join(header) or 'none'}); "
            "add a header line 'name,split'"
        )
    name_at, split_at = header.index("name"), header.index("split")
    lists: dict[str, list[str]] = defaultdict(list)
    for row in rows[1:]:
        if len(row) > max(name_at, split_at) and row[name_at].strip():
            lists[row[split_at].strip()].append(row[name_at].strip())
    return dict(lists)


def _canonical_splits(path: Path, lists: dict[str, list[str]]) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    for key, names in lists.items():
        canonical = _SPLIT_ALIASES.get(str(key).strip().lower())
        if canonical is None:
            raise DataError(f"{path}: unknown split {key!r}; use train, val or test")
        splits.setdefault(canonical, []).extend(names)
    return splits


def _find_split_file(root: Path, split_file: str | os.PathLike | None) -> Path | None:
    if split_file is not None:
        path = Path(split_file)
        if not path.exists() and (root / path).exists():
            path = root / path
        if not path.is_file():
            raise DataError(f"{split_file}: split file not found (also looked in {root})")
        return path
    candidates = sorted(root.glob(_PICKLE_SPLIT_GLOB)) + [p for p in [root / _CSV_SPLIT_NAME] if p.is_file()]
    if len(candidates) > 1:
        raise DataError(
            f"{root}: several split files ({', '.join(p.name for p in candidates)}); "
            "choose one with split_file (--split-file)"
        )
    return candidates[0] if candidates else None


def _read_split_file(path: Path) -> dict[str, list[str]]:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return _canonical_splits(path, _read_pickle_split(path))
    if path.suffix.lower() == ".csv":
        return _canonical_splits(path, _read_csv_split(path))
    raise DataError(f"{path}: unknown split file type; use a GMS .pkl or a .csv with columns name,split")


def _resolve_split_names(
    path: Path,
    listed: dict[str, list[str]],
    pairs: dict[str, tuple[Path, Path]],
    known_images: set[str],
    problems: list[Problem],
) -> dict[str, list[str]]:
    """Map listed names onto pairs; record names without files, names listed twice and pairs in no split.

    Names whose image exists but has no usable pair (``known_images``) were reported when pairing; they are
    dropped here without a second message.
    """
    splits: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for split in SPLITS:
        if split not in listed:
            continue
        kept: list[str] = []
        missing: list[str] = []
        for raw_name in listed[split]:
            name = _strip_image_extension(Path(raw_name).name)
            if name in owner:
                if owner[name] == split:
                    problems.append(
                        Problem(path, f"{name!r} listed twice in {split}; kept once", "warning", "duplicate_name")
                    )
                else:
                    problems.append(
                        Problem(
                            path,
                            f"{name!r} is in both {owner[name]} and {split} (data leak); remove it from one of them",
                            "error",
                            "split_overlap",
                        )
                    )
                continue
            owner[name] = split
            if name in pairs:
                kept.append(name)
            elif name not in known_images:
                missing.append(name)
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            problems.append(
                Problem(
                    path,
                    f"{len(missing)} name(s) in {split} have no image file: {shown}; fix the names or add the files",
                    "error",
                    "missing_image",
                )
            )
        splits[split] = sorted(kept)
    for name, (image_path, _) in pairs.items():
        if name not in owner:
            problems.append(
                Problem(
                    image_path,
                    f"in no split of {path.name}; it is not used for train/val/test",
                    "warning",
                    "unsplit_image",
                )
            )
    return splits


def name_rank(name: str, seed: int) -> str:
    """The sort key of ``name`` in a seeded split: a SHA-256 hash of the seed and the name.

    It depends on nothing else (not on file-system order, Python or NumPy versions), so a name's place in the
    order never changes when other names are added or removed.
    """
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def carve_validation(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``names`` into (train, val) with ``round(val_fraction * n)`` names in val (at least 1).

    Each name is ranked by :func:`name_rank`, so the choice depends only on the names and the seed, and adding an
    image never moves another one.
    With fewer than 2 names, or ``val_fraction == 0``, val is empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0 or len(names) < 2:
        return sorted(names), []
    n_val = min(len(names) - 1, max(1, math.floor(val_fraction * len(names) + 0.5)))
    val = set(sorted(names, key=lambda name: name_rank(name, seed))[:n_val])
    return sorted(set(names) - val), sorted(val)


EXTRA_PREFIX = "extra/"
"""Name prefix of the pairs that ``--extra-data`` adds to training (image stems never hold a ``/``)."""


def with_extra_training(index: DatasetIndex, extra: DatasetIndex) -> DatasetIndex:
    """``index`` with the ``train`` pairs of ``extra`` added to its ``train`` split only, named ``extra/<name>``.

    Validation and test stay those of ``index``: pairs from another dataset (e.g. synthetic pairs written by
    ``genmedseg generate``) never enter model selection or evaluation.
    """
    added = {EXTRA_PREFIX + name: extra.pairs[name] for name in extra.names("train")}
    if not added:
        raise DataError(f"{extra.root}: no train pairs to add to training ({extra.summary()})")
    splits = {split: list(names) for split, names in index.splits.items()}
    splits["train"] = [*splits.get("train", []), *added]
    return DatasetIndex(
        index.root, {**index.pairs, **added}, splits, index.split_source, index.val_source, list(index.problems)
    )


def discover(
    root: str | os.PathLike, split_file: str | os.PathLike | None = None, val_fraction: float = 0.1, seed: int = 0
) -> DatasetIndex:
    """Index the image/mask pairs of ``root`` and their splits (see the module docstring for the layout).

    ``split_file`` (a GMS ``.pkl`` or a ``.csv``; relative paths are also looked up in ``root``) overrides the
    automatic search for ``*_train_test_names.pkl`` or ``split.csv``. With no split file every pair is ``train``
    and the index carries a ``no_split_file`` warning.
    With no ``val`` list, ``val_fraction`` of ``train`` is carved out as ``val`` (see :func:`carve_validation`).
    Raises :class:`DataError` only when nothing can be indexed (no folder, unreadable split file); everything else
    is collected in ``problems``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DataError(f"{root}: no images/ folder; expected {root}/images/<name>.png and {root}/masks/<name>.png")
    problems: list[Problem] = []
    images, duplicated_images = _files_by_stem(images_dir, problems)
    if masks_dir.is_dir():
        masks, duplicated_masks = _files_by_stem(masks_dir, problems)
        pairs = _match_masks(images, masks, duplicated_images | duplicated_masks, problems)
    else:
        pairs = {}
        problems.append(
            Problem(masks_dir, "no masks/ folder: no image has a mask; add masks/<name>.png", "error", "missing_mask")
        )
    if not pairs and masks_dir.is_dir():
        problems.append(Problem(root, "no image/mask pairs found in images/ and masks/", "error", "no_pairs"))

    path = _find_split_file(root, split_file)
    if path is None:
        splits = {"train": list(pairs)}
        split_source = "no split file: every pair is train"
        problems.append(Problem(root, NO_SPLIT_FILE_MESSAGE, "warning", "no_split_file"))
    else:
        known = set(images) | duplicated_images
        splits = _resolve_split_names(path, _read_split_file(path), pairs, known, problems)
        split_source = path.name
    if splits.get("val"):
        val_source = f"listed in {split_source}"
    else:
        splits["train"], splits["val"] = carve_validation(splits.get("train", []), val_fraction, seed)
        val_source = (
            f"carved from train ({val_fraction:.0%}, seed {seed}): {len(splits['val'])} images"
            if splits["val"]
            else "none (train too small or val_fraction 0)"
        )
    ordered = {split: splits[split] for split in SPLITS if split in splits}
    return DatasetIndex(root, pairs, ordered, split_source, val_source, problems)
