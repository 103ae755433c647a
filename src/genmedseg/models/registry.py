"""The registry of methods: ``--model NAME`` picks one, ``genmedseg models`` lists them."""

from __future__ import annotations

from typing import Any

from genmedseg.errors import ConfigError
from genmedseg.models.base import SegmentationMethod
from genmedseg.models.gms import GMS
from genmedseg.models.unet import UNet
from genmedseg.models.wave_gms import WaveGMS

MODELS: dict[str, type[SegmentationMethod]] = {model.name: model for model in (WaveGMS, GMS, UNet)}


def get_model_class(name: str) -> type[SegmentationMethod]:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; valid models are: {', '.join(sorted(MODELS))}") from None


def create_model(name: str, vae: str | None = None, **options: Any) -> SegmentationMethod:
    """A new model of method ``name`` with its pretrained frozen parts loaded from ``vae`` (if it has any)."""
    cls = get_model_class(name)
    try:
        return cls.create(vae=vae, **options)
    except TypeError as error:
        raise ConfigError(f"model {name!r}: bad option ({error}); see `genmedseg models` and its docs") from error


def describe_models() -> list[tuple[str, str, int]]:
    """Name, one-line description and trainable parameter count (default options, paper-size latents) per model."""
    rows = []
    for name, cls in sorted(MODELS.items()):
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        rows.append((name, summary, cls.with_random_weights(tiny=True).num_trainable_parameters()))
    return rows
