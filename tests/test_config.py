"""Configuration: YAML sections, flag overrides, unknown keys and type checks."""

from __future__ import annotations

import pytest

from genmedseg.config import RunConfig
from genmedseg.errors import ConfigError


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  root: /data/busi\n  image_size: 128\ntrain:\n  lr: 2e-3\n  epochs: 10\n")
    config = RunConfig.from_yaml(path)
    assert (config.data.root, config.data.image_size, config.train.lr, config.train.epochs) == (
        "/data/busi",
        128,
        0.002,
        10,
    )
    config.override("train", epochs=3, batch_size=None)
    assert config.train.epochs == 3 and config.train.batch_size == 12
    config.to_yaml(tmp_path / "resolved.yaml")
    assert RunConfig.from_yaml(tmp_path / "resolved.yaml") == config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dataa:\n  root: x\n", "unknown section(s) ['dataa']"),
        ("train:\n  epoch: 3\n", "unknown key(s) ['epoch']"),
        ("train:\n  epochs: three\n", "expected a number"),
        ("train:\n  epochs: 2.5\n", "expected an integer"),
        ("data:\n  augment: 3\n", "expected true or false"),
        ("data: [1, 2]\n", "expected a mapping"),
        ("data: {root: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_file_and_the_fix(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml") as error:
        RunConfig.from_yaml(path)
    assert message in str(error.value)


def test_unknown_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"valid keys \(with their values now\): epochs=1000, .*lr=0.002"):
        RunConfig.from_yaml(path)


def test_choices_and_optional_numbers_are_checked():
    config = RunConfig()
    with pytest.raises(ConfigError, match="schedule='cosine': choose one of warmup-cosine, constant"):
        config.override("train", schedule="cosine")
    with pytest.raises(ConfigError, match="ema_decay: expected a number"):
        config.override("train", ema_decay="high")
    config.override("train", ema_decay="0.999", grad_clip=1)
    assert (config.train.ema_decay, config.train.grad_clip) == (0.999, 1.0)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "epochs", 0, "train.epochs: 0 must be above 0"),
        ("train", "batch_size", -2, "must be above 0"),
        ("train", "lr", 0, "must be above 0"),
        ("train", "val_every", 0, "must be above 0"),
        ("train", "max_minutes", 0, "must be above 0"),
        ("train", "ema_decay", 1, "must be below 1"),
        ("train", "warmup_epochs", -1, "must be at least 0"),
        ("data", "extra_weight", 0, "data.extra_weight: 0 must be above 0"),
        ("data", "image_size", 0, "must be above 0"),
    ],
)
def test_numbers_out_of_range_are_refused_before_training(section, key, value, message):
    """Values that would fail deep inside the trainer (a division by zero, a missing checkpoint) fail here."""
    with pytest.raises(ConfigError, match=message):
        RunConfig().override(section, **{key: value})


def test_vae_is_the_short_form_of_a_pretrained_part(tmp_path):
    """``model.vae`` (as genmedseg 0.1 wrote it in every run folder) still reads, as ``pretrained.vae``."""
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  name: wave-gms\n  vae: /weights/taesd\n  options: {}\n")
    assert RunConfig.from_yaml(path).model.pretrained == {"vae": "/weights/taesd"}


def test_devices_accept_counts_and_auto():
    config = RunConfig()
    config.override("train", devices="auto")
    assert config.train.devices == "auto"
    config.override("train", devices=2)
    assert config.train.devices == 2


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert configs, "configs/ holds the dataset configurations"
    for path in configs:
        config = RunConfig.from_yaml(path)
        assert config.data.image_size % 8 == 0, path
