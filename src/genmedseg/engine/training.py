"""Fit a method on a dataset folder: run folder, checkpoints (best validation score, last), exact resume, DDP.

The run folder's layout is in :mod:`genmedseg.folders`. Nothing here depends on which method runs: the method's
``monitor`` selects checkpoints, its ``pretrained_parts`` are resolved and recorded, its ``uses_label_maps`` asks the
data for class ids, its ``preview`` fills the preview grids.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

import genmedseg
from genmedseg.atomic import atomic_write
from genmedseg.config import FULL_PRECISION, RunConfig
from genmedseg.data import (
    EXTRA_PREFIX,
    EpochShuffleSampler,
    SegmentationDataset,
    assert_dataset_ok,
    discover,
    format_report,
    with_extra_training,
)
from genmedseg.data.layout import DatasetIndex
from genmedseg.engine.model_card import render_model_card
from genmedseg.engine.task import ExponentialMovingAverage, MethodTask, method_state
from genmedseg.environment import has_fast_cpu_bfloat16, is_worker_rank
from genmedseg.errors import ConfigError, TrainingError
from genmedseg.folders import RunFolder
from genmedseg.models.base import Method, image_generators
from genmedseg.models.registry import check_options, get_model_class
from genmedseg.pretrained import ResolvedSource, state_checksum
from genmedseg.report import plot_training_curves, write_preview_grid

PREVIEW_IMAGES = 4


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file that is renamed into place: a crash, a full disk or a read-only folder never
    leaves half a checkpoint, and the previous one stays as it was."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda temporary: _save(checkpoint, temporary))
        except OSError as error:
            kept = f"the previous {path.name} is intact; " if path.is_file() else ""
            raise TrainingError(
                f"cannot write the checkpoint {path} ({error.strerror or error}): free disk space or make the run "
                f"folder writable; {kept}then continue with `genmedseg train --resume {path.parent.parent}`"
            ) from error


def _save(checkpoint: dict[str, Any], path: Path) -> None:
    # Through a Python file object: a full disk then raises OSError (ENOSPC), not torch's opaque RuntimeError.
    with path.open("wb") as handle:
        torch.save(checkpoint, handle)


class _EpochSeeder(Callback):
    """Tells the training set which epoch it is, so that augmentation is a function of (seed, epoch, index)."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


class PreviewWriter(Callback):
    """Every ``every`` epochs (and after the last), saves ``previews/epoch_NNNN.png``: the method's ``preview`` of a
    few validation images, with the weights validation used (EMA weights when on: place it before that callback)."""

    def __init__(self, folder: Path, batch: dict[str, Any], every: int, seed: int) -> None:
        self.folder, self.batch, self.every, self.seed = folder, batch, every, seed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or (epoch % self.every and epoch != trainer.max_epochs)
        ):
            return
        batch = {
            key: value.to(pl_module.device) if isinstance(value, torch.Tensor) else value
            for key, value in self.batch.items()
        }
        with torch.no_grad():
            panels = pl_module.method.preview(batch, generator=image_generators(self.seed, batch["name"]))
        write_preview_grid(
            self.folder / f"epoch_{epoch:04d}.png",
            {name: values.detach().float().cpu().numpy() for name, values in panels.items()},
        )


