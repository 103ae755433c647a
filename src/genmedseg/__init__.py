"""genmedseg: 2D medical image segmentation with generative models (Wave-GMS, GMS, MedSegDiff, I-MedSAM, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genmedseg.engine.generation import Synthesizer
    from genmedseg.engine.inference import Segmenter

__version__ = "0.2.0"


def load(path: str, device: str | None = None, precision: str = "32-true") -> Segmenter | Synthesizer:
    """Load a trained model from a run folder or a model folder: ``genmedseg.load(RUN).predict("image.png")`` for a
    segmenter, ``.generate(mask)`` for a generator; ``precision="bf16-mixed"`` segments under bfloat16 autocast."""
    from genmedseg.engine.inference import load as load_model

    return load_model(path, device, precision)


__all__ = ["__version__", "load"]
