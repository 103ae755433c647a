"""``genmedseg prepare``: public segmentation datasets, as people download them, into the GMS layout.

:func:`prepare_dataset` finds the dataset's folders in the unpacked download, decodes every image and mask, merges
masks that belong to one image, makes masks binary 0/255 PNG, keeps the official train/val/test split where the
dataset has one and otherwise makes a seeded one, and writes ``images/``, ``masks/``, the split
(``<name>_train_test_names.pkl``), ``meta.csv`` (provenance per image) and ``prepare_report.md`` (what was merged,
converted, dropped or ignored, and why). Layouts and their sources: docs/data.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from genmedseg.data.prepare.core import (
    PrepareOptions,
    PrepareResult,
    RawDataset,
    check_options,
    check_out_dir,
    seeded_split,
    write_dataset,
)
from genmedseg.data.prepare.dermoscopy import read_ham10000, read_isic
from genmedseg.data.prepare.endoscopy import read_cvc_clinicdb, read_kvasir_instrument, read_kvasir_seg
from genmedseg.data.prepare.histology import read_glas
from genmedseg.data.prepare.ultrasound import read_bus, read_busi
from genmedseg.errors import ConfigError, DataError

__all__ = ["DATASETS", "PrepareOptions", "PrepareResult", "prepare_dataset", "seeded_split"]


@dataclass(frozen=True)
class DatasetReader:
    """A dataset ``prepare`` knows: its name on the command line, its title and the reader of its download."""

    name: str
    title: str
    read: Callable[[Path, PrepareOptions], RawDataset]


DATASETS: dict[str, DatasetReader] = {
    reader.name: reader
    for reader in (
        DatasetReader("busi", "BUSI breast ultrasound (Dataset_BUSI_with_GT)", read_busi),
        DatasetReader("bus", "BUS breast ultrasound (UDIAT Dataset B)", read_bus),
        DatasetReader("kvasir-seg", "Kvasir-SEG polyps", read_kvasir_seg),
        DatasetReader("kvasir-instrument", "Kvasir-Instrument endoscopic tools", read_kvasir_instrument),
        DatasetReader("cvc-clinicdb", "CVC-ClinicDB polyps", read_cvc_clinicdb),
        DatasetReader("isic2016", "ISIC 2016 lesion segmentation (Part 1)", partial(read_isic, release="isic2016")),
        DatasetReader("isic2017", "ISIC 2017 lesion segmentation (Part 1)", partial(read_isic, release="isic2017")),
        DatasetReader("isic2018", "ISIC 2018 lesion segmentation (Task 1)", partial(read_isic, release="isic2018")),
        DatasetReader("ham10000", "HAM10000 with its lesion masks", read_ham10000),
        DatasetReader("glas", "GlaS gland segmentation (Warwick-QU)", read_glas),
    )
}
"""Every dataset ``genmedseg prepare`` reads, by its command-line name."""


def prepare_dataset(
    name: str,
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    exclude_normal: bool = False,
) -> PrepareResult:
    """Turn the download of dataset ``name`` in ``raw_dir`` into a new GMS-layout dataset folder ``out_dir``.

    ``val_fraction`` and ``test_fraction`` size the seeded splits, used where the dataset has no official split
    (or lacks that part of it); ``seed`` chooses them. ``exclude_normal`` leaves out BUSI's normal cases. The
    arguments are checked before any file is read; ``out_dir`` must be new or empty, and it only appears, complete,
    when everything succeeded.
    """
    reader = DATASETS.get(name.strip().lower())
    if reader is None:
        raise ConfigError(f"unknown dataset {name!r}; prepare knows: {', '.join(DATASETS)}")
    options = PrepareOptions(val_fraction, test_fraction, seed, exclude_normal, workers=min(8, os.cpu_count() or 1))
    check_options(options)
    if exclude_normal and reader.name != "busi":
        raise ConfigError("--exclude-normal applies to busi only (its normal cases have empty masks)")
    raw_path, out_path = Path(raw_dir).resolve(), Path(out_dir).resolve()
    if not raw_path.is_dir():
        raise DataError(f"{raw_path}: RAW_DIR is not a folder; give the folder the download was unpacked into")
    check_out_dir(out_path)
    return write_dataset(reader.name, reader.read(raw_path, options), out_path, options)
