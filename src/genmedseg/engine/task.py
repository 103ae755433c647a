"""One Lightning module for every method: optimisation, validation on the method's own metrics, exact resume.

The module asks nothing of a method but the :class:`~genmedseg.models.base.Method` surface. Checkpoints hold the
full training state except the frozen pretrained parts, which are recorded by source and checksum instead (they
are loaded again, and checked, on resume); the model folder exported at the end holds them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging

from genmedseg.config import TrainConfig
from genmedseg.errors import TrainingError, WeightsError
from genmedseg.models.base import MEMORY_FORMAT, Method, image_generators

MODULE_PREFIX = "method."
"""Prefix of the method's keys in the Lightning state dict (the task holds the method as ``self.method``)."""
MAX_NONFINITE_STEPS = 5
"""Consecutive optimiser steps with a NaN or infinite loss after which training stops."""


def learning_rate_factor(schedule: str, step: int, warmup_steps: int, total_steps: int) -> float:
    """Factor on the base learning rate at optimiser ``step``: a linear warm-up to 1 (starting above 0), then
    ``warmup-cosine`` decays to 0 at ``total_steps`` and ``constant`` stays at 1.

    Stepped per optimiser step. The original Wave-GMS schedule is stepped per epoch and starts at 0, which wastes the
    whole first epoch; here step 0 already trains at ``1 / warmup_steps`` of the base rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``AveragedModel`` average of an EMA whose decay grows as ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so that a short run is not averaged towards its random initialisation; integer buffers are copied."""

    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():
            return current
        rate = min(decay, (1.0 + float(updates)) / (10.0 + float(updates)))
        return averaged * rate + current * (1.0 - rate)

    return average


class ExponentialMovingAverage(WeightAveraging):
    """Lightning's weight-averaging callback as an EMA with warm-up: validation, checkpoints' ``state_dict`` and the
    exported model use the averaged weights; the live weights travel in the checkpoint for an exact resume."""

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=True, avg_fn=ema_with_warmup(decay))


