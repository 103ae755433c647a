"""Histology downloads: GlaS, the MICCAI 2015 gland segmentation contest (Warwick-QU, Sirinukunwattana et al. 2017).

Layout, as the download unpacks (source in docs/data.md)::

    Warwick QU Dataset (Released 2016_07_08)/<subset>_<n>.bmp        subset: train, testA, testB
    Warwick QU Dataset (Released 2016_07_08)/<subset>_<n>_anno.bmp   instance label map (0 = background)
    Warwick QU Dataset (Released 2016_07_08)/Grade.csv               grades (not used)
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from genmedseg.data.prepare.core import (
    PrepareOptions,
    RawDataset,
    one_folder,
    pair_by_stem,
    visible_files,
    walk_folders,
)

_GLAS_IMAGE = re.compile(r"(?P<subset>train|testA|testB)_(?P<number>\d+)\.bmp")
_GLAS_MASK = re.compile(r"(?:train|testA|testB)_\d+_anno\.bmp")
_SPLIT_OF_SUBSET = {"train": "train", "testA": "test", "testB": "test"}


def read_glas(root: Path, options: PrepareOptions) -> RawDataset:
    """GlaS: the official train / testA / testB parts (both test parts become ``test``); masks are label maps."""
    candidates = [
        folder
        for folder in walk_folders(root)
        if any(_GLAS_IMAGE.fullmatch(path.name) for path in visible_files(folder))
    ]
    base = one_folder(
        root, candidates, "GlaS folder", "Warwick QU Dataset (Released 2016_07_08)/train_1.bmp and train_1_anno.bmp"
    )
    raw = RawDataset(base, [], split_source="the contest's train, testA and testB images (testA and testB = test)")
    files = visible_files(base)
    images = [path for path in files if _GLAS_IMAGE.fullmatch(path.name)]
    masks = [path for path in files if _GLAS_MASK.fullmatch(path.name)]
    raw.ignored["not a GlaS image or annotation (e.g. Grade.csv)"] += [
        path for path in files if path not in images and path not in masks
    ]
    for case in pair_by_stem(raw, images, masks, lambda stem: f"{stem}_anno", label_map=True):
        match = _GLAS_IMAGE.fullmatch(case.image.name)
        assert match is not None, "only matching images were paired"
        raw.cases.append(replace(case, split=_SPLIT_OF_SUBSET[match["subset"]], subset=match["subset"]))
    raw.notes.append(
        "testA and testB are both in test; meta.csv's official_subset column says which image is which, so that "
        "they can be scored apart"
    )
    raw.notes.append(
        "val is carved from train image by image: GlaS has 16 patients over 165 images, so val shares patients "
        "with train (this touches checkpoint selection only; test stays the official one)"
    )
    return raw
