"""``train --extra-data DIR [--extra-weight W]``: a second dataset joins the training split only, weighted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from genmedseg.cli import main
from genmedseg.config import RunConfig
from genmedseg.data import EXTRA_PREFIX, EpochShuffleSampler, discover, make_synthetic_dataset, with_extra_training
from genmedseg.engine.training import make_loaders


@pytest.fixture(scope="module")
def extra_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second dataset (6 train, 2 val, 2 test pairs): only its train pairs may ever be trained on."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("extra") / "data", n_train=6, n_val=2, n_test=2, size=48)


def test_extra_pairs_join_the_training_split_only(synthetic_data: Path, extra_data: Path) -> None:
    real, extra = discover(synthetic_data), discover(extra_data, val_fraction=0.0)
    mixed = with_extra_training(real, extra)
    assert mixed.splits["train"] == real.splits["train"] + [EXTRA_PREFIX + name for name in extra.splits["train"]]
    assert mixed.splits["val"] == real.splits["val"] and mixed.splits["test"] == real.splits["test"]
    assert mixed.pairs[EXTRA_PREFIX + extra.splits["train"][0]] == extra.pairs[extra.splits["train"][0]]

    config = RunConfig()
    config.override("data", image_size=32, extra_weight=3.0)
    train_set, train_loader, val_loader = make_loaders(config, real, extra=extra)
    assert len(train_set) == 8 + 6  # the real train pairs and the extra train pairs (not its val or test)
    assert not any(name.startswith(EXTRA_PREFIX) for name in val_loader.dataset.names)
    assert set(val_loader.dataset.names) == set(real.splits["val"])
    weights = train_loader.sampler.weights
    assert weights is not None and weights.tolist() == [1.0] * 8 + [3.0] * 6


def test_weighted_epochs_draw_extra_pairs_by_their_weight() -> None:
    n_real, n_extra, weight = 30, 10, 3.0
    sampler = EpochShuffleSampler(n_real + n_extra, seed=1, weights=[1.0] * n_real + [weight] * n_extra)
    draws = []
    for epoch in range(200):
        sampler.set_epoch(epoch)
        draws += list(sampler)
    assert len(draws) == 200 * 40
    share = sum(index >= n_real for index in draws) / len(draws)
    assert share == pytest.approx(n_extra * weight / (n_real + n_extra * weight), abs=0.02)  # 0.5
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # a function of (seed, epoch)
    # Weight 1 (or equal weights): every pair exactly once per epoch, the plain permutation.
    equal = EpochShuffleSampler(12, seed=4, weights=[1.0] * 12)
    assert list(equal) == torch.randperm(12, generator=torch.Generator().manual_seed(4)).tolist()
    with pytest.raises(ValueError, match="non-negative"):
        EpochShuffleSampler(3, weights=[1.0, -1.0, 1.0])


def test_train_with_extra_data_through_the_cli(synthetic_data: Path, extra_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    args = ["train", "--model", "unet", "--option", "features=[8, 8, 16, 16, 32, 8]", "--data", str(synthetic_data)]
    args += ["--image-size", "32", "--epochs", "1", "--batch-size", "4", "--accelerator", "cpu", "--out", str(run)]
    assert main([*args, "--extra-data", str(extra_data), "--extra-weight", "0.5"]) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["n_train"] == 8 and summary["n_val"] == 4 and summary["n_extra_train"] == 6
    assert summary["extra_weight"] == 0.5 and summary["extra_data"] == str(extra_data.resolve())
    assert "extra training pairs: 6" in (run / "model" / "README.md").read_text()
    config = RunConfig.from_yaml(run / "config.yaml")
    assert config.data.extra_root == str(extra_data.resolve()) and config.data.extra_weight == 0.5

    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path / "bad"), "--extra-data", str(tmp_path / "missing")]) == 2
    assert "--extra-data" in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "bad"), "--extra-data", str(extra_data), "--extra-weight", "0"]) == 2
    assert "must be above 0" in capsys.readouterr().err
