"""The evaluation report page (also opened in headless Chromium when it is installed), training curves, runs table."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genmedseg.data import read_mask, read_probability_png, write_mask_png, write_probability_png
from genmedseg.errors import DataError
from genmedseg.metrics import THRESHOLD, segmentation_metrics, summarize
from genmedseg.report import plot_training_curves, read_training_log, runs_table, select_cases, write_report

HEIGHT, WIDTH = 24, 32
N_CASES = 2
DIGITS = 4


def _disc(centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, columns = np.mgrid[:HEIGHT, :WIDTH]
    return (rows - centre[0]) ** 2 + (columns - centre[1]) ** 2 <= radius**2


# name -> (ground truth, probability map): good, shifted, missed, hallucinated, both empty, full frame.
def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    blob = _disc((12, 16), 6)
    smooth = np.clip(1.2 - np.hypot(*(np.mgrid[:HEIGHT, :WIDTH] - np.array([12, 16])[:, None, None])) / 7, 0, 1)
    empty = np.zeros((HEIGHT, WIDTH), bool)
    return {
        "good": (blob, smooth),
        "gray shifted": (blob, np.roll(smooth, 4, axis=1)),
        "small & odd <name>": (_disc((5, 5), 2), np.where(_disc((6, 6), 3), 0.9, 0.1)),
        "missed": (blob, np.full((HEIGHT, WIDTH), 0.2)),
        "false alarm": (empty, np.where(blob, 0.8, 0.0)),
        "both empty": (empty, np.zeros((HEIGHT, WIDTH))),
        "full frame": (np.ones((HEIGHT, WIDTH), bool), np.full((HEIGHT, WIDTH), 0.7)),
    }


def _make_evaluation(root: Path) -> Path:
    """A dataset and an evaluation folder written the way ``genmedseg evaluate`` writes them."""
    data, out = root / "data", root / "eval"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for name, (truth, probability) in _cases().items():
        pixels = rng.integers(40, 200, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
        image = Image.fromarray(pixels[:, :, 0]) if name.startswith("gray") else Image.fromarray(pixels)
        image.save(data / "images" / f"{name}.png")
        write_mask_png(data / "masks" / f"{name}.png", truth)
        # As evaluate does: the mask is the saved (uint8) probability above the threshold, scored against the file.
        write_probability_png(out / "probabilities" / f"{name}.png", probability)
        prediction = read_probability_png(out / "probabilities" / f"{name}.png") > THRESHOLD
        write_mask_png(out / "masks" / f"{name}.png", prediction)
        metrics = segmentation_metrics(prediction, read_mask(data / "masks" / f"{name}.png"))
        rows.append({"name": name, **metrics})
    (data / "split.csv").write_text("name,split\n" + "".join(f"{row['name']},test\n" for row in rows))
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["name", "dice", "iou", "hd95", "gt_empty", "pred_empty", "pred_full"]
        )
        writer.writeheader()
        writer.writerows({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    summary = {
        **summarize(rows),
        "model": str(root / "run" / "model"),
        "data": str(data),
        "split": "test",
        "resolution": "native",
    }
    (out / "summary.json").write_text(json.dumps(summary))
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``report.html`` of a hand-made evaluation, written once for the tests that only read it."""
    return write_report(_make_evaluation(tmp_path_factory.mktemp("report")), n_cases=N_CASES)


def test_select_cases_ranks_by_dice_then_name() -> None:
    dice = {"e": 0.5, "a": 0.0, "b": 0.0, "f": 0.9, "c": 0.4, "d": 0.6, "g": 1.0}
    # Ranking: a b c e d f g (a before b on the tie); median = the two around the middle.
    assert select_cases(dice, 2) == [("worst", ["a", "b"]), ("median", ["c", "e"]), ("best", ["f", "g"])]
    assert select_cases(dice, 3) == [("all", ["a", "b", "c", "e", "d", "f", "g"])]
    assert select_cases(dice, 0) == []


def test_report_content(report: Path) -> None:
    page = report.read_text()
    summary = json.loads((report.parent / "summary.json").read_text())

    assert report.name == "report.html"
    assert "http://" not in page and "https://" not in page
    for metric in ("dice", "iou", "hd95"):
        for key in ("mean", "std"):
            assert f'id="summary-{metric}-{key}">{summary[metric][key]:.{DIGITS}f}<' in page
        assert f'id="summary-{metric}-n">7<' in page
    assert 'id="summary-n_gt_empty">2<' in page and 'id="summary-n_pred_empty">2<' in page
    # Seven images, n_cases=2: worst, median, best of two each; the fifth by Dice has no figure.
    assert page.count('<figure class="case"') == 6
    assert page.count("<img ") == 2 + 6
    assert page.count('<tr id="case-') == 7
    # Names are escaped, anchors percent-encoded, and each figure links to its metrics row.
    assert "small &amp; odd &lt;name&gt;" in page and "<name>" not in page
    assert 'href="#case-small%20%26%20odd%20%3Cname%3E"' in page
    assert 'id="case-small%20%26%20odd%20%3Cname%3E"' in page
    assert "<tr><th>lesion</th><td>empty</td></tr>" in page and "<tr><th>prediction</th><td>empty</td></tr>" in page
    # A prediction of foreground everywhere (what a stuck model gives) is flagged like an empty one.
    assert 'id="summary-n_pred_full">1<' in page and "<td>full</td></tr>" in page


def test_report_without_dataset_names_the_fix(tmp_path: Path) -> None:
    evaluation = _make_evaluation(tmp_path)
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(DataError, match="pass data_root"):
        write_report(evaluation)


