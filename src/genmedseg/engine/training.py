"""Fit a method on a dataset folder: run folder, checkpoints (best validation Dice, last), exact resume, DDP.

A run folder holds everything about one training run::

    RUN/config.yaml                 the resolved configuration (what ``--resume`` reads back)
    RUN/checkpoints/best.ckpt       best validation Dice (full training state, written atomically)
    RUN/checkpoints/last.ckpt       end of the last finished epoch (what ``--resume`` continues from)
    RUN/logs/version_N/metrics.csv  one CSV log per training session (a resumed run adds a version)
    RUN/model/                      the best model as config.json + model.safetensors + README.md
    RUN/train_summary.json          what the ``runs`` table shows
    RUN/curves.png                  losses and validation Dice per epoch
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from genmedseg.atomic import atomic_write
from genmedseg.config import RunConfig
from genmedseg.data import EpochShuffleSampler, SegmentationDataset, assert_dataset_ok, discover, format_report
from genmedseg.data.layout import DatasetIndex
from genmedseg.engine.model_card import render_model_card
from genmedseg.engine.task import SegmentationTask
from genmedseg.errors import ConfigError
from genmedseg.models.base import SegmentationMethod
from genmedseg.models.registry import create_model
from genmedseg.report import plot_training_curves

CONFIG_NAME = "config.yaml"
BEST_CHECKPOINT = "checkpoints/best.ckpt"
LAST_CHECKPOINT = "checkpoints/last.ckpt"
MODEL_FOLDER = "model"
SUMMARY_NAME = "train_summary.json"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file that is renamed into place: a crash never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temporary: torch.save(checkpoint, temporary))


class _EpochSeeder(Callback):
    """Tells the training set which epoch it is, so that augmentation is a function of (seed, epoch, index)."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


def is_worker_rank() -> bool:
    """True in the extra processes that DDP launches (they must not redo the launcher's one-off work)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def prepare_run_folder(config: RunConfig, run_dir: Path, resume: bool) -> None:
    """Refuse to overwrite an earlier run; write the resolved configuration."""
    if resume:
        if not (run_dir / LAST_CHECKPOINT).is_file():
            raise ConfigError(f"{run_dir}: nothing to resume (no {LAST_CHECKPOINT}); start a new run with --out")
    elif (run_dir / CONFIG_NAME).exists() and not is_worker_rank():
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out"
        )
    if not is_worker_rank():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / CONFIG_NAME, config.to_yaml)


def make_loaders(config: RunConfig, index: DatasetIndex) -> tuple[SegmentationDataset, DataLoader, DataLoader]:
    """Training loader (seeded shuffling and augmentation) and validation loader."""
    data, train = config.data, config.train
    train_set = SegmentationDataset(index, "train", data.image_size, augment=data.augment, seed=train.seed)
    val_set = SegmentationDataset(index, "val", data.image_size, augment=False)
    common = {"num_workers": data.num_workers, "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(
        train_set,
        batch_size=train.batch_size,
        sampler=EpochShuffleSampler(len(train_set), seed=train.seed),
        # Dropping an incomplete last batch (as the paper does) only where a full batch remains.
        drop_last=len(train_set) > train.batch_size,
        **common,
    )
    val_loader = DataLoader(val_set, batch_size=train.batch_size, shuffle=False, **common)
    return train_set, train_loader, val_loader


def fit(
    config: RunConfig,
    run_dir: str | Path,
    resume: bool = False,
    callbacks: list[Callback] | None = None,
    enable_progress_bar: bool = True,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume``) and export the best model folder."""
    # Absolute, because Lightning reports checkpoint paths absolute and the summary records them relative to it.
    run_dir = Path(run_dir).resolve()
    if config.data.root is None:
        raise ConfigError("no dataset: give --data DIR (or data.root in the config file)")
    index, data_warnings = assert_dataset_ok(
        discover(config.data.root, config.data.split_file, config.data.val_fraction, config.train.seed)
    )
    if data_warnings and not is_worker_rank():
        print(format_report(data_warnings, len(index.pairs), index.root))
    prepare_run_folder(config, run_dir, resume)

    L.seed_everything(config.train.seed, workers=True, verbose=False)
    method = create_model(config.model.name, vae=config.model.vae, **config.model.options)
    _check_image_size(method, config.data.image_size)
    task = SegmentationTask(method, config.train)
    train_set, train_loader, val_loader = make_loaders(config, index)

    # Two callbacks, best before last: Lightning writes "last" only when the monitored one saved, and the last
    # checkpoint must carry the best callback's updated state for an exact resume.
    best, last = (
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename=name,
            monitor=monitor,
            mode="max",
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        for name, monitor in (("best", "val_dice"), ("last", None))
    )
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=config.train.epochs,
        max_time=None if config.train.max_minutes is None else {"minutes": config.train.max_minutes},
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        strategy=_strategy(config.train.devices),
        precision=config.train.precision,
        logger=CSVLogger(run_dir, name="logs"),
        callbacks=[best, last, _EpochSeeder(train_set), *(callbacks or [])],
        plugins=[AtomicCheckpointIO()],
        check_val_every_n_epoch=config.train.val_every,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(train_loader))),
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )
    checkpoint = run_dir / LAST_CHECKPOINT if resume else None
    if checkpoint is not None:
        # Lightning builds the first training iterator before it calls set_epoch, so with loader workers the first
        # resumed epoch would replay epoch 0's order and augmentation: set the resumed epoch up front.
        epoch = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] + 1
        train_loader.sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # The frozen autoencoder is in eval mode on purpose; Lightning warns about every such module.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(task, train_loader, val_loader, ckpt_path=checkpoint)
    seconds = time.perf_counter() - started
    if not trainer.is_global_zero:
        return {}
    return _finish_run(config, run_dir, index, method, trainer, best, seconds)


