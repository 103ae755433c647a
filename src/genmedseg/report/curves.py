"""Training curves: ``curves.png`` of a run folder from its CSV logs, resumed sessions merged."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genmedseg.atomic import atomic_write
from genmedseg.errors import DataError
from genmedseg.folders import RunFolder
from genmedseg.report.common import BLUE, GREEN, ORANGE, PURPLE, SKY_BLUE, VERMILLION, YELLOW, new_figure, png_bytes

_VERSION_FOLDER = re.compile(r"version_(\d+)$")


@dataclass
class TrainingLog:
    """Per-epoch values from a run's CSV logs (``logs/version_*/metrics.csv``), resumed sessions merged.

    ``values[epoch][column]`` is the last non-empty value of that column in that epoch; when several sessions logged
    the same epoch, the later session's epoch replaces the earlier one entirely. ``resumed_at`` holds the first
    epoch of every session after the first.
    """

    values: dict[int, dict[str, float]] = field(default_factory=dict)
    resumed_at: list[int] = field(default_factory=list)


def read_training_log(run_dir: str | os.PathLike) -> TrainingLog:
    """Merge the Lightning CSV logs of ``run_dir``, in version order (``version_10`` after ``version_9``)."""
    log = TrainingLog()
    for index, path in enumerate(_log_files(Path(run_dir))):
        session = _read_log_file(path)
        if not session:
            continue
        if index and log.values:
            log.resumed_at.append(min(session))
        log.values.update(session)
    log.values = dict(sorted(log.values.items()))
    return log


def _log_files(run_dir: Path) -> list[Path]:
    folders = []
    for folder in RunFolder(run_dir).logs.glob("version_*"):
        match = _VERSION_FOLDER.match(folder.name)
        if match and (folder / "metrics.csv").is_file():
            folders.append((int(match.group(1)), folder / "metrics.csv"))
    return [path for _, path in sorted(folders)]


def _read_log_file(path: Path) -> dict[int, dict[str, float]]:
    epochs: dict[int, dict[str, float]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            epoch_text = (row.get("epoch") or "").strip()
            if not epoch_text:
                continue
            try:
                epoch = int(float(epoch_text))
                values = {
                    key: float(text)
                    for key, text in row.items()
                    if key not in ("epoch", "step") and text is not None and text.strip()
                }
            except (TypeError, ValueError) as error:
                raise DataError(f"{path}, line {line}: not a number ({error}); the log is damaged") from None
            epochs.setdefault(epoch, {}).update(values)
    return epochs


def plot_training_curves(
    run_dir: str | os.PathLike, monitor: tuple[str, str] = ("dice", "max"), dpi: int = 100
) -> Path | None:
    """Write ``run_dir/curves.png``: loss parts and the monitored validation value per epoch (the best one marked;
    ``monitor`` is the method's ``(name, "max" | "min")``); None if the run has no logs yet.

    The loss axis is logarithmic when the plotted values span more than a factor of ten; dotted lines mark where a
    resumed session started.
    """
    from matplotlib.ticker import MaxNLocator

    run = RunFolder(Path(run_dir))
    log = read_training_log(run.path)
    if not log.values:
        return None
    figure = new_figure(11, 4)
    loss_axes, validation_axes = figure.subplots(1, 2)
    _plot_losses(loss_axes, log.values)
    _plot_validation(validation_axes, log.values, *monitor)
    for axes in (loss_axes, validation_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        for number, epoch in enumerate(log.resumed_at):
            axes.axvline(epoch - 0.5, color="grey", linestyle=":", label="resumed" if number == 0 else None)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(
                frameon=False, loc="lower right" if monitor[1] == "max" and axes is validation_axes else "upper right"
            )
    png = png_bytes(figure, dpi)
    atomic_write(run.curves, lambda temporary: temporary.write_bytes(png))
    return run.curves


def _plot_losses(axes: Any, values: Mapping[int, Mapping[str, float]], log_range: float = 10.0) -> None:
    columns = sorted(
        {key for row in values.values() for key in row if key.startswith("train_")},
        key=lambda key: (key != "train_loss", key),
    )
    colours = (BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY_BLUE, YELLOW)
    plotted = []
    for number, column in enumerate(columns):
        epochs = [epoch for epoch, row in values.items() if column in row]
        losses = [values[epoch][column] for epoch in epochs]
        plotted.extend(losses)
        axes.plot(
            epochs,
            losses,
            color=colours[number % len(colours)],
            linewidth=2.5 if column == "train_loss" else 1.5,
            label=column.removeprefix("train_"),
        )
    if plotted and min(plotted) > 0 and max(plotted) > log_range * min(plotted):
        axes.set_yscale("log")
    axes.set_title("training loss and its parts")


def _plot_validation(axes: Any, values: Mapping[int, Mapping[str, float]], metric: str, mode: str) -> None:
    column, label = f"val_{metric}", f"validation {'Dice' if metric == 'dice' else metric}"
    epochs = [epoch for epoch, row in values.items() if column in row]
    axes.set_title(label)
    if metric == "dice":
        axes.set_ylim(0.0, 1.0)
    if not epochs:
        axes.text(0.5, 0.5, f"no {label} logged", ha="center", va="center", transform=axes.transAxes)
        return
    scores = [values[epoch][column] for epoch in epochs]
    axes.plot(epochs, scores, color=BLUE, marker="o", markersize=3, label=label)
    best = int(np.argmax(scores) if mode == "max" else np.argmin(scores))
    axes.plot(
        [epochs[best]],
        [scores[best]],
        linestyle="none",
        marker="*",
        markersize=14,
        color=VERMILLION,
        label=f"best {scores[best]:.4f} (epoch {epochs[best]})",
    )
