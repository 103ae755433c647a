"""The method surface holds every kind of method with no engine change: a sampling, prompted, any-resolution
segmenter and a mask-to-image generator, both defined and registered here, go through the whole CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from genmedseg.cli import main
from genmedseg.models.base import (
    GenerationMethod,
    Prediction,
    SamplingOption,
    SegmentationMethod,
    per_image_randn,
)
from genmedseg.models.registry import MODELS


class FakeSampler(SegmentationMethod):
    """A stochastic, box-prompted segmenter that answers at any resolution, with an uncertainty map."""

    name = "fake-sampler"
    size_multiple = 4
    prompt_kind = "box"
    sampling_options = {
        "ensemble": SamplingOption(2, "members averaged", minimum=1),
        "spread": SamplingOption(0.5, "logit noise of a member"),
        "seed": SamplingOption(0, "seed of the members' noise"),
    }
    validation_sampling = {"ensemble": 1}

    def __init__(self, image_size: int = 32, width: int = 4) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size, "width": width}
        self.network = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.binary_cross_entropy_with_logits(self.network(batch["image"]), batch["mask"])}

    def predict(self, images, *, size=None, prompts=None, generator=None, **sampling) -> Prediction:
        self.check_prompts(prompts)
        options = self.resolve_sampling(sampling)
        size = tuple(size or images.shape[-2:])
        logits = F.interpolate(self.network(images), size=size, mode="bilinear", align_corners=False)
        if prompts is not None:  # outside every box: background
            inside = torch.zeros_like(logits, dtype=torch.bool)
            scale = torch.tensor([size[1] / images.shape[-1], size[0] / images.shape[-2]] * 2, device=images.device)
            for i, boxes in enumerate(prompts):
                for x0, y0, x1, y1 in (boxes * scale).round().long().tolist():
                    inside[i, :, y0 : y1 + 1, x0 : x1 + 1] = True
                if not len(boxes):
                    inside[i] = True
            logits = logits.masked_fill(~inside, -20.0)
        members = options["ensemble"]
        noise = per_image_randn(generator, images.shape[0], (members, 1, *size), logits)
        samples = torch.sigmoid(logits[:, None] + options["spread"] * noise)
        return Prediction(samples.mean(1), {"uncertainty": samples.std(1, unbiased=False)})


class FakeGenerator(GenerationMethod):
    """Images from one-hot class masks through two convolutions; sampling adds seeded noise."""

    name = "fake-generator"
    size_multiple = 4
    sampling_options = {"noise": SamplingOption(0.05, "noise level"), "seed": SamplingOption(0, "noise seed")}

    def __init__(self, image_size: int = 32, num_classes: int = 2, image_channels: int = 3) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size, "num_classes": num_classes, "image_channels": image_channels}
        self.num_classes, self.image_channels = num_classes, image_channels
        self.network = nn.Sequential(
            nn.Conv2d(num_classes, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, image_channels, 3, padding=1)
        )

    def _images(self, labels: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(labels[:, 0].clamp(0, self.num_classes - 1), self.num_classes).permute(0, 3, 1, 2)
        return torch.sigmoid(self.network(one_hot.float()))

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self._images(batch["labels"]), batch["image"][:, : self.image_channels])}

    def generate(self, masks, *, generator=None, **sampling) -> torch.Tensor:
        options = self.resolve_sampling(sampling)
        images = self._images(masks)
        noise = per_image_randn(generator, masks.shape[0], images.shape[1:], images)
        return (images + options["noise"] * noise).clamp(0, 1)


@pytest.fixture
def fake_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODELS, FakeSampler.name, FakeSampler)
    monkeypatch.setitem(MODELS, FakeGenerator.name, FakeGenerator)


def _train(data: Path, out: Path, model: str, *extra: str) -> None:
    args = [
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--accelerator",
        "cpu",
        "--lr",
        "1e-2",
        "--preview-every",
        "1",
        "--out",
        str(out),
        *extra,
    ]
    assert main(args) == 0


def test_a_sampling_prompted_segmenter_through_the_cli(
    fake_methods, synthetic_data: Path, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    _train(synthetic_data, run, "fake-sampler", "--ema-decay", "0.9", "--schedule", "constant")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_val"]["metric"] == "dice" and summary["ema_decay"] == 0.9
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]

    evaluation = tmp_path / "eval"
    args = [
        "evaluate",
        str(run),
        "--out",
        str(evaluation),
        "--sample",
        "ensemble=4",
        "--sample",
        "seed=3",
        "--prompts",
        "from-mask",
        "--prompt-jitter",
        "2",
        "--resolution",
        "24",
        "--report",
    ]
    assert main(args) == 0
    results = json.loads((evaluation / "summary.json").read_text())
    assert results["sampling"] == {"ensemble": 4, "spread": 0.5, "seed": 3}
    assert results["resolution"] == 24 and "ground-truth boxes" in results["prompts"]
    assert results["maps"] == ["uncertainty"]
    for folder in ("masks", "probabilities", "uncertainty"):
        sizes = {Image.open(path).size for path in (evaluation / folder).iterdir()}
        assert sizes == {(24, 24)}, folder
    report = (evaluation / "report.html").read_text()
    assert "uncertainty" in report and "ground-truth boxes" in report
    # Same seed, same masks; the model card names the settings of each number.
    again = tmp_path / "again"
    assert main([*args[:3], str(again), *args[4:-1]]) == 0
    for path in (evaluation / "masks").iterdir():
        assert (again / "masks" / path.name).read_bytes() == path.read_bytes()
    assert "prompts: ground-truth boxes" in (run / "model" / "README.md").read_text()

    capsys.readouterr()
    assert main(["evaluate", str(run), "--out", str(tmp_path / "bad"), "--sample", "ensembel=2"]) == 2
    error = capsys.readouterr().err
    assert "unknown key(s) ensembel" in error and "ensemble=2" in error and "seed=0" in error

    boxes = tmp_path / "boxes.csv"
    with boxes.open("w", newline="") as handle:
        csv.writer(handle).writerows([["name", "x_min", "y_min", "x_max", "y_max"], ["test_000", 0, 0, 20, 20]])
    predictions = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                str(run),
                str(synthetic_data / "images"),
                "--out",
                str(predictions),
                "--prompts",
                str(boxes),
                "--sample",
                "ensemble=3",
            ]
        )
        == 0
    )
    outside = np.asarray(Image.open(predictions / "probabilities" / "test_000.png"))[30:, 30:]
    assert outside.max() == 0  # the box file's box held the prediction inside it
    assert (predictions / "uncertainty" / "test_001.png").is_file()

    assert main(["generate", str(run), "--masks", str(synthetic_data), "--out", str(tmp_path / "gen")]) == 2
    assert "fake-sampler is a segmenter, and `genmedseg generate` needs a generator" in capsys.readouterr().err


def test_a_generator_through_the_cli(fake_methods, synthetic_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "generator"
    _train(synthetic_data, run, "fake-generator", "--grad-clip", "1.0", "--option", "num_classes=2")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["best_val"]["metric"] == "loss" and summary["best_val"]["mode"] == "min"
    assert (run / "previews" / "epoch_0002.png").is_file()

    generated = tmp_path / "generated"
    args = [
        "generate",
        str(run),
        "--masks",
        str(synthetic_data),
        "--out",
        str(generated),
        "--per-mask",
        "2",
        "--sample",
        "seed=5",
    ]
    assert main(args) == 0
    provenance = json.loads((generated / "provenance.json").read_text())
    assert provenance["sampling"] == {"noise": 0.05, "seed": 5} and len(provenance["pairs"]) == 2 * 8
    assert main(["check-data", str(generated)]) == 0
    # Same seed, same images.
    assert main([*args[:5], str(tmp_path / "again"), *args[6:]]) == 0
    first = sorted((generated / "images").iterdir())[0]
    assert (tmp_path / "again" / "images" / first.name).read_bytes() == first.read_bytes()

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(synthetic_data), "--out", str(tmp_path / "e")]) == 2
    assert "use `genmedseg generate` with this model" in capsys.readouterr().err

    # The generated pairs are a dataset like any other: a segmenter trains on them.
    _train(generated, tmp_path / "on-synthetic", "fake-sampler")
    assert (tmp_path / "on-synthetic" / "model" / "model.safetensors").is_file()
