"""The ``runs`` table: finished runs side by side as plain text, with their test metrics where one was evaluated."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from genmedseg.errors import DataError
from genmedseg.folders import EvaluationFolder, RunFolder
from genmedseg.report.common import read_json

HEADER = (
    "run",
    "model",
    "data",
    "size",
    "epochs",
    "best val",
    "test Dice",
    "test IoU",
    "test HD95",
    "parameters",
    "time",
)


def runs_table(run_dirs: Sequence[str | os.PathLike], evaluations: Sequence[str | os.PathLike] = ()) -> str:
    """Plain-text table of runs side by side, one line per run folder.

    Columns: run, model, data (folder name), input size, epochs (done/planned), best validation score (its metric
    named), test Dice / IoU / HD95, trainable parameters, training time. Test metrics come from the newest evaluation
    of the run's model on the ``test`` split of the run's own dataset, among those the run folder records (every
    ``genmedseg evaluate`` of its model records itself there, wherever it wrote) and the ``evaluations`` given
    (folders or ``summary.json`` files); "-" when there is none. A run folder without ``train_summary.json`` is
    listed as unfinished.
    """
    explicit = [_summary_path(Path(entry)) for entry in evaluations]
    lines = [HEADER]
    for run_dir in map(Path, run_dirs):
        run = RunFolder(run_dir)
        if not run.summary.is_file():
            lines.append((str(run_dir), "-", "-", "-", "unfinished", *("-",) * 6))
            continue
        summary = read_json(run.summary, "it is rewritten when training finishes (--resume)")
        test = _test_metrics(run, summary.get("data"), explicit, recorded_evaluations(run))
        best = summary.get("best_val") or {}
        parameters = summary.get("trainable_parameters")
        seconds = summary.get("train_seconds")
        lines.append(
            (
                str(run_dir),
                str(summary.get("model", "-")),
                Path(summary["data"]).name if summary.get("data") else "-",
                str(summary.get("image_size", "-")),
                f"{summary.get('epochs_done', '-')}/{summary.get('epochs', '-')}",
                "-" if best.get("value") is None else f"{best['metric']} {best['value']:.4f}",
                *(("-",) * 3 if test is None else (f"{test['dice']:.4f}", f"{test['iou']:.4f}", f"{test['hd95']:.1f}")),
                "-" if parameters is None else f"{parameters:,}",
                "-" if seconds is None else _duration(seconds),
            )
        )
    return _text_table(lines, right_aligned=set(range(3, len(HEADER))))


def recorded_evaluations(run: RunFolder) -> list[Path]:
    """The ``summary.json`` of every evaluation of this run's model that is still where ``run.json`` says."""
    if not run.record.is_file():
        return []
    try:
        folders = json.loads(run.record.read_text(encoding="utf-8")).get("evaluations", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [
        EvaluationFolder(Path(folder)).summary for folder in folders if EvaluationFolder(Path(folder)).summary.is_file()
    ]


def _summary_path(entry: Path) -> Path:
    path = EvaluationFolder(entry).summary if entry.is_dir() else entry
    if not path.is_file():
        raise DataError(
            f"{entry}: no evaluation here (expected {path}); give evaluation folders written by `genmedseg evaluate`"
        )
    return path


def _test_metrics(
    run: RunFolder, run_data: str | None, given: Iterable[Path], recorded: Iterable[Path]
) -> dict[str, Any] | None:
    """Mean test Dice, IoU and HD95 of the newest evaluation of this run's model on its own dataset, if any.

    ``recorded`` evaluations are of this run's model (even if the run folder moved since); ``given`` ones count
    only if the model they name lies inside the run folder.
    """
    run_root = run.path.resolve()
    recorded = {path.resolve() for path in recorded}
    found = []
    for path in dict.fromkeys([*(path.resolve() for path in given), *recorded]):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
            model, data = Path(summary["model"]), summary.get("data")
            means = {metric: float(summary[metric]["mean"]) for metric in ("dice", "iou", "hd95")}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a summary.json of something else: not an evaluation
        same_data = run_data is None or data is None or Path(data).resolve() == Path(run_data).resolve()
        same_model = path in recorded or model.resolve().is_relative_to(run_root)
        if summary.get("split") == "test" and same_data and same_model:
            found.append((path.stat().st_mtime, str(path), means))
    return max(found)[2] if found else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _text_table(lines: Sequence[Sequence[str]], right_aligned: set[int]) -> str:
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]

    def render(line: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if column in right_aligned else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])
