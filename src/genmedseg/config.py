"""Run configuration: dataclasses are the schema, YAML is only their storage.

A run is configured by three sections, ``data``, ``model`` and ``train``. Settings are resolved in this order, each
layer overriding the one before: the defaults below, the method's own ``training_defaults`` (e.g. MedSegDiff trains at
a constant learning rate), a YAML file, command-line flags. The resolved configuration is written to every run folder
(``config.yaml``) so that a run can be resumed and audited without the original file. Unknown keys and values of the
wrong type are errors that list what is valid.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from genmedseg.errors import ConfigError, check_choice

SCHEDULES = ("warmup-cosine", "constant")
FULL_PRECISION, BF16_PRECISION = "32-true", "bf16-mixed"
INFERENCE_PRECISIONS = (FULL_PRECISION, BF16_PRECISION)
"""What ``evaluate``/``predict`` run in; training takes any Lightning precision."""
POSITIVE = {"above": 0}
NON_NEGATIVE = {"minimum": 0}


@dataclass
class DataConfig:
    """Where the data is and how it is fed to the model."""

    root: str | None = None
    split_file: str | None = None
    image_size: int = field(default=224, metadata=POSITIVE)
    val_fraction: float = 0.1
    augment: bool = True
    num_workers: int = field(default=0, metadata=NON_NEGATIVE)
    extra_root: str | None = None
    """A second dataset whose train pairs are added to training only (e.g. synthetic pairs from ``generate``)."""
    extra_weight: float = field(default=1.0, metadata=POSITIVE)
    """Sampling weight of an extra pair relative to a real one (1: every pair once per epoch)."""


@dataclass
class ModelConfig:
    """Which method to train, its frozen pretrained parts by role (``vae``, ``sam``) and its constructor options."""

    name: str = "wave-gms"
    pretrained: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation and hardware settings (defaults: the Wave-GMS paper's; a method may change them)."""

    epochs: int = field(default=1000, metadata=POSITIVE)
    batch_size: int = field(default=12, metadata=POSITIVE)
    lr: float = field(default=2e-3, metadata=POSITIVE)
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    schedule: str = field(default="warmup-cosine", metadata={"choices": SCHEDULES})
    warmup_epochs: int = field(default=5, metadata=NON_NEGATIVE)
    ema_decay: float | None = field(default=None, metadata={"above": 0, "below": 1})
    grad_clip: float | None = field(default=None, metadata=POSITIVE)
    seed: int = 0
    devices: int | str = field(default=1, metadata={"words": ("auto",)})
    accelerator: str = "auto"
    precision: str = FULL_PRECISION
    val_every: int = field(default=1, metadata=POSITIVE)
    preview_every: int = field(default=10, metadata=NON_NEGATIVE)
    max_minutes: float | None = field(default=None, metadata=POSITIVE)


@dataclass
class RunConfig:
    """The whole configuration of one training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "configuration", base: RunConfig | None = None) -> RunConfig:
        """Apply nested dicts on top of ``base`` (default: the defaults), refusing unknown sections and keys."""
        config = dataclasses.replace(base) if base is not None else cls()
        config.update(raw, source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, base: RunConfig | None = None) -> RunConfig:
        return cls.from_dict(read_yaml(path), source=str(path), base=base)

    def update(self, raw: dict[str, Any], source: str = "configuration") -> None:
        """Apply nested dicts ``{"train": {...}, ...}`` in place."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a mapping with sections data/model/train, got {type(raw).__name__}")
        sections = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(raw) - set(sections))
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; valid sections are {sections}")
        for name, values in raw.items():
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: {name}: expected a mapping, got {values!r}")
            self.override(name, _source=f"{source}: {name}", **values)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def override(self, section: str, _source: str | None = None, **values: Any) -> None:
        """Apply the values that were given (``None`` means the flag was not set) to one section."""
        given = {key: value for key, value in values.items() if value is not None}
        if section == "model" and "vae" in given:
            # ``vae: SOURCE`` is the short form of ``pretrained: {vae: SOURCE}`` (and what runs of 0.1 recorded).
            given["pretrained"] = {"vae": given.pop("vae"), **dict(given.get("pretrained") or {})}
        current = getattr(self, section)
        setattr(self, section, _build_section(current, given, _source or f"flags for {section}"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data/model/train, got {type(raw).__name__}")
    return raw


def describe_section(section: Any) -> str:
    """``key=default`` for every key of a config section, for error messages."""
    return ", ".join(f"{f.name}={getattr(section, f.name)!r}" for f in dataclasses.fields(section))


def _build_section(current: Any, values: dict[str, Any], source: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(current)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown}; valid keys (with their values now): {describe_section(current)}"
        )
    hints = typing.get_type_hints(type(current))
    merged = dataclasses.asdict(current)
    for key, value in values.items():
        metadata = fields[key].metadata
        if value in metadata.get("words", ()):
            merged[key] = value
            continue
        merged[key] = _coerce(value, hints[key], f"{source}.{key}")
        choices = metadata.get("choices")
        if choices:
            check_choice(f"{source}.{key}", merged[key], choices)
        _check_bounds(merged[key], metadata, f"{source}.{key}")
    return type(current)(**merged)


def _check_bounds(value: Any, metadata: Any, where: str) -> None:
    """A number outside the field's bounds (``above``/``below`` exclusive, ``minimum`` inclusive) is refused."""
    if not isinstance(value, (int, float)):
        return
    if "above" in metadata and not value > metadata["above"]:
        raise ConfigError(f"{where}: {value:g} must be above {metadata['above']:g}")
    if "below" in metadata and not value < metadata["below"]:
        raise ConfigError(f"{where}: {value:g} must be below {metadata['below']:g}")
    if "minimum" in metadata and not value >= metadata["minimum"]:
        raise ConfigError(f"{where}: {value:g} must be at least {metadata['minimum']:g}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a field's type hint; YAML gives ``2e-3`` as a string, so numbers are parsed."""
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        optional = len(arguments) < len(typing.get_args(hint))
        hint = arguments[0] if len(arguments) == 1 else arguments
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required")
    if isinstance(hint, list):  # e.g. int | str: the first type that fits
        for candidate in hint:
            try:
                return _coerce(value, candidate, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {' or '.join(t.__name__ for t in hint)}")
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if origin in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if origin is float:
            return number
        if number != int(number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value