def _strategy(devices: int | str) -> str:
    # The config admits an integer or "auto"; only an explicit count above one (or -1, all) asks for DDP.
    several = isinstance(devices, int) and (devices == -1 or devices > 1)
    # The unused level3 head (and frozen parts) would stop plain DDP; tell it to look for unused parameters.
    return "ddp_find_unused_parameters_true" if several else "auto"


def _check_image_size(method: SegmentationMethod, image_size: int) -> None:
    if image_size % method.size_multiple:
        raise ConfigError(
            f"image_size {image_size} is not a multiple of {method.size_multiple}, which {method.name} needs; "
            f"use e.g. {image_size - image_size % method.size_multiple or method.size_multiple}"
        )


def _finish_run(
    config: RunConfig,
    run_dir: Path,
    index: DatasetIndex,
    method: SegmentationMethod,
    trainer: L.Trainer,
    best: ModelCheckpoint,
    seconds: float,
) -> dict[str, Any]:
    """Export the best checkpoint as a model folder and record the run's summary."""
    checkpoint = Path(best.best_model_path) if best.best_model_path else run_dir / LAST_CHECKPOINT
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    method.load_state_dict({key.removeprefix("method."): value for key, value in state.items()})
    previous = _read_summary(run_dir)
    summary = {
        "model": config.model.name,
        "data": str(Path(config.data.root).resolve()),
        "image_size": config.data.image_size,
        "epochs_done": trainer.current_epoch,
        "epochs": config.train.epochs,
        "best_val_dice": float(best.best_model_score) if best.best_model_score is not None else None,
        "best_checkpoint": str(checkpoint.relative_to(run_dir)),
        "trainable_parameters": method.num_trainable_parameters(),
        "train_seconds": previous.get("train_seconds", 0.0) + seconds,
        "steps": trainer.global_step,
        "n_train": len(index.splits["train"]),
        "n_val": len(index.splits["val"]),
        "val_source": index.val_source,
    }
    card = render_model_card(config, summary)
    method.save_pretrained(run_dir / MODEL_FOLDER, card=card, training=summary)
    atomic_write(run_dir / SUMMARY_NAME, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    plot_training_curves(run_dir)
    return summary


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / SUMMARY_NAME
    return json.loads(path.read_text()) if path.is_file() else {}
