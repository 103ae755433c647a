"""``genmedseg prepare``: every dataset from a small fabricated copy of its download layout, the split rules, the
report, and that a failed prepare leaves nothing behind."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmedseg.cli import PREPARE_DATASETS, main
from genmedseg.data import check_dataset, discover, read_image, read_mask
from genmedseg.data.prepare import DATASETS, prepare_dataset, seeded_split
from genmedseg.data.prepare.core import Case
from genmedseg.errors import ConfigError, DataError

SIZE = (12, 10)  # H x W of every fabricated image


def _image(path: Path, seed: int = 0, mode: str = "RGB", size: tuple[int, int] = SIZE) -> Path:
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if mode == "RGB" else size
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _square(top: int = 2, left: int = 2, side: int = 5, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _mask(path: Path, mask: np.ndarray, high: int = 255, **save_options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, high, 0).astype(np.uint8)).save(path, **save_options)
    return path


def _splits(out: Path) -> dict[str, list[str]]:
    (split_file,) = out.glob("*_train_test_names.pkl")
    with split_file.open("rb") as file:
        return {split: lists["name_list"] for split, lists in pickle.load(file).items()}


def _report(out: Path) -> str:
    return (out / "prepare_report.md").read_text()


def _assert_clean_dataset(out: Path, n_pairs: int) -> None:
    """The prepared folder reads as a dataset with a split file and no errors; masks are 0/255."""
    index = discover(out)
    assert len(index.pairs) == n_pairs and index.split_source.endswith("_train_test_names.pkl")
    problems = check_dataset(out)
    assert not [p for p in problems if p.severity == "error"], problems
    assert "no_split_file" not in {p.kind for p in problems}
    for _, mask_path in index.pairs.values():
        assert set(np.unique(np.asarray(Image.open(mask_path)))) <= {0, 255}


# ------------------------------------------------------------------------------------------------------- BUSI


def _busi(raw: Path) -> Path:
    root = raw / "Dataset_BUSI_with_GT"
    for label in ("benign", "malignant", "normal"):
        for n in range(1, 6):
            _image(root / label / f"{label} ({n}).png", seed=n, mode="L")
            _mask(root / label / f"{label} ({n})_mask.png", _square() if label != "normal" else _square(side=0))
    _mask(root / "benign" / "benign (2)_mask_1.png", _square(8, 6, 2))  # a second lesion: merged
    _image(root / "malignant" / "malignant (9).png", mode="L")  # no mask: dropped
    (root / "benign" / "Thumbs.db").write_bytes(b"\0")
    return raw


def test_busi_merges_extra_masks_keeps_normals_and_stratifies(tmp_path: Path) -> None:
    out = tmp_path / "busi"
    result = prepare_dataset("busi", _busi(tmp_path / "raw"), out)
    _assert_clean_dataset(out, 15)
    merged = read_mask(out / "masks" / "benign_2.png")
    assert np.array_equal(merged, _square() | _square(8, 6, 2))
    assert not read_mask(out / "masks" / "normal_3.png").any()
    splits = _splits(out)
    assert {split: len(names) for split, names in splits.items()} == {"train": 9, "val": 3, "test": 3}
    for split in ("val", "test"):  # one of each class: the split is stratified
        assert sorted(name.split("_")[0] for name in splits[split]) == ["benign", "malignant", "normal"]
    assert result.counts == {"train": 9, "val": 3, "test": 3} and result.dropped == 1
    report = _report(out)
    assert "`benign_2` (2 masks)" in report and "malignant (9).png`: no mask" in report and "Thumbs.db" in report
    assert (out / "images" / "benign_1.png").read_bytes() == (
        tmp_path / "raw/Dataset_BUSI_with_GT/benign/benign (1).png"
    ).read_bytes()


def test_busi_exclude_normal(tmp_path: Path) -> None:
    out = tmp_path / "busi"
    prepare_dataset("busi", _busi(tmp_path / "raw"), out, exclude_normal=True)
    assert not any(name.startswith("normal") for names in _splits(out).values() for name in names)
    assert "5 normal (no lesion) cases left out" in _report(out)
    with pytest.raises(ConfigError, match="busi only"):
        prepare_dataset("bus", tmp_path / "raw", tmp_path / "other", exclude_normal=True)


# -------------------------------------------------------------------------------------------------------- BUS


def test_bus_pairs_original_with_gt(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "BUS"
    for n in range(1, 11):
        _image(raw / "original" / f"{n:06d}.png", seed=n, mode="L")
        _mask(raw / "GT" / f"{n:06d}.png", _square(n % 5, 1))
    (raw / "DatasetB.xlsx").write_bytes(b"not read")
    out = tmp_path / "bus"
    prepare_dataset("bus", tmp_path / "raw", out, val_fraction=0.2, test_fraction=0.3, seed=1)
    _assert_clean_dataset(out, 10)
    assert {split: len(names) for split, names in _splits(out).items()} == {"train": 5, "val": 2, "test": 3}
    assert np.array_equal(read_mask(out / "masks" / "000003.png"), _square(3, 1))


# -------------------------------------------------------------------------------------------------- endoscopy


def test_kvasir_seg_thresholds_jpeg_masks(tmp_path: Path) -> None:
    root = tmp_path / "raw" / "Kvasir-SEG"
    size = (32, 32)
    for n in range(6):
        _image(root / "images" / f"cju{n}.jpg", seed=n, size=size)
        # RGB JPEG masks, as in the download: compression noise around 0 and 255.
        grey = np.where(_square(5, 7, 15, size), 255, 0).astype(np.uint8)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(root / "masks" / f"cju{n}.jpg", quality=75)
    (root / "kavsir_bboxes.json").write_text("{}")
    out = tmp_path / "kvasir"
    prepare_dataset("kvasir-seg", tmp_path / "raw", out)
    _assert_clean_dataset(out, 6)
    mask = read_mask(out / "masks" / "cju0.png")
    assert (mask == _square(5, 7, 15, size)).mean() > 0.98
    assert (out / "images" / "cju0.jpg").is_file()  # JPEG images are copied, not re-encoded
    assert "6 mask(s) had more than two values" in _report(out)


def test_kvasir_instrument_keeps_the_official_lists(tmp_path: Path) -> None:
    root = tmp_path / "raw" / "kvasir-instrument"
    names = [f"ck{n:02d}" for n in range(8)]
    for n, name in enumerate(names):
        _image(root / "images" / f"{name}.jpg", seed=n)
        _mask(root / "masks" / f"{name}.png", _square(n % 4, 2))
    (root / "train.txt").write_text("\n".join(names[:5]) + "\n")
    (root / "test.txt").write_text("\n".join([*names[5:7], "ghost"]) + "\n")  # ck07 is in no list
    out = tmp_path / "instrument"
    prepare_dataset("kvasir-instrument", tmp_path / "raw", out, val_fraction=0.2)
    splits = _splits(out)
    assert splits["test"] == ["ck05", "ck06"]
    assert len(splits["val"]) == 1 and sorted(splits["train"] + splits["val"]) == names[:5]
    report = _report(out)
    assert "ck07.jpg`: listed in neither train.txt nor test.txt" in report and "ghost" in report
    assert "official split kept" in report


def test_cvc_clinicdb_uses_the_tiff_copy_and_converts_it(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for copy, suffix in (("TIF", ".tif"), ("PNG", ".png")):  # a Kaggle mirror ships both
        for n in range(1, 6):
            _image(raw / copy / "Original" / f"{n}{suffix}", seed=n)
            _mask(raw / copy / "Ground Truth" / f"{n}{suffix}", _square(n, 1))
    out = tmp_path / "cvc"
    result = prepare_dataset("cvc-clinicdb", raw, out)
    _assert_clean_dataset(out, 5)
    converted = out / "images" / "3.png"
    assert np.array_equal(read_image(converted), read_image(raw / "TIF" / "Original" / "3.tif"))
    report = _report(out)
    assert "converted .tif -> PNG (lossless, same pixels): 5" in report and "PNG" in report
    assert any("29 colonoscopy videos" in warning for warning in result.warnings)


# ------------------------------------------------------------------------------------------------- dermoscopy


def _isic_part(raw: Path, image_folder: str, mask_folder: str, ids: range, suffix: str = "_segmentation") -> None:
    for i in ids:
        _image(raw / image_folder / f"ISIC_{i:07d}.jpg", seed=i)
        _mask(raw / mask_folder / f"ISIC_{i:07d}{suffix}.png", _square(i % 4, 2))


def test_isic2016_keeps_train_and_test_and_carves_val(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _isic_part(
        raw, "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth", range(10), "_Segmentation"
    )
    _isic_part(
        raw, "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth", range(10, 14), "_Segmentation"
    )
    out = tmp_path / "isic2016"
    prepare_dataset("isic2016", raw, out, val_fraction=0.2, test_fraction=0.5)
    splits = _splits(out)
    assert splits["test"] == [f"ISIC_{i:07d}" for i in range(10, 14)]
    assert len(splits["val"]) == 2 and len(splits["train"]) == 8
    assert "--test-fraction was not used" in _report(out)


def test_isic2017_sets_aside_superpixels_and_metadata(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    parts = [("Training", range(6)), ("Validation", range(6, 8)), ("Test_v2", range(8, 11))]
    for part, ids in parts:
        _isic_part(raw, f"ISIC-2017_{part}_Data", f"ISIC-2017_{part}_Part1_GroundTruth", ids)
    _mask(raw / "ISIC-2017_Training_Data" / "ISIC_0000000_superpixels.png", _square())
    (raw / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id\n")
    out = tmp_path / "isic2017"
    prepare_dataset("isic2017", raw, out)
    _assert_clean_dataset(out, 11)
    assert {split: len(names) for split, names in _splits(out).items()} == {"train": 6, "val": 2, "test": 3}
    report = _report(out)
    assert "ISIC_0000000_superpixels.png" in report and "metadata.csv" in report


def test_isic2018_without_its_test_part_carves_one_and_warns(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _isic_part(raw, "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", range(10))
    _isic_part(raw, "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth", range(10, 12))
    (raw / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC-BY-NC")
    # Some unpackers nest a folder in one of the same name (X/X/): it is found all the same.
    nested = raw / "ISIC2018_Task1_Validation_GroundTruth"
    nested.rename(raw / "tmp")
    (raw / "tmp").rename(nested.parent / "tmp2")
    nested.mkdir()
    (raw / "tmp2").rename(nested / nested.name)
    out = tmp_path / "isic2018"
    result = prepare_dataset("isic2018", raw, out, test_fraction=0.3)
    assert {split: len(names) for split, names in _splits(out).items()} == {"train": 7, "val": 2, "test": 3}
    assert any("official test part" in warning for warning in result.warnings)


def test_ham10000_keeps_each_lesion_in_one_split(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    rows = ["lesion_id,image_id,dx"]
    for i in range(24):
        part = "HAM10000_images_part_1" if i < 12 else "HAM10000_images_part_2"
        _image(raw / part / f"ISIC_{i:07d}.jpg", seed=i)
        _mask(raw / "HAM10000_segmentations_lesion_tschandl" / f"ISIC_{i:07d}_segmentation.png", _square(i % 4))
        rows.append(f"HAM_{i // 3:07d},ISIC_{i:07d},nv")  # three images per lesion
    (raw / "HAM10000_metadata.csv").write_text("\n".join(rows) + "\n")
    copy = raw / "ham10000_images_part_1" / "ISIC_0000001.jpg"  # a second, identical copy of one image
    copy.parent.mkdir()
    copy.write_bytes((raw / "HAM10000_images_part_1" / "ISIC_0000001.jpg").read_bytes())
    out = tmp_path / "ham"
    result = prepare_dataset("ham10000", raw, out, val_fraction=0.25, test_fraction=0.25)
    _assert_clean_dataset(out, 24)
    split_of = {name: split for split, names in _splits(out).items() for name in names}
    for lesion in range(8):
        assert len({split_of[f"ISIC_{lesion * 3 + k:07d}"] for k in range(3)}) == 1
    assert {split: sum(s == split for s in split_of.values()) for split in ("val", "test")} == {"val": 6, "test": 6}
    assert "second copy of the same image: 1" in _report(out) and not result.warnings


def test_ham10000_without_metadata_warns_about_lesion_leaks(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for i in range(5):
        _image(raw / "HAM10000_images_part_1" / f"ISIC_{i:07d}.jpg", seed=i)
        _mask(raw / "HAM10000_segmentations_lesion_tschandl" / f"ISIC_{i:07d}_segmentation.png", _square())
    result = prepare_dataset("ham10000", raw, tmp_path / "ham")
    assert any("HAM10000_metadata.csv" in warning for warning in result.warnings)


# -------------------------------------------------------------------------------------------------- histology


def test_glas_keeps_the_contest_split_and_binarises_label_maps(tmp_path: Path) -> None:
    root = tmp_path / "raw" / "Warwick QU Dataset (Released 2016_07_08)"
    labels = np.zeros((16, 16), dtype=np.uint8)
    labels[1:4, 1:4], labels[6:9, 6:9], labels[12:15, 2:5] = 3, 130, 200  # ids above 127 are glands too
    for subset, count in (("train", 6), ("testA", 3), ("testB", 2)):
        for n in range(1, count + 1):
            _image(root / f"{subset}_{n}.bmp", seed=n, size=(16, 16))
            Image.fromarray(labels).save(root / f"{subset}_{n}_anno.bmp")
    (root / "Grade.csv").write_text("name, patient ID, grade (GlaS)\n")
    out = tmp_path / "glas"
    prepare_dataset("glas", tmp_path / "raw", out, val_fraction=0.2)
    _assert_clean_dataset(out, 11)
    splits = _splits(out)
    assert sorted(splits["test"]) == ["testA_1", "testA_2", "testA_3", "testB_1", "testB_2"]
    assert len(splits["val"]) == 1 and len(splits["train"]) == 5
    assert np.array_equal(read_mask(out / "masks" / "train_1.png"), labels > 0)
    assert (out / "images" / "train_1.png").is_file()  # BMP converted to PNG
    assert "11 instance label map(s) made binary as label > 0 (33 instances in all)" in _report(out)
    assert "testA" in (out / "meta.csv").read_text()


# ------------------------------------------------------------------------------------------------ split rules


def _cases(count: int, group_size: int = 1, strata: int = 1) -> list[Case]:
    return [
        Case(
            f"c{i:03d}",
            Path(f"c{i}.png"),
            (),
            group=f"g{i // group_size}" if group_size > 1 else None,
            stratum=f"s{i % strata}" if strata > 1 else None,
        )
        for i in range(count)
    ]


def test_seeded_split_counts_groups_strata_and_determinism() -> None:
    splits = seeded_split(_cases(50), 0.1, 0.2, seed=3)
    assert {split: len(names) for split, names in splits.items()} == {"train": 35, "val": 5, "test": 10}
    assert seeded_split(list(reversed(_cases(50))), 0.1, 0.2, seed=3) == splits  # order does not matter
    assert seeded_split(_cases(50), 0.1, 0.2, seed=4) != splits
    grown = seeded_split(_cases(51), 0.0, 0.2, seed=3)  # an added image moves no other image out of test...
    assert len(set(splits["test"]) - set(grown["test"])) <= 1  # ...except at the quota boundary
    grouped = seeded_split(_cases(30, group_size=3), 0.2, 0.2, seed=0)
    split_of = {name: split for split, names in grouped.items() for name in names}
    assert all(len({split_of[f"c{g * 3 + k:03d}"] for k in range(3)}) == 1 for g in range(10))
    stratified = seeded_split(_cases(40, strata=2), 0.0, 0.5, seed=0)
    assert sum(int(name[1:]) % 2 for name in stratified["test"]) == 10  # half of each stratum


def test_bad_arguments_fail_before_any_file_is_read(tmp_path: Path) -> None:
    raw = _busi(tmp_path / "raw")
    with pytest.raises(ConfigError, match=r"unknown dataset 'busy'.*busi"):
        prepare_dataset("busy", raw, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"--val-fraction 1\.5"):
        prepare_dataset("busi", raw, tmp_path / "out", val_fraction=1.5)
    with pytest.raises(ConfigError, match="sum below 1"):
        prepare_dataset("busi", raw, tmp_path / "out", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="not a folder"):
        prepare_dataset("busi", tmp_path / "absent", tmp_path / "out")
    with pytest.raises(DataError, match="found no Kvasir-SEG folder"):
        prepare_dataset("kvasir-seg", raw, tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        prepare_dataset("busi", raw, tmp_path / "full")
    assert not (tmp_path / "out").exists() and (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_a_failed_prepare_leaves_no_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _busi(tmp_path / "raw")
    from genmedseg.data.prepare import core

    written = []

    def full_disk(path, mask):
        written.append(path)
        if len(written) > 4:
            raise OSError(28, "No space left on device")
        real_write(path, mask)

    real_write = core.write_mask_png
    monkeypatch.setattr(core, "write_mask_png", full_disk)
    with pytest.raises(OSError, match="No space"):
        prepare_dataset("busi", raw, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no OUT_DIR, no temporary folder


def test_a_corrupt_file_is_dropped_with_its_reason(tmp_path: Path) -> None:
    raw = _busi(tmp_path / "raw")
    image = raw / "Dataset_BUSI_with_GT" / "benign" / "benign (4).png"
    image.write_bytes(image.read_bytes()[:-30])
    small = raw / "Dataset_BUSI_with_GT" / "benign" / "benign (5)_mask.png"
    _mask(small, np.ones((3, 3), dtype=bool))
    out = tmp_path / "out"
    result = prepare_dataset("busi", raw, out)
    assert result.dropped == 3 and not (out / "images" / "benign_4.png").exists()
    report = _report(out)
    assert "- `benign/benign (4).png`: truncated image data" in report
    assert "- `benign/benign (5).png`: benign/benign (5)_mask.png: mask is 3x3 (WxH)" in report
    _assert_clean_dataset(out, 13)


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_prepare_then_check_data_and_the_no_split_warning(tmp_path: Path, capsys) -> None:
    raw = _busi(tmp_path / "raw")
    assert main(["prepare", "busi", str(raw), str(tmp_path / "out"), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert "train 9, val 3, test 3" in printed and "1 file(s) dropped" in printed
    assert main(["check-data", str(tmp_path / "out")]) == 0
    assert "no_split_file" not in capsys.readouterr().out
    next((tmp_path / "out").glob("*.pkl")).unlink()
    assert main(["check-data", str(tmp_path / "out")]) == 0  # a warning, not an error
    assert "genmedseg prepare" in capsys.readouterr().out
    assert main(["prepare", "busi", str(raw), str(tmp_path / "out")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_the_cli_lists_every_dataset_prepare_knows() -> None:
    assert tuple(DATASETS) == PREPARE_DATASETS


def test_every_dataset_explains_a_wrong_raw_dir(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for name in DATASETS:
        with pytest.raises(DataError, match="found no") as info:
            prepare_dataset(name, tmp_path / "empty", tmp_path / f"out-{name}")
        assert "docs/data.md" in str(info.value)
