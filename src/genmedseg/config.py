"""Run configuration: dataclasses are the schema, YAML is only their storage.

A run is configured by three sections, ``data``, ``model`` and ``train``. A YAML file may give any of them, command
line flags override it, and the resolved configuration is written to every run folder (``config.yaml``) so that a
run can be resumed and audited without the original file. Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genmedseg.errors import ConfigError


@dataclass
class DataConfig:
    """Where the data is and how it is fed to the model."""

    root: str | None = None
    split_file: str | None = None
    image_size: int = 224
    val_fraction: float = 0.1
    augment: bool = True
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Which method to train and its arguments (``options`` go to the method's constructor)."""

    name: str = "wave-gms"
    vae: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation and hardware settings (defaults: the Wave-GMS paper's)."""

    epochs: int = 1000
    batch_size: int = 12
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 5
    seed: int = 0
    devices: int | str = field(default=1, metadata={"words": ("auto",)})
    accelerator: str = "auto"
    precision: str = "32-true"
    val_every: int = 1
    max_minutes: float | None = None


@dataclass
class RunConfig:
    """The whole configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "configuration") -> RunConfig:
        """Build a config from nested dicts, refusing unknown sections and keys."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with sections data/model/train, got {type(raw).__name__}")
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections are {sorted(sections)}")
        config = cls()
        for name, values in raw.items():
            if values is None:
                continue
            setattr(config, name, _build_section(getattr(config, name), values, f"{source}: {name}"))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from error
        return cls.from_dict(raw, source=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def override(self, section: str, **values: Any) -> None:
        """Apply command-line values that were given (``None`` means the flag was not set)."""
        given = {key: value for key, value in values.items() if value is not None}
        setattr(self, section, _build_section(getattr(self, section), given, f"flags for {section}"))


def _build_section(current: Any, values: dict[str, Any], source: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping, got {values!r}")
    valid = {f.name: f for f in dataclasses.fields(current)}
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    merged = dataclasses.asdict(current)
    for key, value in values.items():
        if value in valid[key].metadata.get("words", ()):
            merged[key] = value
        else:
            merged[key] = _coerce(value, merged[key], f"{source}.{key}")
    return type(current)(**merged)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value against the type of its default; YAML gives ``2e-3`` as a string, so numbers are parsed."""
    if value is None or default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(default, float):
            return number
        if number != int(number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    return value
