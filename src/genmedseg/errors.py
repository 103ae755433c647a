"""Errors that users can act on: every message says what was wrong, where, and what to do."""

from __future__ import annotations

from collections.abc import Collection


class GenMedSegError(Exception):
    """Base class of every error genmedseg raises on purpose; the CLI prints it without a traceback."""


class DataError(GenMedSegError):
    """A dataset folder, image or mask cannot be used as it is."""


class ConfigError(GenMedSegError):
    """A configuration file or flag is wrong (unknown key, bad value)."""


class WeightsError(GenMedSegError):
    """Pretrained weights are missing or do not match the expected architecture."""


class TrainingError(GenMedSegError):
    """Training cannot go on (a diverged loss, a checkpoint that cannot be written); earlier checkpoints are intact."""


class ExportError(GenMedSegError):
    """A model cannot be exported as asked, or its export does not compute what the model computes."""


def check_choice(key: str, value: object, choices: Collection[object]) -> None:
    """Refuse ``value`` for option ``key`` unless it is one of ``choices``, naming them."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: choose one of {', '.join(map(str, choices))}")
