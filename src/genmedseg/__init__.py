"""genmedseg: 2D medical image segmentation with generative models (Wave-GMS, GMS, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genmedseg.engine.inference import Segmenter

__version__ = "0.1.0"


def load(path: str, device: str | None = None) -> Segmenter:
    """Load a trained model from a run folder or a model folder: ``genmedseg.load(RUN).predict(image)``."""
    from genmedseg.engine.inference import load as load_segmenter

    return load_segmenter(path, device)


__all__ = ["__version__", "load"]
