"""The three folders genmedseg writes, in one place: a run, a model and an evaluation (or prediction).

Only paths live here (no torch, no Lightning), so that the CLI, the report and the runs table can find files
without importing the training stack.

Run folder (``genmedseg train --out RUN``)::

    RUN/config.yaml                 the resolved configuration (what ``--resume`` reads back)
    RUN/run.json                    what the configuration cannot say: resolved pretrained sources, absolute data
                                    path, versions, the sessions so far
    RUN/checkpoints/best.ckpt       best validation score (training state without the frozen parts' weights)
    RUN/checkpoints/last.ckpt       end of the last finished epoch (what ``--resume`` continues from)
    RUN/logs/version_N/metrics.csv  one CSV log per training session (a resumed run adds a version)
    RUN/previews/epoch_NNNN.png     what the model makes of a few validation images, every few epochs
    RUN/model/                      the selected model (a model folder, below)
    RUN/train_summary.json          what the ``runs`` table shows
    RUN/curves.png                  losses and validation scores per epoch

Model folder (``RUN/model``, or any folder written by ``save_pretrained``)::

    config.json  model.safetensors (frozen parts included: self-contained)  README.md (model card)

Evaluation folder (``genmedseg evaluate RUN --out EVAL``; ``predict`` writes the same minus the metrics)::

    metrics.csv  summary.json  masks/<name>.png  probabilities/<name>.png  <map>/<name>.png (e.g. uncertainty/)
    report.html
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from genmedseg.environment import is_worker_rank
from genmedseg.errors import ConfigError

MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "README.md"


@dataclass(frozen=True)
class ModelFolder:
    """A trained model: architecture, weights (frozen parts included) and a model card."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / MODEL_CONFIG_FILE

    @property
    def weights(self) -> Path:
        return self.path / MODEL_WEIGHTS_FILE

    @property
    def card(self) -> Path:
        return self.path / MODEL_CARD_FILE

    def exists(self) -> bool:
        return self.config.is_file() and self.weights.is_file()


@dataclass(frozen=True)
class RunFolder:
    """One training run (see the module docstring)."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def previews(self) -> Path:
        return self.path / "previews"

    @property
    def model(self) -> ModelFolder:
        return ModelFolder(self.path / "model")

    @property
    def summary(self) -> Path:
        return self.path / "train_summary.json"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    def is_run(self) -> bool:
        return self.config.is_file()

    def check_can_start(self, resume: bool) -> None:
        """Refuse to resume a folder without a last checkpoint, or to start a new run in a folder that holds one (the
        extra processes of DDP skip that check: the launcher's process has just made the folder)."""
        if resume and not self.last_checkpoint.is_file():
            raise ConfigError(
                f"{self.path}: nothing to resume (no {self.last_checkpoint.name}); start a new run with --out"
            )
        if not resume and self.is_run() and not is_worker_rank():
            raise ConfigError(
                f"{self.path} already holds a run; continue it with --resume {self.path} or choose another --out"
            )


@dataclass(frozen=True)
class EvaluationFolder:
    """What ``evaluate`` (or ``predict``) wrote: per-image maps, metrics and the report."""

    path: Path

    @property
    def masks(self) -> Path:
        return self.path / "masks"

    @property
    def probabilities(self) -> Path:
        return self.path / "probabilities"

    def map_folder(self, name: str) -> Path:
        """Folder of one extra map of the predictions (e.g. ``uncertainty``)."""
        return self.path / name

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"


def model_folder_of(path: str | os.PathLike) -> ModelFolder:
    """The model folder of a run folder, or ``path`` itself when it is a model folder (it may not exist)."""
    path = Path(path)
    inside = RunFolder(path).model
    return inside if inside.config.is_file() else ModelFolder(path)
