"""One Lightning module for every method: optimisation, validation Dice and exact resume."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from genmedseg.config import TrainConfig
from genmedseg.metrics import batch_dice
from genmedseg.models.base import MEMORY_FORMAT, SegmentationMethod


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 (starting above 0), then cosine decay to 0 at ``total_steps``.

    Stepped per optimiser step. The original schedule is stepped per epoch and starts at 0, which wastes the whole
    first epoch; here step 0 already trains at ``1 / warmup_steps`` of the base rate.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class SegmentationTask(L.LightningModule):
    """Trains any ``SegmentationMethod`` with AdamW and a warm-up + cosine schedule; selects on validation Dice."""

    def __init__(self, method: SegmentationMethod, train: TrainConfig) -> None:
        super().__init__()
        self.method = method.to(memory_format=MEMORY_FORMAT)
        self.train_config = train

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        for key in ("image", "mask"):
            batch[key] = batch[key].contiguous(memory_format=MEMORY_FORMAT)
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.method.training_loss(batch)
        size = batch["image"].shape[0]
        self.log("train_loss", losses["loss"], prog_bar=True, on_step=False, on_epoch=True, batch_size=size)
        for name, value in losses.items():
            if name != "loss":
                self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        proba = self.method.predict_proba(batch["image"])
        dice = batch_dice(proba, batch["mask"])
        self.log("val_dice", dice.mean(), prog_bar=True, on_epoch=True, batch_size=dice.numel(), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        trainable = [p for p in self.method.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.train_config.lr, weight_decay=self.train_config.weight_decay)
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = min(self.train_config.warmup_epochs * steps_per_epoch, max(1, total // 2))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
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
        states = checkpoint.get("rng_states")
        if states is None:
            return
        random.setstate(states["python"])
        name, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])


def _numpy_state_as_tensors(state: tuple) -> tuple:
    name, keys, position, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)