class EpochPrinter(Callback):
    """One plain line per epoch (where no progress bar is drawn: logs, CI, notebooks' captured output)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = [
            f"{name} {float(metrics[name]):.4f}"
            for name in sorted(metrics)
            if name.startswith("train_loss") or name == pl_module.monitored
        ]
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {', '.join(shown)} "
            f"({time.perf_counter() - self.started:.0f} s)",
            flush=True,
        )


class TrivialPredictionMonitor(Callback):
    """Says so when a segmenter is stuck: every validation image predicted foreground everywhere (or nowhere) for
    ``patience`` validations in a row, the fixed point that a Dice loss on a half-foreground dataset can fall into."""

    KINDS = {"val_pred_full": "foreground everywhere", "val_pred_empty": "empty"}

    def __init__(self, patience: int = 3) -> None:
        self.patience = patience
        self.streaks = dict.fromkeys(self.KINDS, 0)
        self.found: list[str] = []
        self.last: dict[str, bool] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, words in self.KINDS.items():
            value = trainer.callback_metrics.get(key)
            trivial = value is not None and float(value) >= 1.0
            self.last[key] = trivial
            self.streaks[key] = self.streaks[key] + 1 if trivial else 0
            if self.streaks[key] == self.patience:
                message = (
                    f"every validation image has been predicted {words} for {self.patience} validations in a "
                    f"row (up to epoch {trainer.current_epoch + 1}): the model is stuck at a trivial solution; "
                    "train longer, or try another --lr or method"
                )
                self.found.append(message)
                if trainer.is_global_zero:
                    print(f"warning: {message}", file=sys.stderr, flush=True)

    def warnings(self) -> list[str]:
        """What the run summary records: streaks found, and whether the selected model ended trivial."""
        ending = [
            f"at the last validation every image was predicted {self.KINDS[key]}"
            for key, trivial in self.last.items()
            if trivial
        ]
        return [*self.found, *ending]


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's tips, advertisements and deprecation notes hidden; its warnings and errors kept."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        # The frozen parts are in eval mode on purpose; Lightning warns about every such module.
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # A non-finite loss skips its step on purpose, by returning None (the skips are counted and reported).
        warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def read_run_record(run: RunFolder) -> dict[str, Any]:
    """``run.json`` of a run folder (empty for a run of genmedseg 0.1, which had none)."""
    if not run.record.is_file():
        return {}
    try:
        return json.loads(run.record.read_text())
    except ValueError as error:
        raise ConfigError(f"{run.record}: damaged ({error}); restore it or start a new run") from None


def write_run_record(run: RunFolder, record: dict[str, Any]) -> None:
    atomic_write(run.record, lambda path: path.write_text(json.dumps(record, indent=2) + "\n"))


def resolve_pretrained(cls: type[Method], given: dict[str, str], recorded: dict[str, Any]) -> dict[str, ResolvedSource]:
    """Each frozen part's source: as given, else as the run recorded it (on resume), else environment or default."""
    unknown = sorted(set(given) - set(cls.pretrained_parts))
    if unknown:
        parts = ", ".join(cls.pretrained_parts) or "none"
        raise ConfigError(f"--pretrained {unknown[0]}=...: {cls.name} has no such part; its parts: {parts}")
    sources = {}
    for role, part in cls.pretrained_parts.items():
        if not given.get(role) and role in recorded:
            sources[role] = ResolvedSource(recorded[role]["source"], recorded[role]["origin"])
        else:
            resolved = part.resolve(given.get(role))
            path = Path(resolved.source).expanduser()
            sources[role] = ResolvedSource(str(path.resolve()) if path.exists() else resolved.source, resolved.origin)
    return sources


