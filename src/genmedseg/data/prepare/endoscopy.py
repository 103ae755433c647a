"""Endoscopy downloads: Kvasir-SEG (Jha et al. 2020), Kvasir-Instrument (Jha et al. 2021), CVC-ClinicDB (Bernal
et al. 2015).

Layouts, as the downloads unpack (sources in docs/data.md)::

    Kvasir-SEG/images/<id>.jpg          Kvasir-SEG/masks/<id>.jpg (JPEG masks, thresholded)
    kvasir-instrument/images/<id>.jpg   kvasir-instrument/masks/<id>.<png|jpg>, train.txt and test.txt (names)
    CVC-ClinicDB/Original/<n>.tif       CVC-ClinicDB/Ground Truth/<n>.tif
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from genmedseg.data.prepare.core import (
    PrepareOptions,
    RawDataset,
    child_folder,
    find_folders,
    image_files,
    is_image_file,
    one_folder,
    pair_by_stem,
    walk_folders,
)

_INSTRUMENT_LISTS = (("train", "train.txt"), ("test", "test.txt"))
_TIFF = (".tif", ".tiff")


def _has_images_and_masks(folder: Path) -> bool:
    return child_folder(folder, "images") is not None and child_folder(folder, "masks") is not None


def _images_and_masks(raw: RawDataset, base: Path) -> tuple[list[Path], list[Path]]:
    images, masks = child_folder(base, "images"), child_folder(base, "masks")
    assert images is not None and masks is not None, "the folder was chosen for having both"
    return image_files(raw, images), image_files(raw, masks)


def read_kvasir_seg(root: Path, options: PrepareOptions) -> RawDataset:
    """Kvasir-SEG: ``images/`` and ``masks/`` of the same names; no official split."""
    candidates = [folder for folder in find_folders(root, "Kvasir-SEG") if _has_images_and_masks(folder)]
    if not candidates and _has_images_and_masks(root):
        candidates = [root]
    base = one_folder(root, candidates, "Kvasir-SEG folder", "Kvasir-SEG/images/<id>.jpg and Kvasir-SEG/masks/<id>.jpg")
    raw = RawDataset(base, [])
    raw.cases = pair_by_stem(raw, *_images_and_masks(raw, base))
    raw.notes.append(
        "Kvasir-SEG's download has no train/val/test split: the split is seeded, image by image. (The 880/120 "
        "train.txt/val.txt lists of the MediaEval 2020 Medico task are a separate download and are not read.)"
    )
    raw.notes.append("the masks are JPEG files: their compression noise is removed by thresholding at half the range")
    return raw


def _read_name_list(path: Path) -> list[str]:
    """Names of a split list, one per line; an image extension, if written, is dropped."""
    names = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        name = line.strip()
        if name:
            names.append(Path(name).stem if is_image_file(Path(name)) else name)
    return names


def read_kvasir_instrument(root: Path, options: PrepareOptions) -> RawDataset:
    """Kvasir-Instrument: ``images/`` and ``masks/``, with the official split of ``train.txt`` and ``test.txt``."""
    listed = [
        folder
        for folder in walk_folders(root)
        if _has_images_and_masks(folder) and any((folder / name).is_file() for _, name in _INSTRUMENT_LISTS)
    ]
    named = [folder for folder in find_folders(root, "kvasir-instrument") if _has_images_and_masks(folder)]
    candidates = listed or named or ([root] if _has_images_and_masks(root) else [])
    base = one_folder(
        root, candidates, "Kvasir-Instrument folder", "kvasir-instrument/images/, masks/, train.txt and test.txt"
    )
    raw = RawDataset(base, [])
    cases = pair_by_stem(raw, *_images_and_masks(raw, base))
    split_of: dict[str, str] = {}
    in_both: set[str] = set()
    for split, list_name in _INSTRUMENT_LISTS:
        if (base / list_name).is_file():
            for name in _read_name_list(base / list_name):
                if split_of.setdefault(name, split) != split:
                    in_both.add(name)
    if not split_of:
        raw.warnings.append(f"no train.txt or test.txt in {base}: the official split is missing, a seeded one is made")
        raw.cases = cases
        return raw
    raw.split_source = "train.txt and test.txt of the download"
    for case in cases:
        stem = case.image.stem
        if stem in in_both:
            raw.dropped.append((case.image, "listed in both train.txt and test.txt"))
        elif stem in split_of:
            raw.cases.append(replace(case, split=split_of[stem]))
        else:
            raw.dropped.append((case.image, "listed in neither train.txt nor test.txt"))
    missing = sorted(set(split_of) - {case.image.stem for case in cases})
    if missing:
        raw.notes.append(
            f"{len(missing)} name(s) of train.txt/test.txt have no image with a mask: {', '.join(missing[:5])}"
        )
    return raw


def read_cvc_clinicdb(root: Path, options: PrepareOptions) -> RawDataset:
    """CVC-ClinicDB: ``Original/`` frames paired with ``Ground Truth/`` masks of the same names.

    When the download holds several copies (a Kaggle mirror ships TIFF and PNG folders), the TIFF copy, that of
    the official release, is used.
    """
    found: dict[Path, tuple[Path, Path]] = {}
    for folder in walk_folders(root):
        images, masks = child_folder(folder, "Original"), child_folder(folder, "Ground Truth")
        if images is not None and masks is not None:
            found[folder] = (images, masks)
    tiff = [folder for folder, (images, _) in found.items() if any(p.suffix.lower() in _TIFF for p in images.iterdir())]
    base = one_folder(
        root,
        tiff or list(found),
        "CVC-ClinicDB folder with Original/ and Ground Truth/",
        "CVC-ClinicDB/Original/1.tif and CVC-ClinicDB/Ground Truth/1.tif",
    )
    raw = RawDataset(base, [])
    images, masks = found[base]
    raw.cases = pair_by_stem(raw, image_files(raw, images), image_files(raw, masks))
    others = [str(folder) for folder in found if folder != base]
    if others:
        raw.notes.append(f"other copies of the dataset were not used: {', '.join(others)}")
    raw.warnings.append(
        "CVC-ClinicDB's 612 frames come from 29 colonoscopy videos and the download says which frame belongs to "
        "which video nowhere we could find: the seeded split is image by image, so frames of one video (one polyp) "
        "can be in train and in test, which flatters test scores"
    )
    return raw
