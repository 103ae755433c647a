"""Named variants of the registered models that the benchmarks compare.

A variant is a registered model with constructor options, train settings and evaluation settings of its own
(prompts, sampling); a registered model's name stands for itself with its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genmedseg.models.registry import MODELS


@dataclass(frozen=True)
class Variant:
    """What a benchmark row trains and how it is evaluated."""

    model: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    prompts: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)


VARIANTS: dict[str, Variant] = {
    "wave-gms[sft]": Variant("wave-gms", {"mapping": "sft"}),
    "wave-gms[tiny-vae]": Variant("wave-gms", {"image_encoder": "tiny-vae"}),
    "wave-gms[tiny-vae+sft]": Variant("wave-gms", {"image_encoder": "tiny-vae", "mapping": "sft"}),
    "wave-gms[zero-heads]": Variant("wave-gms", {"head_init": "zeros"}),
    "wave-gms[tiny-vae+zero-heads]": Variant("wave-gms", {"image_encoder": "tiny-vae", "head_init": "zeros"}),
    "wave-gms[tiny-vae+sft+zero-heads]": Variant(
        "wave-gms", {"image_encoder": "tiny-vae", "mapping": "sft", "head_init": "zeros"}
    ),
}
NAMES: tuple[str, ...] = (*MODELS, *VARIANTS)


def resolve_variant(name: str) -> Variant:
    """The variant of a benchmark name (a registered model name stands for itself)."""
    if name not in NAMES:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(NAMES)}")
    return VARIANTS.get(name, Variant(name))


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """The registered model and constructor options of a benchmark name."""
    variant = resolve_variant(name)
    return variant.model, dict(variant.options)
