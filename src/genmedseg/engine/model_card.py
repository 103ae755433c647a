"""The model card (``README.md``) of a model folder: what was trained, on what, and how well it did."""

from __future__ import annotations

from typing import Any

from genmedseg.config import RunConfig

EVALUATION_HEADING = "## Evaluation"


def render_model_card(config: RunConfig, summary: dict[str, Any]) -> str:
    """Markdown card written at the end of training; evaluation results are appended by ``add_evaluation``."""
    best = summary["best_val_dice"]
    lines = [
        f"# genmedseg model: {summary['model']}",
        "",
        "Binary 2D segmentation model trained with genmedseg. Load it with `genmedseg.load(FOLDER)` or run",
        "`genmedseg predict FOLDER IMAGES --out DIR`.",
        "",
        "## Training",
        "",
        f"- data: `{summary['data']}` ({summary['n_train']} training images, {summary['n_val']} validation images;"
        f" validation split: {summary['val_source']})",
        f"- input size: {summary['image_size']} x {summary['image_size']}",
        f"- epochs: {summary['epochs_done']} of {summary['epochs']} ({summary['steps']} optimiser steps,"
        f" {summary['train_seconds']:.0f} s)",
        f"- batch size {config.train.batch_size}, AdamW lr {config.train.lr:g}, weight decay"
        f" {config.train.weight_decay:g}, seed {config.train.seed}",
        f"- frozen autoencoder: `{config.model.vae or 'default (GENMEDSEG_VAE or madebyollin/taesd)'}`",
        f"- trainable parameters: {summary['trainable_parameters']:,}",
        f"- selected checkpoint: best validation Dice"
        + (f" = {best:.4f}" if best is not None else " (no validation ran; last epoch)"),
        "",
        "The test split was never used for checkpoint selection.",
        "",
    ]
    return "\n".join(lines)


def add_evaluation(card: str, data: str, split: str, summary: dict[str, Any]) -> str:
    """Append (or replace) the evaluation of ``split`` of ``data`` in a model card."""
    title = f"### {split} split of `{data}`"
    rows = ["| metric | mean | std | n |", "|---|---|---|---|"]
    for metric in ("dice", "iou", "hd95"):
        values = summary[metric]
        rows.append(f"| {metric} | {values['mean']:.4f} | {values['std']:.4f} | {values['n']} |")
    section = "\n".join([title, "", *rows, ""])
    if EVALUATION_HEADING not in card:
        card = card.rstrip("\n") + f"\n\n{EVALUATION_HEADING}\n\nHD95 in pixels at each image's original size.\n"
    if title in card:
        start = card.index(title)
        end = card.find("\n### ", start + 1)
        card = card[:start] + section + ("" if end == -1 else card[end + 1 :])
    else:
        card = card.rstrip("\n") + "\n\n" + section
    return card
