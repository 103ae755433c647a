"""The model card (``README.md``) of a model folder: what was trained, on what, and how well it did."""

from __future__ import annotations

from typing import Any

from genmedseg.config import RunConfig

EVALUATION_HEADING = "## Evaluation"


USE = {
    "segmenter": (
        "Binary 2D segmentation model trained with genmedseg. Load it with `genmedseg.load(FOLDER)` or run\n"
        "`genmedseg predict FOLDER IMAGES --out DIR`."
    ),
    "generator": (
        "Mask-to-image generator trained with genmedseg. Load it with `genmedseg.load(FOLDER)` or run\n"
        "`genmedseg generate FOLDER --masks DATA --out NEW_DATA`."
    ),
}


def render_model_card(config: RunConfig, summary: dict[str, Any], pretrained: dict[str, dict[str, str]]) -> str:
    """Markdown card written at the end of training; evaluation results are appended by ``add_evaluation``."""
    best = summary["best_val"]
    selected = (
        f"best validation {best['metric']} = {best['value']:.4f}"
        if best["value"] is not None
        else "the last epoch (no validation ran)"
    )
    parts = [
        f"- frozen {role}: `{part['source']}` ({part['origin']}; sha256 {part['sha256'][:16]}...)"
        for role, part in pretrained.items()
    ]
    lines = [
        f"# genmedseg model: {summary['model']}",
        "",
        USE[summary["role"]],
        "",
        "## Training",
        "",
        f"- data: `{summary['data']}` ({summary['n_train']} training images, {summary['n_val']} validation images;"
        f" validation split: {summary['val_source']})",
        *(
            [
                f"- extra training pairs: {summary['n_extra_train']} from `{summary['extra_data']}` (sampling weight"
                f" {summary['extra_weight']:g} relative to a real pair; training split only)"
            ]
            if summary.get("n_extra_train")
            else []
        ),
        f"- input size: {summary['image_size']} x {summary['image_size']}",
        f"- epochs: {summary['epochs_done']} of {summary['epochs']} ({summary['steps']} optimiser steps,"
        f" {summary['train_seconds']:.0f} s)",
        f"- batch size {config.train.batch_size}, AdamW lr {config.train.lr:g} ({config.train.schedule}), weight decay"
        f" {config.train.weight_decay:g}, seed {config.train.seed}"
        + (f", EMA {config.train.ema_decay:g}" if config.train.ema_decay else ""),
        *parts,
        f"- parameters: {summary['trainable_parameters']:,} trainable of {summary['parameters']:,}",
        f"- selected checkpoint: {selected}",
        "",
        "The test split was never used for checkpoint selection.",
        "",
    ]
    return "\n".join(lines)


def evaluation_settings(summary: dict[str, Any]) -> str:
    """The settings that produced an evaluation's numbers, in words: metric grid, prompts, sampling."""
    settings = [f"metric grid: {summary.get('resolution', 'native')}"]
    if summary.get("prompts"):
        settings.append(f"prompts: {summary['prompts']}")
    if summary.get("sampling"):
        settings.append("sampling: " + ", ".join(f"{key}={value}" for key, value in summary["sampling"].items()))
    return "; ".join(settings)


def add_evaluation(card: str, data: str, split: str, summary: dict[str, Any]) -> str:
    """Append (or replace) the evaluation of ``split`` of ``data`` under the same settings in a model card."""
    title = f"### {split} split of `{data}` ({evaluation_settings(summary)})"
    rows = ["| metric | mean | std | n |", "|---|---|---|---|"]
    for metric in ("dice", "iou", "hd95"):
        values = summary[metric]
        rows.append(f"| {metric} | {values['mean']:.4f} | {values['std']:.4f} | {values['n']} |")
    section = "\n".join([title, "", *rows, ""])
    if EVALUATION_HEADING not in card:
        card = (
            card.rstrip("\n")
            + f"\n\n{EVALUATION_HEADING}\n\nHD95 in pixels on the metric grid (native: each image's own size).\n"
        )
    if title in card:
        start = card.index(title)
        end = card.find("\n### ", start + 1)
        card = card[:start] + section + ("" if end == -1 else card[end + 1 :])
    else:
        card = card.rstrip("\n") + "\n\n" + section
    return card
