"""The small surface every segmentation method implements, and its model folder format.

A method is an ``nn.Module`` with two jobs: ``training_loss(batch)`` for the trainer and ``predict_proba(images)``
for everything else (validation, evaluation, prediction, benchmarks). Frozen pretrained parts are built from their
architecture config, so a saved model folder (``config.json`` + ``model.safetensors`` + ``README.md``) is all that
is needed to load a trained model again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from genmedseg.atomic import atomic_write
from genmedseg.errors import WeightsError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FORMAT_VERSION = 1
# Convolutions run faster on channels-last (NHWC) tensors: oneDNN on CPU (1.1-1.4x per Wave-GMS training step,
# benchmarks/speed.py) and tensor cores on GPU. The trainer and the predictor put models and batches in it.
MEMORY_FORMAT = torch.channels_last


class SegmentationMethod(nn.Module):
    """Base class of every method: binary segmentation of RGB images in [0, 1].

    Subclasses set ``name``, implement ``training_loss`` and ``predict_proba``, and keep every constructor argument
    JSON-serialisable through ``get_config`` so that ``from_config(get_config())`` rebuilds the architecture.
    ``size_multiple`` is the factor that input sides must be divisible by.
    """

    name: ClassVar[str] = ""
    size_multiple: ClassVar[int] = 1

    @classmethod
    def create(cls, vae: str | None = None, **options: Any) -> SegmentationMethod:
        """A new, untrained model with its pretrained frozen parts loaded (``vae``: where to find them)."""
        return cls(**options)

    @classmethod
    def with_random_weights(cls, tiny: bool = False, **options: Any) -> SegmentationMethod:
        """Random weights everywhere, frozen parts included (paper sizes, or ``tiny``): for counts and timings only."""
        return cls(**options)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SegmentationMethod:
        """The architecture described by ``get_config()``, with weights still to be loaded."""
        return cls(**config)

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss of one batch ``{"image": (B,3,H,W) in [0,1], "mask": (B,1,H,W) in {0,1}}``: ``{"loss": ..., parts}``."""
        raise NotImplementedError

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Foreground probability ``(B,1,H,W)`` in [0, 1] for images ``(B,3,H,W)`` in [0, 1]."""
        raise NotImplementedError

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save_pretrained(self, folder: str | Path, card: str | None = None, **metadata: Any) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "config": self.get_config(),
            "trainable_parameters": self.num_trainable_parameters(),
            **metadata,
        }
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        atomic_write(folder / WEIGHTS_FILE, lambda path: save_file(state, str(path)))
        atomic_write(folder / CONFIG_FILE, lambda path: path.write_text(json.dumps(config, indent=2) + "\n"))
        if card is not None:
            atomic_write(folder / CARD_FILE, lambda path: path.write_text(card))
        return folder


def load_pretrained(folder: str | Path) -> SegmentationMethod:
    """Load a model folder written by ``save_pretrained``: no YAML and no original config needed."""
    from genmedseg.models.registry import get_model_class

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise WeightsError(
            f"{folder}: not a genmedseg model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "pass a run folder or the model/ folder that training writes"
        )
    saved = json.loads(config_path.read_text())
    method = get_model_class(saved["model"]).from_config(saved["config"])
    try:
        method.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as error:
        raise WeightsError(f"{weights_path}: weights do not match {CONFIG_FILE} ({error})") from error
    return method.eval()
