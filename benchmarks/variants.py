"""Named variants of the registered models that the benchmarks compare: ``NAME -> (model, options)``."""

from __future__ import annotations

from typing import Any

from genmedseg.models.registry import MODELS

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "wave-gms[sft]": ("wave-gms", {"mapping": "sft"}),
    "wave-gms[tiny-vae]": ("wave-gms", {"image_encoder": "tiny-vae"}),
    "wave-gms[tiny-vae+sft]": ("wave-gms", {"image_encoder": "tiny-vae", "mapping": "sft"}),
}
NAMES: tuple[str, ...] = (*MODELS, *VARIANTS)


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """The registered model and options of a benchmark name (a registered model name stands for itself)."""
    if name not in NAMES:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(NAMES)}")
    return VARIANTS.get(name, (name, {}))