def test_report_opens_offline_in_chromium(report: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not on PATH (apt-get install chromium); the page is checked without a browser above")
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [*flags, f"--screenshot={screenshot}", "--window-size=1280,4000", report.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*flags, "--dump-dom", report.as_uri()], check=True, capture_output=True, text=True, timeout=120
    ).stdout

    assert screenshot.stat().st_size > 50_000
    with Image.open(screenshot) as shot:
        assert shot.size == (1280, 4000)
        assert len(shot.convert("L").getcolors(1 << 16)) > 50  # not a blank page
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == 2 + 6 and all('data-loaded="1"' in img for img in images)
    summary = json.loads((report.parent / "summary.json").read_text())
    for metric in ("dice", "iou", "hd95"):
        cell = re.search(rf'id="summary-{metric}-mean">([^<]*)<', dom).group(1)
        assert cell == f"{summary[metric]['mean']:.{DIGITS}f}"
    assert "http://" not in dom and "https://" not in dom


def _write_log(path: Path, header: str, rows: list[str]) -> None:
    path.mkdir(parents=True)
    (path / "metrics.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


def test_training_curves_merge_resumed_sessions(tmp_path: Path) -> None:
    header = "epoch,step,train_align,train_dice,train_latent_mse,train_loss,val_dice"
    # Session 0 ran epochs 0-2 (epoch 2 interrupted after validation); session 1 resumed from the end of epoch 1.
    _write_log(
        tmp_path / "logs" / "version_0",
        header,
        [
            "0,3,,,,,0.20",
            "0,3,0.5,0.4,0.3,1.2,",
            "1,7,,,,,0.40",
            "1,7,0.4,0.3,0.2,0.9,",
            "2,11,,,,,0.10",
        ],
    )
    _write_log(
        tmp_path / "logs" / "version_1",
        header,
        [
            "2,11,,,,,0.50",
            "2,11,0.3,0.2,0.1,0.6,",
            "3,15,0.2,0.1,0.05,0.35,",
        ],
    )
    log = read_training_log(tmp_path)
    assert list(log.values) == [0, 1, 2, 3]
    assert log.values[1] == {
        "train_align": 0.4,
        "train_dice": 0.3,
        "train_latent_mse": 0.2,
        "train_loss": 0.9,
        "val_dice": 0.4,
    }
    assert log.values[2]["val_dice"] == 0.5 and log.values[2]["train_loss"] == 0.6  # the later session wins
    assert "val_dice" not in log.values[3]
    assert log.resumed_at == [2]

    path = plot_training_curves(tmp_path)
    assert path == tmp_path / "curves.png"
    with Image.open(path) as image:
        assert image.size == (1100, 400)


def test_training_curves_without_logs(tmp_path: Path) -> None:
    assert plot_training_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()


def test_runs_table(tmp_path: Path) -> None:
    data = tmp_path / "datasets" / "glas"
    finished, unfinished, other = tmp_path / "runs" / "wave", tmp_path / "runs" / "crashed", tmp_path / "runs" / "unet"
    for run, dice in ((finished, 0.8123456), (other, None)):
        run.mkdir(parents=True)
        (run / "train_summary.json").write_text(
            json.dumps(
                {
                    "model": run.name,
                    "data": str(data),
                    "image_size": 224,
                    "epochs_done": 30,
                    "epochs": 30,
                    "best_val": {"metric": "dice", "mode": "max", "value": dice},
                    "trainable_parameters": 1234567,
                    "train_seconds": 3725.0,
                    "steps": 300,
                    "n_train": 80,
                    "n_val": 5,
                }
            )
        )
    unfinished.mkdir(parents=True)

    def evaluation(folder: Path, model: Path, dice: float, split: str = "test") -> Path:
        folder.mkdir(parents=True)
        metrics = {"dice": {"mean": dice}, "iou": {"mean": dice - 0.1}, "hd95": {"mean": 12.34}}
        (folder / "summary.json").write_text(
            json.dumps({**metrics, "split": split, "model": str(model / "model"), "data": str(data)})
        )
        return folder

    # Evaluations record themselves in their run's run.json, wherever they were written.
    anywhere = evaluation(tmp_path / "somewhere" / "wave-test", finished, 0.7654321)
    validation = evaluation(finished / "val-eval", finished, 0.99, split="val")  # not a test evaluation
    (finished / "run.json").write_text(json.dumps({"evaluations": [str(anywhere), str(validation)]}))
    elsewhere = evaluation(tmp_path / "elsewhere" / "unet-test", other, 0.5)

    table = runs_table([finished, unfinished, other], evaluations=[elsewhere])
    lines = table.splitlines()
    assert lines[0].split() == [
        "run",
        "model",
        "data",
        "size",
        "epochs",
        "best",
        "val",
        "test",
        "Dice",
        "test",
        "IoU",
        "test",
        "HD95",
        "parameters",
        "time",
    ]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split()[1:] == [
        "wave",
        "glas",
        "224",
        "30/30",
        "dice",
        "0.8123",
        "0.7654",
        "0.6654",
        "12.3",
        "1,234,567",
        "1h02m",
    ]
    assert lines[3].split()[1:] == ["-", "-", "-", "unfinished", *["-"] * 6]
    assert lines[4].split()[1:] == [
        "unet",
        "glas",
        "224",
        "30/30",
        "-",
        "0.5000",
        "0.4000",
        "12.3",
        "1,234,567",
        "1h02m",
    ]
    assert "0.5000" not in runs_table([other])  # an evaluation no run.json records is found only when named
