"""The ``genmedseg`` command end to end: check-data, train, resume, evaluate, predict, DDP, clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import genmedseg
from conftest import TINY_OPTIONS
from genmedseg.cli import main
from genmedseg.errors import ConfigError


def tiny_train_args(data: Path, vae: Path, out: Path, *extra: str) -> list[str]:
    options = [f"--option={key}={value}" for key, value in TINY_OPTIONS["wave-gms"].items()]
    return [
        "train",
        "--data",
        str(data),
        "--vae",
        str(vae),
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--out",
        str(out),
        *options,
        *extra,
    ]


def test_check_data_lists_every_problem_and_fails(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_data, data)
    images = sorted((data / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:80])  # truncated
    (data / "masks" / images[1].name).unlink()  # missing mask
    Image.new("L", (10, 10)).save(data / "masks" / images[2].name)  # size mismatch
    assert main(["check-data", str(data)]) == 1
    report = capsys.readouterr().out
    for image in images[:3]:
        assert image.name in report
    assert main(["check-data", str(synthetic_data)]) == 0


def test_errors_are_one_line_messages_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "Traceback" not in error and "nowhere" in error
    assert main(["evaluate", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "no trained model here" in capsys.readouterr().err


def test_unknown_model_lists_the_valid_ones(synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(tiny_train_args(synthetic_data, tiny_vae_dir, tmp_path / "run", "--model", "wavegms")) == 2
    assert (
        "valid models are: gms, i-medsam, litemedsam, medsegdiff, seg-guided-diffusion, unet, wave-gms"
        in capsys.readouterr().err
    )


def test_config_file_flags_override_and_resolved_config_is_kept(
    synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  epochs: 7\n  lr: 1.0e-3\ndata:\n  image_size: 64\n")
    monkeypatch.chdir(tmp_path)  # a relative --out, as users type it
    assert main([*tiny_train_args(synthetic_data, tiny_vae_dir, Path("run")), "--config", str(config)]) == 0
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "epochs: 1\n" in resolved and "lr: 0.001\n" in resolved and "image_size: 32\n" in resolved


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "genmedseg.cli",
        *tiny_train_args(synthetic_data, tiny_vae_dir, run),
        "--devices",
        "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "run.json").read_text())["sessions"][0]["processes"] == 2
    assert (run / "model" / "model.safetensors").is_file()


@pytest.fixture
def glas_subset(shared_data: Path, tmp_path: Path) -> Path:
    """Eight training and four test images of GlaS, as a plain folder with a CSV split."""
    source, data = shared_data / "glas", tmp_path / "glas"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    names = {"train": [f"train_{i:02d}" for i in range(1, 9)], "test": [f"testA_{i:02d}" for i in range(1, 5)]}
    rows = ["name,split"]
    for split, split_names in names.items():
        for name in split_names:
            shutil.copy(source / "images" / f"{name}.png", data / "images")
            shutil.copy(source / "masks" / f"{name}.png", data / "masks")
            rows.append(f"{name},{split}")
    (data / "split.csv").write_text("\n".join(rows) + "\n")
    return data


def test_end_to_end_on_real_glas_images(glas_subset: Path, shared_weights: Path, tmp_path: Path) -> None:
    run, evaluation, predictions = tmp_path / "run", tmp_path / "eval", tmp_path / "pred"
    vae = shared_weights / "taesd"
    train = [
        "train",
        "--data",
        str(glas_subset),
        "--vae",
        str(vae),
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--out",
        str(run),
    ]
    assert main(train) == 0
    for name in (
        "config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "model/config.json",
        "model/model.safetensors",
        "model/README.md",
        "train_summary.json",
    ):
        assert (run / name).is_file(), name
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["trainable_parameters"] == 2_644_244  # wave-gms with the 32-channel TAEF2 (no level3 head)
    assert summary["n_train"] + summary["n_val"] == 8

    assert main(["evaluate", str(run), "--data", str(glas_subset), "--split", "test", "--out", str(evaluation)]) == 0
    with (evaluation / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == [f"testA_{i:02d}" for i in range(1, 5)]
    assert set(rows[0]) == {"name", "dice", "iou", "hd95", "gt_empty", "pred_empty", "pred_full"}
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0 and 0.0 <= float(row["iou"]) <= float(row["dice"]) + 1e-9
        assert 0.0 <= float(row["hd95"]) <= np.hypot(522, 775) / 2 + 1  # GlaS here is about 388 x 261
    results = json.loads((evaluation / "summary.json").read_text())
    assert results["dice"]["n"] == 4
    assert results["dice"]["mean"] == pytest.approx(np.mean([float(row["dice"]) for row in rows]), abs=1e-5)
    for name in ("testA_01", "testA_04"):
        mask = np.asarray(Image.open(evaluation / "masks" / f"{name}.png"))
        truth = Image.open(glas_subset / "masks" / f"{name}.png")
        assert mask.shape == (truth.height, truth.width) and set(np.unique(mask)) <= {0, 255}
        assert (evaluation / "probabilities" / f"{name}.png").is_file()
    assert "### test split" in (run / "model" / "README.md").read_text()

    odd = tmp_path / "odd.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (123, 77, 3), dtype=np.uint8)).save(odd)
    assert main(["predict", str(run), str(odd), str(glas_subset / "images"), "--out", str(predictions)]) == 0
    assert len(list((predictions / "masks").iterdir())) == 13
    assert Image.open(predictions / "masks" / "odd.png").size == (77, 123)

    segmenter = genmedseg.load(run)
    image = np.asarray(Image.open(glas_subset / "images" / "testA_01.png"))
    assert np.array_equal(segmenter.predict(image), np.asarray(Image.open(evaluation / "masks" / "testA_01.png")) > 0)


def test_demo_runs_the_whole_pipeline(tiny_vae_dir: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(
            ["demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "--image-size", "32", "--vae", str(tiny_vae_dir)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "dice" in printed and "report.html" in printed
    for name in (
        "data/README.md",
        "run/model/model.safetensors",
        "run/curves.png",
        "evaluation/metrics.csv",
        "evaluation/summary.json",
        "evaluation/report.html",
    ):
        assert (tmp_path / "demo" / name).is_file(), name


def test_cross_domain_evaluation_needs_no_extra_step(synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path) -> None:
    """A model trained on one dataset evaluates on another one with other image sizes (GMS's BUSI -> BUS)."""
    from genmedseg.data import make_synthetic_dataset

    other = make_synthetic_dataset(tmp_path / "other", n_train=2, n_val=1, n_test=3, size=40, seed=1)
    assert main(tiny_train_args(synthetic_data, tiny_vae_dir, tmp_path / "run")) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(other), "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["dice"]["n"] == 3 and summary["data"] == str(other.resolve())
    assert Image.open(next((tmp_path / "eval" / "masks").iterdir())).size == (40, 40)
    # The papers' protocol: metrics at the model's input size (32 here), ground truth resized nearest.
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "run"),
                "--data",
                str(other),
                "--out",
                str(tmp_path / "eval32"),
                "--resolution",
                "model",
            ]
        )
        == 0
    )
    assert Image.open(next((tmp_path / "eval32" / "masks").iterdir())).size == (32, 32)
    assert json.loads((tmp_path / "eval32" / "summary.json").read_text())["resolution"] == "model"


def test_bf16_inference_agrees_with_float32(synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path) -> None:
    """``evaluate --precision bf16-mixed`` gives probabilities within bfloat16 rounding of float32's."""
    assert main(tiny_train_args(synthetic_data, tiny_vae_dir, tmp_path / "run")) == 0
    maps = {}
    for precision in ("32-true", "bf16-mixed"):
        out = tmp_path / precision
        assert main(["evaluate", str(tmp_path / "run"), "--out", str(out), "--precision", precision]) == 0
        maps[precision] = np.stack([np.asarray(Image.open(path)) for path in sorted((out / "probabilities").iterdir())])
    difference = np.abs(maps["32-true"].astype(int) - maps["bf16-mixed"].astype(int))
    assert difference.mean() <= 2.0 and difference.max() <= 16  # 8-bit probability maps
    segmenter = genmedseg.load(tmp_path / "run", precision="bf16-mixed")
    assert segmenter.precision == "bf16-mixed"
    with pytest.raises(ConfigError, match="--precision 'fp16'"):
        genmedseg.load(tmp_path / "run", precision="fp16")
