"""Tests of genmedseg.data: readers, binarisation, layouts and splits, check-data, transforms, dataset, synthetic."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genmedseg.data import (
    DatasetIndex,
    EpochShuffleSampler,
    SegmentationDataset,
    assert_dataset_ok,
    augmentation_seed,
    carve_validation,
    check_dataset,
    discover,
    eval_transforms,
    format_report,
    image_to_float,
    make_synthetic_dataset,
    mask_stats,
    read_image,
    read_mask,
    read_probability_png,
    resize_image,
    set_seed,
    train_transforms,
    write_mask_png,
    write_probability_png,
)
from genmedseg.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------- helpers


def _save(path: Path, image: Image.Image | np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **options)
    return path


def _square_mask(size: int = 16, lo: int = 4, hi: int = 12) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[lo:hi, lo:hi] = True
    return mask


def _make_dataset(
    root: Path, names: list[str], size: tuple[int, int] = (12, 10), mask_suffix: str = "", image_ext: str = ".png"
) -> Path:
    """A dataset with an RGB image and a square 0/255 mask per name (no split file)."""
    rng = np.random.default_rng(0)
    for name in names:
        _save(root / "images" / f"{name}{image_ext}", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        write_mask_png(root / "masks" / f"{name}{mask_suffix}.png", _square_mask(max(size))[: size[0], : size[1]])
    return root


def _write_gms_pickle(path: Path, splits: dict[str, list[str]]) -> Path:
    with path.open("wb") as file:
        pickle.dump({split: {"name_list": names} for split, names in splits.items()}, file, protocol=4)
    return path


# ---------------------------------------------------------------------------------------------- read_image

RGB = np.array([[[255, 0, 0], [0, 128, 255]], [[10, 20, 30], [255, 255, 255]]], dtype=np.uint8)


def test_read_image_rgb_is_float_in_unit_range(tmp_path: Path) -> None:
    image = read_image(_save(tmp_path / "a.png", RGB))
    assert image.dtype == np.float32 and image.shape == (2, 2, 3)
    np.testing.assert_allclose(image, RGB / 255.0, atol=1e-7)


def test_read_image_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    image = read_image(_save(tmp_path / "g.png", gray))
    assert image.shape == (2, 2, 3)
    for channel in range(3):
        np.testing.assert_allclose(image[:, :, channel], [[0.0, 0.2], [0.8, 1.0]], atol=1e-7)


def test_read_image_rgba_drops_alpha_without_compositing(tmp_path: Path) -> None:
    rgba = np.zeros((1, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red stays red
    rgba[0, 1] = (0, 255, 0, 255)
    image = read_image(_save(tmp_path / "a.png", rgba))
    np.testing.assert_array_equal(image[0], [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def test_read_image_16_bit_is_scaled_by_65535(tmp_path: Path) -> None:
    values = np.array([[0, 255], [32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "u16.png", values)
    assert Image.open(path).mode in ("I;16", "I")
    image = read_image(path)
    np.testing.assert_allclose(image[:, :, 0], [[0.0, 255 / 65535], [32768 / 65535, 1.0]], rtol=1e-6)
    assert image.max() == 1.0  # not 65535 / 255


def test_read_image_big_endian_16_bit_tiff(tmp_path: Path) -> None:
    values = np.array([[0, 255], [32768, 65535]], dtype=">u2")
    path = _save(tmp_path / "big.tif", Image.frombytes("I;16B", (2, 2), values.tobytes()))
    assert Image.open(path).mode == "I;16B"
    np.testing.assert_allclose(read_image(path)[:, :, 2], values / 65535, rtol=1e-6)


def test_image_to_float_applies_the_read_image_rules_to_arrays() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 0
    np.testing.assert_array_equal(image_to_float(rgba)[..., 0], np.ones((2, 2)))
    gray16 = np.array([[0, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(image_to_float(gray16), [[[0, 0, 0], [1, 1, 1]]])
    assert image_to_float(np.full((1, 1, 3), 0.25)).dtype == np.float32
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        image_to_float(np.full((2, 2, 3), 200.0))  # a 0..255 float image is refused, not silently divided


def test_read_image_palette_uses_colours(tmp_path: Path) -> None:
    palette_image = Image.frombytes("P", (2, 1), bytes([0, 1]))
    palette_image.putpalette([0, 0, 0, 255, 128, 0] + [0] * (254 * 3))
    image = read_image(_save(tmp_path / "p.png", palette_image))
    np.testing.assert_allclose(image[0], [[0, 0, 0], [1.0, 128 / 255, 0]], atol=1e-7)


def test_read_image_one_bit_bmp_and_tiff(tmp_path: Path) -> None:
    np.testing.assert_array_equal(read_image(_save(tmp_path / "b.png", _square_mask(8)))[:, :, 1], _square_mask(8))
    np.testing.assert_allclose(read_image(_save(tmp_path / "a.bmp", RGB)), RGB / 255.0, atol=1e-7)
    np.testing.assert_allclose(read_image(_save(tmp_path / "a.tif", RGB)), RGB / 255.0, atol=1e-7)


def test_read_image_jpeg_is_close_to_the_original(tmp_path: Path) -> None:
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 3, axis=2).repeat(32, axis=0)
    image = read_image(_save(tmp_path / "a.jpg", smooth, quality=95))
    assert image.shape == (32, 32, 3)
    np.testing.assert_allclose(image, smooth / 255.0, atol=0.03)


# ----------------------------------------------------------------------------------------------- read_mask

SQUARE = _square_mask()


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("zero_255.png", np.where(SQUARE, 255, 0).astype(np.uint8)),
        ("zero_one.png", SQUARE.astype(np.uint8)),
        ("sixteen_bit.png", np.where(SQUARE, 65535, 0).astype(np.uint16)),
        ("sixteen_bit_as_0_255.png", np.where(SQUARE, 255, 0).astype(np.uint16)),
        ("one_bit.png", SQUARE),
        (
            "rgb_red.png",
            np.stack([np.where(SQUARE, 255, 0), np.zeros_like(SQUARE), np.zeros_like(SQUARE)], -1).astype(np.uint8),
        ),
        (
            "rgb_dark_blue_labels.png",
            np.stack([np.zeros_like(SQUARE)] * 2 + [np.where(SQUARE, 1, 0)], -1).astype(np.uint8),
        ),
    ],
)
def test_read_mask_binarisation_rules(tmp_path: Path, name: str, array: np.ndarray) -> None:
    mask = read_mask(_save(tmp_path / name, array))
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, SQUARE)


def test_read_mask_rgba_ignores_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[SQUARE, :3] = 255
    rgba[:, :8, 3] = 255  # alpha covers half the image and half the square: must not matter
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "m.png", rgba)), SQUARE)


def test_read_mask_instance_labels_are_all_foreground(tmp_path: Path) -> None:
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[0:2, 0:2], labels[3:5, 3:5], labels[0, 5] = 1, 7, 127
    path = _save(tmp_path / "labels.png", labels)
    np.testing.assert_array_equal(read_mask(path), labels > 0)
    stats = mask_stats(path)
    assert stats.distinct_values == 4 and stats.foreground_pixels == 9 and "value > 0" in stats.rule


def test_read_mask_scaled_rule_threshold_is_half_of_255(tmp_path: Path) -> None:
    values = np.array([[0, 100, 127, 128, 200, 255]], dtype=np.uint8)
    path = _save(tmp_path / "grey.png", values)
    np.testing.assert_array_equal(read_mask(path), [[False, False, False, True, True, True]])
    assert mask_stats(path).rule == "foreground = value / 255 > 0.5"


def test_read_mask_jpeg_noise_is_cleaned(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    truth = np.hypot(yy - 30.3, xx - 33.7) < 17
    path = _save(tmp_path / "noisy.jpg", np.where(truth, 255, 0).astype(np.uint8), quality=60)
    stored = np.asarray(Image.open(path))
    assert len(np.unique(stored)) > 50 and ((stored > 0) != truth).sum() > 100  # the JPEG really is noisy
    np.testing.assert_array_equal(read_mask(path), truth)


def test_mask_stats_flags_alpha_only_masks(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[SQUARE, 3] = 255
    stats = mask_stats(_save(tmp_path / "alpha.png", rgba))
    assert stats.alpha_only and stats.foreground_pixels == 0 and stats.shape == (16, 16)


# ----------------------------------------------------------------------------------------------- read errors


def _png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


NOISE = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_is_named_in_the_error(tmp_path: Path, fmt: str) -> None:
    data = _png_bytes(NOISE, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    for reader in (read_image, read_mask):
        with pytest.raises(DataError, match="truncated") as info:
            reader(path)
        assert str(path) in str(info.value) and "again" in str(info.value)


def test_corrupt_and_non_image_files_are_named_in_the_error(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match="not an image") as info:
        read_image(text)
    assert str(info.value).startswith(f"{text}: ")
    data = bytearray(_png_bytes(NOISE))
    data[200:260] = bytes(60)  # damage the compressed pixel data
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt|truncated") as info:
        read_image(damaged)
    assert str(damaged) in str(info.value)
    with pytest.raises(DataError, match="not found"):
        read_mask(tmp_path / "absent.png")


# ----------------------------------------------------------------------------------------------- writers


def test_write_mask_and_probability_png_round_trip(tmp_path: Path) -> None:
    mask_path = tmp_path / "out" / "m.png"
    write_mask_png(mask_path, SQUARE)
    stored = np.asarray(Image.open(mask_path))
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(read_mask(mask_path), SQUARE)

    probability_path = tmp_path / "out" / "p.png"
    write_probability_png(probability_path, np.array([[0.0, 0.2, 0.5, 1.0]]))
    np.testing.assert_array_equal(np.asarray(Image.open(probability_path)), [[0, 51, 128, 255]])
    np.testing.assert_allclose(read_probability_png(probability_path), [[0, 51 / 255, 128 / 255, 1.0]])
    write_probability_png(probability_path, np.ones((2, 2)))  # replaces the existing file
    assert read_probability_png(probability_path).shape == (2, 2)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.png", "p.png"]  # no temporary left over
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_probability_png(probability_path, np.array([[1.5]]))


# ----------------------------------------------------------------------------------------------- layout


def test_gms_pickle_layout_with_carved_validation(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["a", "b", "c", "d", "e"])
    _write_gms_pickle(root / "ds_train_test_names.pkl", {"train": ["a", "b", "c", "d"], "test": ["e"]})
    index = discover(root)
    assert list(index.pairs) == ["a", "b", "c", "d", "e"]
    assert index.pairs["a"] == (root / "images" / "a.png", root / "masks" / "a.png")
    assert index.split_source == "ds_train_test_names.pkl"
    assert index.splits["test"] == ["e"]
    assert len(index.splits["val"]) == 1  # round(0.1 * 4) = 0, but at least one
    assert sorted(index.splits["train"] + index.splits["val"]) == ["a", "b", "c", "d"]
    assert index.val_source == "carved from train (10%, seed 0): 1 images"
    assert index.problems == []


def test_csv_layout_with_extensions_aliases_and_listed_val(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["x1", "x2", "x3", "x4"])
    (root / "split.csv").write_text("Name,Split\nx1.png,train\nx2,training\nx3.png,Validation\nx4,test\n")
    index = discover(root)
    assert index.splits == {"train": ["x1", "x2"], "val": ["x3"], "test": ["x4"]}
    assert index.val_source == "listed in split.csv"


def test_explicit_split_file_and_bad_split_files(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["x1", "x2"])
    (root / "mine.csv").write_text("name,split\nx1,train\nx2,test\n")
    (root / "other.csv").write_text("name,split\nx1,train\nx2,holdout\n")
    assert discover(root, split_file="mine.csv").splits["test"] == ["x2"]  # relative to root
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        discover(root, split_file=root / "other.csv")
    (root / "split.csv").write_text("file,fold\nx1,0\n")
    with pytest.raises(DataError, match="needs the columns name,split"):
        discover(root)
    with pytest.raises(DataError, match="split file not found"):
        discover(root, split_file="absent.csv")


def test_mask_suffixes_and_image_extensions(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _make_dataset(root, ["ISIC_0000001"], mask_suffix="_segmentation", image_ext=".jpg")
    _make_dataset(root, ["case 7"], mask_suffix="_mask", image_ext=".BMP")
    _make_dataset(root, ["plain"], image_ext=".tif")
    index = discover(root)
    assert index.pairs["ISIC_0000001"][1].name == "ISIC_0000001_segmentation.png"
    assert index.pairs["case 7"] == (root / "images" / "case 7.BMP", root / "masks" / "case 7_mask.png")
    assert index.pairs["plain"][0].suffix == ".tif"
    assert index.split_source == "no split file: every pair is train"
    assert sorted(index.splits["train"] + index.splits["val"]) == ["ISIC_0000001", "case 7", "plain"]
    assert "test" not in index.splits


def test_carved_validation_is_deterministic_disjoint_and_order_independent(tmp_path: Path) -> None:
    names = [f"n{k:02d}" for k in range(20)]
    train, val = carve_validation(names, 0.1, seed=0)
    assert (train, val) == carve_validation(list(reversed(names)), 0.1, seed=0)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == names
    assert carve_validation(names, 0.1, seed=1)[1] != val
    assert carve_validation(names, 0.0, seed=0) == (names, [])
    with pytest.raises(ConfigError, match="val_fraction"):
        carve_validation(names, 1.0, seed=0)

    first = _make_dataset(tmp_path / "one", names[:12])
    second = _make_dataset(tmp_path / "two", list(reversed(names[:12])))  # other creation order
    for root in (first, second):
        _write_gms_pickle(root / "x_train_test_names.pkl", {"train": names[:10], "test": names[10:12]})
    one, two = discover(first, val_fraction=0.2, seed=3), discover(second, val_fraction=0.2, seed=3)
    assert one.splits == two.splits and len(one.splits["val"]) == 2
    assert not set(one.splits["val"]) & set(one.splits["test"])


def test_malicious_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    root = _make_dataset(tmp_path / "ds", ["a"])
    (root / "evil_train_test_names.pkl").write_bytes(pickle.dumps({"train": {"name_list": [Payload()]}}))
    with pytest.raises(DataError, match="not a plain split file") as info:
        discover(root)
    assert "system" in str(info.value) and not marker.exists()

    (root / "evil_train_test_names.pkl").write_bytes(pickle.dumps(["a"]))
    with pytest.raises(DataError, match="expected a dict"):
        discover(root)


def test_layout_problems_are_collected_not_raised(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["a", "b", "c", "d", "e"])
    _save(root / "images" / "a.jpg", NOISE)  # duplicate stem
    _save(root / "masks" / "e.jpg", SQUARE)  # duplicate mask stem: reported once, not also as a missing mask
    (root / "masks" / "b.png").unlink()  # image without mask
    write_mask_png(root / "masks" / "stray.png", SQUARE)  # mask without image
    (root / "images" / ".DS_Store").write_text("ignored silently")
    (root / "images" / "readme.txt").write_text("ignored with a warning")
    _write_gms_pickle(root / "ds_train_test_names.pkl", {"train": ["b", "c", "ghost1", "ghost2"], "test": ["c", "d"]})
    index = discover(root)
    found = sorted((p.kind, p.severity, p.path.name) for p in index.problems)
    assert found == [
        ("duplicate_stem", "error", "a.jpg"),
        ("duplicate_stem", "error", "e.jpg"),
        ("missing_image", "error", "ds_train_test_names.pkl"),
        ("missing_mask", "error", "b.png"),
        ("orphan_mask", "warning", "stray.png"),
        ("split_overlap", "error", "ds_train_test_names.pkl"),
        ("unsupported_file", "warning", "readme.txt"),
    ]
    missing = next(p for p in index.problems if p.kind == "missing_image")
    assert "ghost1, ghost2" in missing.message
    assert set(index.pairs) == {"c", "d"}
    assert index.splits["test"] == ["d"] and index.splits["train"] + index.splits["val"] == ["c"]


# ----------------------------------------------------------------------------------------------- check-data


def test_check_dataset_lists_every_problem(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["ok", "cut", "bad_mask", "small_mask", "grey", "empty", "lonely"])
    data = (root / "images" / "cut.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    (root / "masks" / "bad_mask.png").write_bytes(b"garbage")
    write_mask_png(root / "masks" / "small_mask.png", np.zeros((5, 5), dtype=bool))
    grey = np.zeros((12, 10), dtype=np.uint8)
    grey[2:6, 2:6], grey[6:10, 2:6] = 255, 100
    _save(root / "masks" / "grey.png", grey)
    write_mask_png(root / "masks" / "empty.png", np.zeros((12, 10), dtype=bool))
    (root / "masks" / "lonely.png").unlink()

    problems = check_dataset(root)
    found = [(p.kind, p.severity, p.path.name) for p in problems]
    assert found == [
        ("missing_mask", "error", "lonely.png"),
        ("no_split_file", "warning", "ds"),
        ("unreadable", "error", "bad_mask.png"),
        ("unreadable", "error", "cut.png"),
        ("empty_mask", "warning", "empty.png"),
        ("non_binary_mask", "warning", "grey.png"),
        ("size_mismatch", "error", "small_mask.png"),
        ("empty_mask", "warning", "small_mask.png"),
    ]
    assert "genmedseg prepare" in problems[1].message and "split.csv" in problems[1].message
    grey_problem = problems[5]
    assert "3 distinct values" in grey_problem.message and "value / 255 > 0.5" in grey_problem.message
    assert "truncated" in problems[3].message and "not an image" in problems[2].message
    assert "10x12" in problems[6].message and "5x5" in problems[6].message
    assert check_dataset(root, workers=1) == problems  # order does not depend on the thread pool

    report = format_report(problems, 6, root)
    lines = report.splitlines()
    assert lines[0].startswith("Checked 6 image/mask pairs: 4 error(s), 4 warning(s)")
    assert len(lines) == 1 + len(problems)
    assert lines[1].startswith("ERROR    images/lonely.png: no mask")
    assert lines[-1].startswith("WARNING  masks/")
    with pytest.raises(DataError, match="4 error") as info:
        assert_dataset_ok(root)
    assert "images/cut.png" in str(info.value) and "masks/grey.png" in str(info.value)


def test_assert_dataset_ok_returns_index_and_warnings(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["a", "b", "c"])
    write_mask_png(root / "masks" / "c.png", np.zeros((12, 10), dtype=bool))
    index, problems = assert_dataset_ok(root)
    assert isinstance(index, DatasetIndex) and len(index.pairs) == 3
    assert [(p.kind, p.path.name) for p in problems] == [("no_split_file", "ds"), ("empty_mask", "c.png")]
    assert assert_dataset_ok(index)[0] is index  # an existing index is checked, not rediscovered
    assert format_report([], 3) == "Checked 3 image/mask pairs: no problems found."


# ----------------------------------------------------------------------------------------------- transforms


def test_uint8_input_comes_out_in_unit_range_not_divided_twice() -> None:
    image = np.full((3, 8, 8), 255, dtype=np.uint8)
    image[1] = 128
    mask = np.zeros((1, 8, 8), dtype=np.uint8)
    out = eval_transforms(4)({"image": image, "mask": mask})
    assert out["image"].dtype == torch.float32 and out["image"].shape == (3, 4, 4)
    assert torch.allclose(out["image"][0], torch.ones(4, 4))
    assert torch.allclose(out["image"][1], torch.full((4, 4), 128 / 255))
    float_out = eval_transforms(8)({"image": image.astype(np.float32) / 255, "mask": mask})
    assert torch.allclose(float_out["image"][1], torch.full((8, 8), 128 / 255))
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps errors, keeping the cause
        eval_transforms(8)({"image": image.astype(np.float32), "mask": mask})
    assert isinstance(info.value.__cause__, ValueError) and "outside [0, 1]" in str(info.value.__cause__)


def test_eval_resize_of_mask_is_nearest_and_binary() -> None:
    mask = np.array([[[1, 0], [0, 1]]], dtype=bool)
    out = eval_transforms(4)({"image": np.zeros((3, 2, 2), dtype=np.uint8), "mask": mask})
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.float32)
    assert torch.equal(out["mask"][0], expected)
    assert type(out["mask"]) is torch.Tensor  # plain tensor, no MONAI metadata


def test_resize_image_keeps_borders_and_constants() -> None:
    # MONAI's Resized(anti_aliasing=True) darkens borders (zero-padded Gaussian); ours must keep a constant image.
    constant = torch.full((3, 50, 70), 0.6)
    assert torch.allclose(resize_image(constant, 16), torch.full((3, 16, 16), 0.6))
    assert torch.allclose(resize_image(constant[None], (20, 10)), torch.full((1, 3, 20, 10), 0.6))
    halves = torch.zeros(1, 8, 8)
    halves[:, :, 4:] = 1.0
    # Halving with a triangle filter 2 px wide: output pixel 1 (centre 3.0) sees inputs 1..4 with weights
    # .25 .75 .75 .25 (sum 2), of which only input 4 is 1 -> 0.125. PIL's BILINEAR resize agrees.
    row = resize_image(halves, 4)[0, 0].numpy()
    np.testing.assert_allclose(row, [0, 0.125, 0.875, 1], atol=1e-6)
    pil_row = np.asarray(Image.fromarray(halves[0].numpy()).resize((4, 4), Image.Resampling.BILINEAR))[0]
    np.testing.assert_allclose(row, pil_row, atol=1e-6)
    assert resize_image(constant, (50, 70)) is constant


def _blocky_pair(size: int = 32, block: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """An image whose first channel is 0.1 or 0.9 per block, and the mask 'channel 0 > 0.5' drawn from it."""
    rng = np.random.default_rng(seed)
    blocks = rng.random((size // block, size // block)) > 0.5
    channel = np.kron(blocks, np.ones((block, block))).astype(bool)
    image = rng.uniform(0.2, 0.8, (3, size, size)).astype(np.float32)
    image[0] = np.where(channel, 0.9, 0.1)
    return {"image": image, "mask": channel[None]}


def test_flips_and_rotations_keep_image_and_mask_exactly_aligned() -> None:
    pair = _blocky_pair()
    transform = train_transforms(32, jitter_prob=0.0, affine_prob=0.0)
    changed = 0
    for seed in range(12):
        out = set_seed(transform, seed)(pair)
        assert torch.equal(out["mask"][0], (out["image"][0] > 0.5).float())
        changed += not torch.equal(out["mask"][0], torch.as_tensor(pair["mask"][0]).float())
    assert changed >= 6  # flips/rotations really happened


def test_full_augmentation_keeps_alignment_and_ranges() -> None:
    pair = _blocky_pair()
    transform = train_transforms(32, jitter_prob=1.0, affine_prob=1.0)
    for seed in range(8):
        out = set_seed(transform, seed)(pair)
        image, mask = out["image"], out["mask"][0]
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        from_image = image[0] > 0.5
        agreement = (from_image == mask.bool()).float().mean().item()
        assert agreement > 0.93, (seed, agreement)  # only interpolated block edges may disagree


def test_colour_jitter_hue_rotation_and_identity() -> None:
    from genmedseg.data.transforms import RandColorJitterd, _hue_rotation

    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    turned = torch.einsum("ij,jhw->ihw", _hue_rotation(2 * np.pi / 3), red)  # a third of the circle: red -> green
    assert torch.allclose(turned.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    image = torch.rand(3, 5, 5)
    neutral = RandColorJitterd("image", prob=1.0, brightness=0, contrast=0, saturation=0, hue=0)
    assert torch.allclose(neutral({"image": image})["image"], image, atol=1e-6)


def test_set_seed_makes_augmentation_reproducible() -> None:
    pair = _blocky_pair(seed=1)
    transform = train_transforms(24)
    first = set_seed(transform, 5)(pair)
    second = set_seed(train_transforms(24), 5)(pair)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["mask"], second["mask"])
    others = [set_seed(transform, seed)(pair)["image"] for seed in range(6, 10)]
    assert any(not torch.equal(first["image"], other) for other in others)


# ----------------------------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic") / "set", n_train=6, n_val=2, n_test=3, size=40, seed=0
    )


def test_synthetic_dataset_layout_and_determinism(synthetic_root: Path, tmp_path: Path) -> None:
    index = discover(synthetic_root)
    assert [len(index.splits[s]) for s in ("train", "val", "test")] == [6, 2, 3]
    assert index.val_source == "listed in synthetic_train_test_names.pkl"
    assert "synthetic" in (synthetic_root / "README.md").read_text().lower()
    assert [p.kind for p in check_dataset(synthetic_root)] == []
    again = make_synthetic_dataset(tmp_path / "again", n_train=6, n_val=2, n_test=3, size=40, seed=0)
    for name in ("images/train_000.png", "masks/test_002.png"):
        assert (again / name).read_bytes() == (synthetic_root / name).read_bytes()
    image, mask = read_image(again / "images/val_001.png"), read_mask(again / "masks/val_001.png")
    assert image.shape == (40, 40, 3) and 0.01 < mask.mean() < 0.5
    assert make_synthetic_dataset(again, n_train=6, n_val=2, n_test=3, size=40, seed=0) == again
    with pytest.raises(DataError, match="not empty"):
        make_synthetic_dataset(again, n_train=7)


def test_dataset_items(synthetic_root: Path) -> None:
    dataset = SegmentationDataset(discover(synthetic_root), "test", image_size=32)
    item = dataset[1]
    assert item["name"] == "test_001"
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    with pytest.raises(DataError, match="no split 'holdout'"):
        SegmentationDataset(discover(synthetic_root), "holdout")


def test_dataset_augmentation_depends_only_on_seed_epoch_index(synthetic_root: Path) -> None:
    index = discover(synthetic_root)
    one = SegmentationDataset(index, "train", image_size=32, augment=True, seed=7)
    two = SegmentationDataset(index, "train", image_size=32, augment=True, seed=7)
    two[3]  # a different access history must not matter
    two.set_epoch(2)
    one.set_epoch(2)
    assert torch.equal(one[1]["image"], two[1]["image"]) and torch.equal(one[1]["mask"], two[1]["mask"])
    epoch_two = [one[i]["image"] for i in range(len(one))]
    one.set_epoch(3)
    assert any(not torch.equal(epoch_two[i], one[i]["image"]) for i in range(len(one)))
    one.set_epoch(2)
    assert all(torch.equal(epoch_two[i], one[i]["image"]) for i in range(len(one)))
    assert augmentation_seed(7, 2, 1) == augmentation_seed(7, 2, 1) != augmentation_seed(7, 1, 2)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers on a 1-core runner is fine here
def test_dataset_epoch_reaches_persistent_workers(synthetic_root: Path) -> None:
    dataset = SegmentationDataset(discover(synthetic_root), "train", image_size=16, augment=True, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        batch = next(iter(loader))
        expected = torch.stack([dataset[i]["image"] for i in range(6)])
        assert torch.equal(batch["image"], expected)


def test_dataset_refuses_pairs_of_different_sizes(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds", ["a", "b"])
    write_mask_png(root / "masks" / "b.png", np.zeros((3, 3), dtype=bool))
    dataset = SegmentationDataset(discover(root, val_fraction=0.0), "train", image_size=8)
    with pytest.raises(DataError, match=r"b\.png") as info:
        dataset[1]
    assert "nearest-neighbour" in str(info.value)


def test_epoch_shuffle_sampler() -> None:
    sampler = EpochShuffleSampler(10, seed=4)
    first = list(sampler)
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(4)).tolist()
    assert sorted(first) == list(range(10)) and len(sampler) == 10
    sampler.set_epoch(3)
    assert list(sampler) == torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist() != first


# ----------------------------------------------------------------------------------------------- real data


def test_glas_split_and_check(shared_data: Path) -> None:
    root = shared_data / "glas"
    index = discover(root)
    train, val, test = index.splits["train"], index.splits["val"], index.splits["test"]
    assert len(train) + len(val) == 85 and len(test) == 80 and len(val) == 9
    assert index.val_source == "carved from train (10%, seed 0): 9 images"
    assert all(name.startswith("train_") for name in train + val)
    assert all(name.startswith(("testA_", "testB_")) for name in test)
    assert not set(val) & set(train) and not set(val) & set(test)
    problems = check_dataset(root)
    assert [p for p in problems if p.severity == "error"] == [], format_report(problems, len(index.pairs), root)
