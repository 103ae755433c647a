"""Breast ultrasound downloads: BUSI (Al-Dhabyani et al. 2020) and BUS, the UDIAT "Dataset B" (Yap et al. 2017).

Layouts, as the downloads unpack (sources in docs/data.md)::

    Dataset_BUSI_with_GT/<class>/<class> (<n>).png         class: benign, malignant, normal
    Dataset_BUSI_with_GT/<class>/<class> (<n>)_mask.png    and <class> (<n>)_mask_<k>.png for further lesions
    BUS/original/<nnnnnn>.png                              e.g. 000001.png
    BUS/GT/<nnnnnn>.png                                    the mask, same name
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from genmedseg.data.prepare.core import (
    Case,
    PrepareOptions,
    RawDataset,
    child_folder,
    find_folders,
    image_files,
    one_folder,
    pair_by_stem,
    safe_name,
    visible_files,
    walk_folders,
)

BUSI_CLASSES = ("benign", "malignant", "normal")
_BUSI_MASK = re.compile(r"(?P<stem>.+)_mask(?:_(?P<extra>\d+))?", re.IGNORECASE)


def _busi_folder(root: Path) -> Path:
    candidates = find_folders(root, "Dataset_BUSI_with_GT")
    if not candidates and any(child_folder(root, name) for name in BUSI_CLASSES):
        candidates = [root]
    return one_folder(
        root, candidates, "Dataset_BUSI_with_GT folder", "Dataset_BUSI_with_GT/benign/benign (1).png and its _mask.png"
    )


def _mask_order(path: Path) -> int:
    """``_mask.png`` first, then ``_mask_1.png``, ``_mask_2.png``..."""
    match = _BUSI_MASK.fullmatch(path.stem)
    return int(match["extra"]) if match and match["extra"] else 0


def read_busi(root: Path, options: PrepareOptions) -> RawDataset:
    """BUSI: one case per image with all its masks (merged); the class is the stratum of the split."""
    base = _busi_folder(root)
    raw = RawDataset(base, [])
    for label in BUSI_CLASSES:
        folder = child_folder(base, label)
        if folder is None:
            raw.warnings.append(f"no {label}/ folder in {base}: the download has benign, malignant and normal")
            continue
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = defaultdict(list)
        for path in visible_files(folder):
            match = _BUSI_MASK.fullmatch(path.stem)
            if path.suffix.lower() != ".png":
                raw.ignored["not a BUSI .png file"].append(path)
            elif match:
                masks[match["stem"]].append(path)
            else:
                images[path.stem] = path
        if label == "normal" and options.exclude_normal:
            raw.ignored["normal case, left out by --exclude-normal"] += list(images.values())
            raw.notes.append(f"{len(images)} normal (no lesion) cases left out by --exclude-normal")
            continue
        for stem, image in images.items():
            found = sorted(masks.pop(stem, []), key=_mask_order)
            if found:
                raw.cases.append(Case(safe_name(stem), image, tuple(found), stratum=label))
            else:
                raw.dropped.append((image, f"no mask {stem}_mask.png"))
        for paths in masks.values():
            raw.ignored["mask without an image"] += paths
    if not options.exclude_normal:
        raw.notes.append(
            "normal cases are kept with their empty masks (a model must learn to find nothing); "
            "--exclude-normal leaves them out"
        )
    raw.notes.append(
        "BUSI has no official split: the split is seeded and stratified by class. The download is kept as it is: "
        "Pawłowska et al. (Data in Brief, 2023) report duplicated images and annotation problems in BUSI, which "
        "prepare does not try to repair"
    )
    return raw


def read_bus(root: Path, options: PrepareOptions) -> RawDataset:
    """BUS (UDIAT Dataset B): ``original/`` images paired with the same names in ``GT/``."""
    candidates = [
        folder for folder in walk_folders(root) if child_folder(folder, "original") and child_folder(folder, "GT")
    ]
    base = one_folder(root, candidates, "BUS folder with original/ and GT/", "BUS/original/000001.png and BUS/GT/")
    raw = RawDataset(base, [])
    originals, truths = child_folder(base, "original"), child_folder(base, "GT")
    assert originals is not None and truths is not None, "the folder was chosen for having both"
    raw.cases = pair_by_stem(raw, image_files(raw, originals), image_files(raw, truths))
    raw.notes.append(
        "BUS has no official split: the split is seeded, image by image (the download's benign/malignant labels "
        "are not read, so the split is not stratified by class)"
    )
    return raw