class MethodTask(L.LightningModule):
    """Trains any :class:`Method` with AdamW and the configured schedule; validates with its own metrics.

    ``frozen`` records each frozen part by role: ``{"source", "origin", "sha256"}`` (what the checkpoints keep of it).
    """

    def __init__(self, method: Method, train: TrainConfig, frozen: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.method = method.to(memory_format=MEMORY_FORMAT)
        self.train_config = train
        self.frozen = frozen
        self.nonfinite_steps = 0  # all skipped steps of this session
        self._nonfinite_in_a_row = 0

    @property
    def monitored(self) -> str:
        """The logged value that selects checkpoints, e.g. ``val_dice``."""
        return f"val_{self.method.monitor[0]}"

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.ndim == 4:
                batch[key] = value.contiguous(memory_format=MEMORY_FORMAT)
        return batch

    def on_train_epoch_start(self) -> None:
        self.method.begin_epoch(self.current_epoch, self.trainer.max_epochs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        losses = self.method.training_loss(batch)
        size = batch["image"].shape[0]
        # A NaN or inf loss is skipped (no backward, no optimiser step) on every process at once; several in a row
        # stop the run, leaving the last checkpoint as it was.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(losses["loss"])), all=False):
            return self._skip_nonfinite(losses)
        self._nonfinite_in_a_row = 0
        self.log("train_loss", losses["loss"], prog_bar=True, on_step=False, on_epoch=True, batch_size=size)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return losses["loss"]

    def _skip_nonfinite(self, losses: dict[str, torch.Tensor]) -> None:
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= MAX_NONFINITE_STEPS:
            parts = ", ".join(f"{name} {float(value.detach()):.4g}" for name, value in losses.items())
            raise TrainingError(
                f"the loss was NaN or infinite in {self._nonfinite_in_a_row} steps in a row (epoch "
                f"{self.current_epoch}, step {self.global_step}; {parts}). Likely causes: a learning rate too high "
                "(lower --lr or add --grad-clip 1.0), a reduced precision that overflows (--precision 32-true), or "
                "input values out of range (run `genmedseg check-data`). The last checkpoint is intact: fix the "
                "cause and continue with `genmedseg train --resume RUN` (flags such as --lr apply to the rest)."
            )
        return None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        # One generator per image, seeded by its name: a sampling method sees the same noise every epoch.
        generators = image_generators(self.train_config.seed, batch["name"])
        for name, values in self.method.validation_metrics(batch, generator=generators).items():
            self.log(
                f"val_{name}",
                values.float().mean(),
                prog_bar=f"val_{name}" == self.monitored,
                on_epoch=True,
                batch_size=values.numel(),
                sync_dist=True,
            )

    def configure_optimizers(self) -> dict[str, Any]:
        config = self.train_config
        groups = [
            {"params": group["params"], "lr": config.lr * group.get("lr_scale", 1.0)}
            for group in self.method.parameter_groups()
            if group["params"]
        ]
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = min(config.warmup_epochs * steps_per_epoch, max(1, total // 2)) if config.warmup_epochs else 0
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: learning_rate_factor(config.schedule, step, warmup, total)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------ checkpoints

    def frozen_keys(self) -> tuple[str, ...]:
        """State-dict prefixes of the frozen parts, as they appear in the Lightning state dict."""
        return tuple(MODULE_PREFIX + prefix for prefix in self.method.frozen_prefixes().values())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen parts never change: the checkpoint records where they came from and their checksum, not their
        # weights (for GMS's SD VAE that is 330 MB per checkpoint).
        prefixes = self.frozen_keys()
        for key in ("state_dict", "current_model_state"):  # the second one is the EMA callback's live weights
            if key in checkpoint:
                checkpoint[key] = {
                    name: value for name, value in checkpoint[key].items() if not name.startswith(prefixes)
                }
        checkpoint["frozen_parts"] = self.frozen
        # Lightning restores model, optimiser, scheduler and loop counters; the random streams are ours to keep,
        # so that a resumed run draws the same latent samples as an uninterrupted one. Only tensors and plain
        # Python values, so that the checkpoint loads with torch.load(weights_only=True).
        checkpoint["rng_states"] = {
            "python": random.getstate(),
            "numpy": _numpy_state_as_tensors(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_frozen_parts(self.method, self.frozen, checkpoint)
        callbacks = checkpoint.get("callbacks", {})
        # --max-minutes is a budget per session: the elapsed time of earlier sessions does not count against it.
        for key in [key for key in callbacks if key.startswith("Timer")]:
            del callbacks[key]
        # A run folder moved or copied elsewhere: the checkpoint callbacks' paths follow it.
        for callback in self.trainer.checkpoint_callbacks:
            rebase_checkpoint_paths(callbacks.get(callback.state_key), Path(callback.dirpath))
        states = checkpoint.get("rng_states")
        if states is None:
            return
        random.setstate(states["python"])
        name, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def rebase_checkpoint_paths(state: dict[str, Any] | None, folder: Path) -> None:
    """Point a saved ``ModelCheckpoint`` state at ``folder`` (the checkpoints folder where the run now is)."""
    if not state or not state.get("dirpath") or Path(state["dirpath"]) == folder:
        return
    state["dirpath"] = str(folder)
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if state.get(key):
            state[key] = str(folder / Path(state[key]).name)
    if state.get("best_k_models"):
        models = state["best_k_models"].items()
        state["best_k_models"] = {str(folder / Path(path).name): score for path, score in models}


def restore_frozen_parts(method: Method, frozen: dict[str, dict[str, str]], checkpoint: dict[str, Any]) -> None:
    """Put the loaded frozen parts' weights back into a checkpoint's state dicts, after checking that they are the
    ones the checkpoint was trained with (same checksum)."""
    for role, recorded in (checkpoint.get("frozen_parts") or {}).items():
        current = frozen.get(role, {})
        if current.get("sha256") != recorded.get("sha256"):
            raise WeightsError(
                f"the {role} weights now loaded ({current.get('source')}, sha256 {str(current.get('sha256'))[:12]}) "
                f"are not those this run was trained with ({recorded.get('source')}, sha256 "
                f"{str(recorded.get('sha256'))[:12]}); give those with --pretrained {role}=SOURCE"
            )
    prefixes = tuple(method.frozen_prefixes().values())
    weights = {MODULE_PREFIX + name: value for name, value in method.state_dict().items() if name.startswith(prefixes)}
    for key in ("state_dict", "current_model_state"):
        if key in checkpoint:
            checkpoint[key] = {**checkpoint[key], **weights}


def method_state(method: Method, frozen: dict[str, dict[str, str]], checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The method's full state dict from a training checkpoint (its ``state_dict``: EMA weights when on)."""
    restore_frozen_parts(method, frozen, checkpoint)
    return {key.removeprefix(MODULE_PREFIX): value for key, value in checkpoint["state_dict"].items()}


def _numpy_state_as_tensors(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)
