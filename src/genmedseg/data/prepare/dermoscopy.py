"""Dermoscopy downloads: the ISIC 2016, 2017 and 2018 lesion segmentation challenges (Task 1 / Part 1) and HAM10000
with its lesion masks (Tschandl et al. 2018, 2020).

Layouts, as the downloads unpack (sources in docs/data.md); every image is ``ISIC_<7 digits>.jpg`` and its mask
``ISIC_<7 digits>_segmentation.png`` (``_Segmentation.png`` in 2016)::

    ISIC 2016  ISBI2016_ISIC_Part1_{Training,Test}_Data/ + ISBI2016_ISIC_Part1_{Training,Test}_GroundTruth/
    ISIC 2017  ISIC-2017_{Training,Validation,Test_v2}_Data/ + ISIC-2017_{...}_Part1_GroundTruth/
    ISIC 2018  ISIC2018_Task1-2_{Training,Validation,Test}_Input/ + ISIC2018_Task1_{...}_GroundTruth/
    HAM10000   HAM10000_images_part_1/ and _part_2/ + HAM10000_segmentations_lesion_tschandl/ + HAM10000_metadata.csv
"""

from __future__ import annotations

import csv
import filecmp
import re
from dataclasses import replace
from pathlib import Path

from genmedseg.data.prepare.core import (
    PrepareOptions,
    RawDataset,
    find_folders,
    image_files,
    not_found,
    one_folder,
    pair_by_stem,
    visible_files,
    walk_folders,
)

_ISIC_IMAGE = re.compile(r"ISIC_\d+\.jpe?g", re.IGNORECASE)
_HAM_MASKS = "HAM10000_segmentations_lesion_tschandl"
_HAM_METADATA = re.compile(r"HAM10000_metadata(\.csv|\.tab|\.txt)?", re.IGNORECASE)

ISIC_PARTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "isic2016": (
        ("train", "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
        ("test", "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    ),
    "isic2017": (
        ("train", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        ("val", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        ("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    ),
    "isic2018": (
        ("train", "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        ("val", "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        ("test", "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    ),
}
"""Each challenge's (split, image folder, mask folder), named as the challenge's zip files unpack."""


def _segmentation_mask(stem: str) -> str:
    return f"{stem}_segmentation"  # compared case-insensitively: 2016 writes _Segmentation


def _isic_images(raw: RawDataset, folder: Path) -> list[Path]:
    """The ``ISIC_<id>.jpg`` files of ``folder``; superpixel maps, metadata and licence files are set aside."""
    files = image_files(raw, folder)
    raw.ignored["not an ISIC_<id>.jpg image (e.g. a superpixel map)"] += [
        path for path in files if not _ISIC_IMAGE.fullmatch(path.name)
    ]
    return [path for path in files if _ISIC_IMAGE.fullmatch(path.name)]


def read_isic(root: Path, options: PrepareOptions, release: str) -> RawDataset:
    """One ISIC challenge release: its official parts, each a folder of images and one of masks."""
    parts = ISIC_PARTS[release]
    raw = RawDataset(root, [])
    present = []
    for split, image_name, mask_name in parts:
        image_folders, mask_folders = find_folders(root, image_name), find_folders(root, mask_name)
        if not image_folders and not mask_folders:
            continue
        image_folder = one_folder(root, image_folders, f"{image_name} folder", f"{image_name}/ISIC_<id>.jpg")
        mask_folder = one_folder(root, mask_folders, f"{mask_name} folder", f"{mask_name}/ISIC_<id>_segmentation.png")
        present.append(split)
        images, masks = _isic_images(raw, image_folder), image_files(raw, mask_folder)
        raw.cases += pair_by_stem(raw, images, masks, _segmentation_mask, split=split)
    if not present:
        raise not_found(root, f"{release.upper()} folder", ", ".join(f"{image}/ + {mask}/" for _, image, mask in parts))
    raw.split_source = f"{release.upper()}'s " + ", ".join(
        f"{image}/ as {split}" for split, image, _ in parts if split in present
    )
    for split, image_name, _ in parts:
        if split not in present:
            carved = "carved from the official train part" if split != "train" else "not there"
            raw.warnings.append(f"the official {split} part ({image_name}) is not in RAW_DIR: its split is {carved}")
    return raw


def _read_lesion_ids(raw: RawDataset, path: Path) -> dict[str, str]:
    """``image_id -> lesion_id`` of HAM10000's metadata table (comma or tab separated)."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    delimiter = "\t" if lines and lines[0].count("\t") > lines[0].count(",") else ","
    rows = list(csv.DictReader(lines, delimiter=delimiter))
    if not rows or not {"image_id", "lesion_id"} <= set(rows[0]):
        raw.warnings.append(f"{path}: no image_id and lesion_id columns; images are split without lesion groups")
        return {}
    return {row["image_id"].strip(): row["lesion_id"].strip() for row in rows if row.get("image_id")}


def read_ham10000(root: Path, options: PrepareOptions) -> RawDataset:
    """HAM10000: images of both parts with the lesion masks; the split keeps all images of one lesion together."""
    mask_folder = one_folder(
        root, find_folders(root, _HAM_MASKS), f"{_HAM_MASKS} folder", f"{_HAM_MASKS}/ISIC_<id>_segmentation.png"
    )
    folders = [folder for folder in walk_folders(root) if folder != mask_folder]
    image_folders = [folder for folder in folders if folder.name.lower().startswith("ham10000_images")]
    if not image_folders:
        # The Dataverse zips may unpack without their folder: take any folder of ISIC_<id>.jpg files.
        image_folders = [folder for folder in folders if any(_ISIC_IMAGE.fullmatch(p.name) for p in folder.iterdir())]
    if not image_folders:
        raise not_found(root, "HAM10000 images", "HAM10000_images_part_1/ISIC_<id>.jpg and HAM10000_images_part_2/")
    raw = RawDataset(root, [])
    raw.notes.append("images read from " + ", ".join(f"`{folder.relative_to(root)}`" for folder in image_folders))
    images: dict[str, Path] = {}
    for folder in image_folders:
        for path in _isic_images(raw, folder):
            first = images.setdefault(path.stem, path)
            if first == path:
                continue
            if filecmp.cmp(first, path, shallow=False):
                raw.ignored["second copy of the same image"].append(path)
            else:
                raw.dropped.append((path, f"a different file of the same name as {first}"))
    cases = pair_by_stem(raw, sorted(images.values()), image_files(raw, mask_folder), _segmentation_mask)
    metadata = [
        path for folder in walk_folders(root) for path in visible_files(folder) if _HAM_METADATA.fullmatch(path.name)
    ]
    if metadata:
        lesion_of = _read_lesion_ids(raw, metadata[0])
        raw.cases = [replace(case, group=lesion_of.get(case.image.stem)) for case in cases]
        raw.notes.append(f"lesion ids from {metadata[0]}: all images of one lesion are in the same split")
    else:
        raw.cases = cases
        raw.warnings.append(
            "no HAM10000_metadata.csv in RAW_DIR: images are split one by one, so the several images of one lesion "
            "can be in train and in test; put the metadata file of the download in RAW_DIR to split by lesion"
        )
    raw.notes.append("HAM10000 has no official segmentation split: the split is seeded")
    return raw
