"""``evaluate-synthetic``: faithfulness (a segmenter's Dice on synthetic images vs their masks, beside the real
images of those masks) and realism (a Fréchet distance of tiny-VAE encoder features, with its real-vs-real floor)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from genmedseg.cli import main
from genmedseg.engine.synthetic_quality import DISTANCE_NAME, evaluate_synthetic, realism_distances
from genmedseg.metrics import frechet_distance
from genmedseg.models.base import GenerationMethod, SegmentationMethod, per_image_randn
from genmedseg.models.registry import MODELS


def test_frechet_distance_by_hand() -> None:
    a = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # mean 0, covariance diag(2/3, 2/3)
    b = 2.0 * a + np.array([3.0, 4.0])  # mean (3, 4), covariance diag(8/3, 8/3)
    # |mu_a - mu_b|^2 + sum over the diagonal of (sqrt(2/3) - sqrt(8/3))^2 = 25 + 2 * 2/3
    assert frechet_distance(a, b) == pytest.approx(25.0 + 4.0 / 3.0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + np.array([1.0, 0.0])) == pytest.approx(1.0)  # same covariance: |delta mu|^2
    rng = np.random.default_rng(0)
    few = frechet_distance(rng.normal(size=(5, 16)), rng.normal(size=(6, 16)))  # singular covariances
    assert math.isfinite(few) and few > 0
    with pytest.raises(ValueError, match="need"):
        frechet_distance(a[:1], b)


def test_the_floor_and_the_same_size_comparison() -> None:
    rng = np.random.default_rng(1)
    real, shifted = rng.normal(size=(200, 4)), rng.normal(loc=1.0, size=(150, 4))
    distances = realism_distances(real, shifted, seed=0)
    assert distances["sizes"] == {"real": 200, "synthetic": 150, "halves": [100, 100]}
    assert distances["floor_real_half_vs_real_half"] < 0.3 < 3.0 < distances["synthetic_vs_real_half_same_sizes"]
    assert distances["real_vs_synthetic"] == pytest.approx(4.0, abs=0.8)
    same = realism_distances(real, rng.normal(size=(150, 4)), seed=0)
    assert same["synthetic_vs_real_half_same_sizes"] < 0.5


DARK, BRIGHT = 0.2, 0.8


class PaintingGenerator(GenerationMethod):
    """A perfectly faithful generator: foreground dark, background bright, a little seeded noise."""

    name = "painting-generator"

    def __init__(self, image_size: int = 32, num_classes: int = 2, image_channels: int = 3) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size, "num_classes": num_classes, "image_channels": image_channels}
        self.num_classes, self.image_channels = num_classes, image_channels
        self.level = nn.Parameter(torch.tensor(1.0))

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": (self.level - 1.0) ** 2}

    def generate(self, masks, *, generator=None, **sampling) -> torch.Tensor:
        shape = (self.image_channels, *masks.shape[-2:])
        images = torch.where(masks > 0, DARK, BRIGHT).float().expand(-1, self.image_channels, -1, -1) * self.level
        return (images + 0.02 * per_image_randn(generator, masks.shape[0], shape, images)).clamp(0, 1)


class DarknessSegmenter(SegmentationMethod):
    """Foreground where the image is dark (the lesions of the synthetic dataset are dark blobs)."""

    name = "darkness-segmenter"

    def __init__(self, image_size: int = 32) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size}
        self.level = nn.Parameter(torch.tensor(0.5))

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": (self.level - 0.5) ** 2}

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return (images.mean(1, keepdim=True) < self.level).float()


@pytest.fixture
def models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Path]:
    monkeypatch.setitem(MODELS, PaintingGenerator.name, PaintingGenerator)
    monkeypatch.setitem(MODELS, DarknessSegmenter.name, DarknessSegmenter)
    folders = {"rgb": tmp_path / "rgb", "grey": tmp_path / "grey", "segmenter": tmp_path / "segmenter"}
    PaintingGenerator().save_pretrained(folders["rgb"])
    PaintingGenerator(image_channels=1).save_pretrained(folders["grey"])
    DarknessSegmenter().save_pretrained(folders["segmenter"])
    return folders


def test_a_faithful_generator_scores_dice_one(
    models: dict[str, Path], synthetic_data: Path, tiny_vae_dir: Path, tmp_path: Path, capsys
) -> None:
    generated = tmp_path / "generated"
    assert main(["generate", str(models["rgb"]), "--masks", str(synthetic_data), "--out", str(generated)]) == 0
    out = tmp_path / "quality"
    command = ["evaluate-synthetic", str(models["segmenter"]), str(generated), "--vae", str(tiny_vae_dir)]
    assert main([*command, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic images vs their conditioning masks: 1.0000" in printed and "floor" in printed
    summary = json.loads((out / "summary.json").read_text())
    faithfulness = summary["faithfulness"]
    assert faithfulness["synthetic_vs_conditioning_mask"]["dice"] == {"mean": 1.0, "std": 0.0, "n": 8}
    real = faithfulness["real_vs_its_mask"]["dice"]
    assert real["n"] == 8 and 0.0 <= real["mean"] <= 1.0
    assert faithfulness["dice_gap_mean"] == pytest.approx(1.0 - real["mean"])
    # Another source's mask scores lower: the predictions follow their own masks.
    assert faithfulness["control_synthetic_vs_another_mask"] < 0.9
    assert 0.0 <= faithfulness["control_real_vs_another_mask"] <= 1.0
    realism = summary["realism"]
    assert realism["name"] == DISTANCE_NAME and "FID" not in realism["name"]
    assert realism["feature_dims"] == 8  # mean and std of the tiny VAE's 4 latent channels
    assert realism["sizes"] == {"real": 8, "synthetic": 8, "halves": [4, 4]}
    for key in ("real_vs_synthetic", "floor_real_half_vs_real_half", "synthetic_vs_real_half_same_sizes"):
        assert math.isfinite(realism[key]) and realism[key] >= -1e-6, key
    assert summary["grid"] == [32, 32] and summary["grayscale"] is False
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and {float(row["dice_synthetic"]) for row in rows} == {1.0}

    # Grayscale synthetic images are compared with grayscale versions of the real ones.
    grey = tmp_path / "grey-generated"
    assert main(["generate", str(models["grey"]), "--masks", str(synthetic_data), "--out", str(grey)]) == 0
    summary = evaluate_synthetic(models["segmenter"], grey, vae=str(tiny_vae_dir))
    assert summary["grayscale"] is True
    assert summary["faithfulness"]["synthetic_vs_conditioning_mask"]["dice"]["mean"] == 1.0

    capsys.readouterr()
    assert main(["evaluate-synthetic", str(models["rgb"]), str(generated), "--vae", str(tiny_vae_dir)]) == 2
    assert "needs a segmenter" in capsys.readouterr().err
    assert main(["evaluate-synthetic", str(models["segmenter"]), str(synthetic_data)]) == 2
    assert "no provenance.json" in capsys.readouterr().err