def make_loaders(
    config: RunConfig, index: DatasetIndex, labels: bool = False, extra: DatasetIndex | None = None
) -> tuple[SegmentationDataset, DataLoader, DataLoader]:
    """Training loader (seeded shuffling and augmentation) and validation loader.

    ``extra``: a second dataset whose train pairs join the training split only, each drawn with weight
    ``data.extra_weight`` relative to a real pair; validation is ``index``'s alone.
    """
    data, train = config.data, config.train
    training = index if extra is None else with_extra_training(index, extra)
    train_set = SegmentationDataset(
        training, "train", data.image_size, augment=data.augment, seed=train.seed, labels=labels
    )
    val_set = SegmentationDataset(index, "val", data.image_size, augment=False, labels=labels)
    weights = None
    if extra is not None:
        weights = [data.extra_weight if name.startswith(EXTRA_PREFIX) else 1.0 for name in train_set.names]
    common = {"num_workers": data.num_workers, "pin_memory": torch.cuda.is_available()}
    train_loader = DataLoader(
        train_set,
        batch_size=train.batch_size,
        sampler=EpochShuffleSampler(len(train_set), seed=train.seed, weights=weights),
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
    enable_progress_bar: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (or continue it with ``resume``) and export the selected model folder.

    ``enable_progress_bar``: Lightning's bar (default: only on a terminal; otherwise one plain line per epoch). A run
    that fails or is interrupted before its first checkpoint leaves no run folder behind; Ctrl-C later leaves the last
    checkpoint and raises ``KeyboardInterrupt`` for the caller to say how to resume.
    """
    # Absolute, because Lightning reports checkpoint paths absolute and the summary records them relative to it.
    run = RunFolder(Path(run_dir).resolve())
    if config.data.root is None:
        raise ConfigError("no dataset: give --data DIR (or data.root in the config file)")
    run.check_can_start(resume)
    cls = get_model_class(config.model.name)
    check_options(cls, config.model.options)
    index, data_warnings = assert_dataset_ok(
        discover(config.data.root, config.data.split_file, config.data.val_fraction, config.train.seed)
    )
    if data_warnings and not is_worker_rank():
        print(format_report(data_warnings, len(index.pairs), index.root))
    # The resolved configuration records the dataset's absolute path, so that a moved run folder still finds it.
    config.override("data", root=str(index.root.resolve()))
    extra = None
    if config.data.extra_root is not None:
        # Only its train split is used (a generated dataset: every pair); nothing of it is carved for validation.
        extra, extra_warnings = assert_dataset_ok(discover(config.data.extra_root, val_fraction=0.0))
        config.override("data", extra_root=str(extra.root.resolve()))
        if extra_warnings and not is_worker_rank():
            print(format_report(extra_warnings, len(extra.pairs), extra.root))
    record = read_run_record(run) if resume else {}
    sources = resolve_pretrained(cls, config.model.pretrained, record.get("pretrained", {}))

    L.seed_everything(config.train.seed, workers=True, verbose=False)
    method = cls.create(
        pretrained={role: source.source for role, source in sources.items()},
        image_size=config.data.image_size,
        **config.model.options,
    )
    frozen = {
        role: {"source": sources[role].source, "origin": sources[role].origin, "sha256": state_checksum(module)}
        for role, module in method.frozen_modules().items()
    }
    task = MethodTask(method, config.train, frozen)
    train_set, train_loader, val_loader = make_loaders(config, index, labels=cls.uses_label_maps, extra=extra)
    created = not resume and not run.path.exists()
    if not is_worker_rank():
        _write_run_folder(run, config, index, frozen, record)
    try:
        return _train(
            config,
            run,
            index,
            method,
            task,
            frozen,
            train_set,
            train_loader,
            val_loader,
            resume,
            callbacks or [],
            enable_progress_bar,
        )
    except BaseException:
        # Nothing to resume from: leave no half-made run folder that would block the same command next time.
        if created and not run.last_checkpoint.is_file() and not is_worker_rank():
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def _train(
    config: RunConfig,
    run: RunFolder,
    index: DatasetIndex,
    method: Method,
    task: MethodTask,
    frozen: dict[str, Any],
    train_set: SegmentationDataset,
    train_loader: DataLoader,
    val_loader: DataLoader,
    resume: bool,
    callbacks: list[Callback],
    enable_progress_bar: bool | None,
) -> dict[str, Any]:
    mode = method.monitor[1]
    # Two callbacks, best before last: Lightning writes "last" only when the monitored one saved, and the last
    # checkpoint must carry the best callback's updated state for an exact resume.
    best, last = (
        ModelCheckpoint(
            dirpath=run.checkpoints,
            filename=name,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        for name, monitor in (("best", task.monitored), ("last", None))
    )
    if enable_progress_bar is None:
        enable_progress_bar = sys.stderr.isatty()
    trivial = TrivialPredictionMonitor()
    extra: list[Callback] = [trivial]
    if not enable_progress_bar:
        extra.append(EpochPrinter())
    if config.train.preview_every:
        extra.append(
            PreviewWriter(
                run.previews, _first_items(val_loader, PREVIEW_IMAGES), config.train.preview_every, config.train.seed
            )
        )
    if config.train.ema_decay:
        extra.append(ExponentialMovingAverage(config.train.ema_decay))  # after the previews: see PreviewWriter
    on_cpu = config.train.accelerator == "cpu" or (config.train.accelerator == "auto" and not torch.cuda.is_available())
    if config.train.precision == FULL_PRECISION and on_cpu and has_fast_cpu_bfloat16() and not is_worker_rank():
        print(
            "note: this CPU has native bfloat16 (AMX): --precision bf16-mixed trains about 2.5x faster with the same "
            "accuracy in our benchmarks (benchmarks/README.md); float32 stays the default"
        )
    with quiet_lightning():
        trainer = L.Trainer(
            default_root_dir=run.path,
            max_epochs=config.train.epochs,
            max_time=None if config.train.max_minutes is None else {"minutes": config.train.max_minutes},
            accelerator=config.train.accelerator,
            devices=config.train.devices,
            precision=config.train.precision,
            gradient_clip_val=config.train.grad_clip,
            logger=CSVLogger(run.path, name=run.logs.name),
            callbacks=[best, last, _EpochSeeder(train_set), *extra, *callbacks],
            plugins=[AtomicCheckpointIO()],
            # The training sampler spreads its batches over DDP processes itself (EpochShuffleSampler), so that N
            # processes train as one would with N times the batch; every process validates the whole split.
            use_distributed_sampler=False,
            check_val_every_n_epoch=config.train.val_every,
            num_sanity_val_steps=0,
            log_every_n_steps=max(1, min(50, len(train_loader))),
            enable_progress_bar=enable_progress_bar,
            enable_model_summary=False,
        )
    checkpoint = run.last_checkpoint if resume else None
    first_epoch = 0
    if checkpoint is not None:
        # Lightning builds the first training iterator before it calls set_epoch, so with loader workers the first
        # resumed epoch would replay epoch 0's order and augmentation: set the resumed epoch up front.
        first_epoch = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] + 1
        train_loader.sampler.set_epoch(first_epoch)
        train_set.set_epoch(first_epoch)
    started, outcome = time.perf_counter(), "error"
    try:
        with quiet_lightning():
            trainer.fit(task, train_loader, val_loader, ckpt_path=checkpoint)
        outcome = "time limit" if trainer.should_stop and trainer.current_epoch < trainer.max_epochs else "finished"
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful shutdown and then exit(1), which would swallow genmedseg's hint.
        if not trainer.interrupted:
            raise
        outcome = "interrupted"
        raise KeyboardInterrupt from None
    finally:
        if trainer.is_global_zero and run.last_checkpoint.is_file():
            _record_session(
                run, first_epoch, time.perf_counter() - started, outcome, task.nonfinite_steps, trainer.world_size
            )
    if not trainer.is_global_zero:
        return {}
    return _finish_run(
        config, run, index, train_set.names, method, frozen, trainer, best, trivial.warnings(), task.nonfinite_steps
    )


def _record_session(
    run: RunFolder, first_epoch: int, seconds: float, outcome: str, nonfinite: int, processes: int
) -> None:
    """Append this training session to ``run.json``: how long it trained on how many processes, which epochs it
    finished, how it ended."""
    finished = torch.load(run.last_checkpoint, map_location="cpu", weights_only=False)["epoch"] + 1
    record = read_run_record(run)
    record.setdefault("sessions", []).append(
        {
            "started_epoch": first_epoch,
            "epochs_finished": finished,
            "seconds": round(seconds, 1),
            "processes": processes,
            "ended": outcome,
            "nonfinite_steps_skipped": nonfinite,
        }
    )
    write_run_record(run, record)


def _first_items(loader: DataLoader, count: int) -> dict[str, Any]:
    """The first ``count`` items of a loader's dataset as one batch (what the preview grids show)."""
    dataset = loader.dataset
    return loader.collate_fn([dataset[i] for i in range(min(count, len(dataset)))])


def _write_run_folder(
    run: RunFolder, config: RunConfig, index: DatasetIndex, frozen: dict[str, Any], record: dict[str, Any]
) -> None:
    """``config.yaml`` and ``run.json``: what a moved or copied run folder needs to be continued and reloaded."""
    pretrained = {role: {"source": part["source"], "origin": part["origin"]} for role, part in frozen.items()}
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write(run.config, config.to_yaml)
        write_run_record(
            run, {**record, "data": str(index.root.resolve()), "pretrained": pretrained, "versions": _versions()}
        )
    except OSError as error:
        raise TrainingError(
            f"cannot write to the run folder {run.path} ({error.strerror or error}): make the run folder writable "
            "(or free disk space); its checkpoints are unchanged"
        ) from error


def _versions() -> dict[str, str]:
    return {
        "genmedseg": genmedseg.__version__,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "python": platform.python_version(),
    }


def _finish_run(
    config: RunConfig,
    run: RunFolder,
    index: DatasetIndex,
    train_names: list[str],
    method: Method,
    frozen: dict[str, Any],
    trainer: L.Trainer,
    best: ModelCheckpoint,
    warnings: list[str],
    nonfinite_steps: int,
) -> dict[str, Any]:
    """Export the best checkpoint as a model folder and record the run's summary."""
    checkpoint = Path(best.best_model_path) if best.best_model_path else run.last_checkpoint
    method.load_state_dict(method_state(method, frozen, torch.load(checkpoint, map_location="cpu", weights_only=False)))
    sessions = read_run_record(run).get("sessions", [])
    metric, mode = method.monitor
    summary = {
        "model": config.model.name,
        "role": method.role,
        "data": str(index.root.resolve()),
        "image_size": config.data.image_size,
        "epochs_done": sessions[-1]["epochs_finished"] if sessions else trainer.current_epoch,
        "epochs": config.train.epochs,
        "stopped": sessions[-1]["ended"] if sessions else "finished",
        "best_val": {
            "metric": metric,
            "mode": mode,
            "value": float(best.best_model_score) if best.best_model_score is not None else None,
        },
        "best_checkpoint": str(checkpoint.relative_to(run.path)),
        "trainable_parameters": method.num_trainable_parameters(),
        "parameters": method.num_parameters(),
        "train_seconds": round(sum(session["seconds"] for session in sessions), 1),
        "sessions": len(sessions),
        "steps": trainer.global_step,
        "n_train": len(index.splits["train"]),
        "n_extra_train": sum(name.startswith(EXTRA_PREFIX) for name in train_names),
        "extra_data": config.data.extra_root,
        "extra_weight": config.data.extra_weight if config.data.extra_root else None,
        "n_val": len(index.splits["val"]),
        "val_source": index.val_source,
        "ema_decay": config.train.ema_decay,
        "nonfinite_steps_skipped": sum(session.get("nonfinite_steps_skipped", 0) for session in sessions),
        "warnings": warnings,
    }
    card = render_model_card(config, summary, frozen)
    method.save_pretrained(run.model.path, card=card, training=summary, pretrained=frozen)
    atomic_write(run.summary, lambda path: path.write_text(json.dumps(summary, indent=2) + "\n"))
    plot_training_curves(run.path, method.monitor)
    return summary
