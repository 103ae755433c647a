"""Accuracy at equal training: every variant trains the same number of epochs, over several seeds.

For each variant and seed: train (checkpoints selected on the validation split), record the validation score of
every epoch against optimiser steps and wall time, evaluate the test split once at native resolution with the
variant's evaluation settings (prompts, sampling), time inference. Each (variant, seed) runs in its own process, so
its peak memory is its own. The table gives means over seeds with 95 % t-intervals; the figure draws validation
Dice against steps and against wall time. Epoch counts are equal, not wall-clock budgets: wall time swings with the
machine's load, steps do not.

    python benchmarks/accuracy.py --data ../shared/data/glas --image-size 128 --epochs 10 --seeds 0,1,2 \\
        --variants wave-gms,unet --out benchmarks/results/accuracy-glas-128

writes ``<out>.csv`` (one row per variant and seed), ``<out>.curves.json``, ``<out>.md`` and ``<out>.png``, and keeps
the runs and evaluations under ``<out>/``. Rows of earlier runs into the same table are kept unless rerun;
``--resume`` runs only the (variant, seed) pairs that have no row yet, after an interrupted run.
``--jobs 2 --threads 1`` runs two (variant, seed) processes at once, one torch thread each.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from scipy import stats

from genmedseg.data import discover, read_image
from genmedseg.engine.inference import evaluate, load
from genmedseg.engine.training import fit
from genmedseg.models.registry import default_run_config
from genmedseg.prompts import prompt_source
from variants import NAMES, resolve_variant

COLUMNS = (
    "variant",
    "seed",
    "data",
    "image_size",
    "trainable_parameters",
    "parameters",
    "epochs",
    "steps",
    "train_seconds",
    "seconds_per_step",
    "best_val",
    "test_dice",
    "test_iou",
    "test_hd95",
    "n_test",
    "inference_seconds_per_image",
    "peak_rss_mb",
    "peak_cuda_mb",
)


class CurveRecorder(L.Callback):
    """Validation score, optimiser steps and training wall time (validation excluded) after every validation."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.training = 0.0
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.training += time.perf_counter() - self._started

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(pl_module.monitored)
        if value is not None:
            self.rows.append(
                {
                    "epoch": trainer.current_epoch + 1,
                    "step": trainer.global_step,
                    "seconds": round(self.training + time.perf_counter() - self._started, 2),
                    "value": float(value),
                }
            )


def inference_seconds(run_dir: Path, data: str, device: str, sampling: dict[str, Any], count: int = 4) -> float:
    """Seconds per image of the model on ``count`` test images at once (in memory), after one warm-up call."""
    segmenter = load(run_dir, device)
    index = discover(data)
    images = [read_image(index.pairs[name][0]) for name in index.splits["test"][:count]]
    segmenter.predict_batch(images[:1], sampling=sampling)
    started = time.perf_counter()
    segmenter.predict_batch(images, sampling=sampling)
    return (time.perf_counter() - started) / len(images)


def run_one(variant_name: str, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Train, evaluate and time one variant with one seed; returns its row (the curve under ``curve``)."""
    variant = resolve_variant(variant_name)
    config = default_run_config(variant.model)
    config.override("data", root=args.data, image_size=args.image_size, num_workers=args.num_workers)
    if args.extra_data:
        config.override("data", extra_root=args.extra_data, extra_weight=args.extra_weight)
    config.override(
        "model",
        pretrained={"vae": args.vae} if args.vae and "vae" in _parts(variant.model) else {},
        options=variant.options,
    )
    config.override(
        "train",
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        accelerator=args.accelerator,
        precision=args.precision,
        preview_every=0,
        **variant.train,
    )
    run_dir = folder / f"{variant_name}-s{seed}"
    # A rerun replaces the row, so it starts afresh: a resumed run's wall-time curve would have a gap.
    for old in (run_dir, folder / f"{variant_name}-s{seed}-test"):
        shutil.rmtree(old, ignore_errors=True)
    recorder = CurveRecorder()
    device = "cuda" if args.accelerator == "gpu" else "cpu"  # evaluation and timing run where training ran
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = fit(config, run_dir, callbacks=[recorder], enable_progress_bar=False)
    prompts = prompt_source(variant.prompts) if variant.prompts else None
    results = evaluate(
        run_dir,
        args.data,
        folder / f"{variant_name}-s{seed}-test",
        split="test",
        prompts=prompts,
        sampling=variant.sampling,
        device=device,
    )
    return {
        "variant": variant_name,
        "seed": seed,
        "data": Path(args.data).name,
        "image_size": args.image_size,
        "trainable_parameters": summary["trainable_parameters"],
        "parameters": summary["parameters"],
        "epochs": summary["epochs_done"],
        "steps": summary["steps"],
        "train_seconds": round(recorder.training, 1),
        "seconds_per_step": round(recorder.training / max(1, summary["steps"]), 3),
        "best_val": round(summary["best_val"]["value"], 4),
        "test_dice": round(results["dice"]["mean"], 4),
        "test_iou": round(results["iou"]["mean"], 4),
        "test_hd95": round(results["hd95"]["mean"], 2),
        "n_test": results["dice"]["n"],
        "inference_seconds_per_image": round(inference_seconds(run_dir, args.data, device, variant.sampling), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else "",
        "curve": recorder.rows,
    }


def _parts(model: str) -> tuple[str, ...]:
    from genmedseg.models.registry import get_model_class

    return tuple(get_model_class(model).pretrained_parts)


def interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided t confidence interval (0 for a single value)."""
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        return float(array.mean()), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size)
    return float(array.mean()), float(half)


def threads_per_run(args: argparse.Namespace) -> int:
    """Torch threads of each training process: ``--threads``, else the cores shared among ``--jobs``."""
    return args.threads or max(1, (os.cpu_count() or 1) // args.jobs)


def machine(args: argparse.Namespace) -> str:
    """The GPU, or the CPU model and torch threads per run; and the torch version."""
    if args.accelerator == "gpu":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {threads_per_run(args)} threads, torch {torch.__version__}"


def write_tables(rows: list[dict], curves: dict[str, list], out: Path, args: argparse.Namespace) -> None:
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({key: row.get(key, "") for key in COLUMNS} for row in rows)
    out.with_suffix(".curves.json").write_text(json.dumps(curves, indent=1) + "\n")
    lines = [
        f"# Accuracy at equal training: {Path(args.data).name} at {args.image_size}x{args.image_size}",
        "",
        f"{args.epochs} epochs per run, batch {args.batch_size}, precision {args.precision}, seeds {args.seeds}, on"
        f" {machine(args)} per run, {args.jobs} run(s) at once.",
        "Means over seeds with 95 % t-intervals; test metrics at native resolution, checkpoint selected on validation.",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        "| variant | trainable / total params | seeds | steps | train s/step | best val | test Dice | test IoU "
        "| test HD95 px | infer s/image | peak RSS MB (CUDA MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    # The order of --variants, then the variants of earlier runs kept in the table.
    variants = list(dict.fromkeys([*args.variants.split(","), *(row["variant"] for row in rows)]))
    variants = [name for name in variants if any(row["variant"] == name for row in rows)]
    for name in variants:
        group = [row for row in rows if row["variant"] == name]

        def cell(key: str, digits: int, group: list[dict] = group) -> str:
            mean, half = interval([row[key] for row in group])
            return f"{mean:.{digits}f} ± {half:.{digits}f}" if len(group) > 1 else f"{mean:.{digits}f}"

        first = group[0]
        lines.append(
            f"| {name} | {first['trainable_parameters']:,} / {first['parameters']:,} | {len(group)} "
            f"| {first['steps']} | {cell('seconds_per_step', 3)} | {cell('best_val', 4)} | {cell('test_dice', 4)} "
            f"| {cell('test_iou', 4)} | {cell('test_hd95', 1)} | {cell('inference_seconds_per_image', 3)} "
            f"| {peak_memory(group)} |"
        )
    lines += ["", *curve_table(curves, variants)]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot_curves(curves, variants, out.with_suffix(".png"), f"{Path(args.data).name} {args.image_size}²")


def peak_memory(group: list[dict]) -> str:
    """Largest peak RSS of the runs, with their largest CUDA peak where they trained on a GPU."""
    rss = f"{max(row['peak_rss_mb'] for row in group):.0f}"
    cuda = [row["peak_cuda_mb"] for row in group if row.get("peak_cuda_mb") not in (None, "")]
    return f"{rss} ({max(cuda):.0f})" if cuda else rss


def curve_table(curves: dict[str, list], variants: list[str], columns: int = 10) -> list[str]:
    """Markdown lines: mean validation score (95 % interval) and training seconds after chosen epochs, per variant."""
    epochs = sorted({point["epoch"] for curve in curves.values() for point in curve})
    if len(epochs) > columns:
        epochs = [epochs[round(i * (len(epochs) - 1) / (columns - 1))] for i in range(columns)]
    steps = {point["epoch"]: point["step"] for curve in curves.values() for point in curve}
    lines = [
        "Validation score against optimiser steps (mean over seeds ± 95 % interval; mean training seconds below).",
        "Where the validation split is carved with the seed (no `val` list in the split file), the intervals include",
        "the split's variation: compare variants seed by seed in the curves file.",
        "",
        "| variant | " + " | ".join(f"epoch {epoch} ({steps[epoch]} steps)" for epoch in epochs) + " |",
        "|---|" + "---|" * len(epochs),
    ]
    for name in variants:
        runs = [curve for key, curve in curves.items() if variant_of(key) == name]
        cells = []
        for epoch in epochs:
            points = [point for curve in runs for point in curve if point["epoch"] == epoch]
            if not points:
                cells.append("")
                continue
            mean, half = interval([point["value"] for point in points])
            seconds = np.mean([point["seconds"] for point in points])
            spread = f" ± {half:.3f}" if len(points) > 1 else ""
            cells.append(f"{mean:.3f}{spread}<br>{seconds:.0f} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def variant_of(curve_key: str) -> str:
    """``"wave-gms[sft]-s2"`` -> ``"wave-gms[sft]"``."""
    return curve_key.rsplit("-s", 1)[0]


def plot_curves(curves: dict[str, list], variants: list[str], path: Path, title: str) -> None:
    """Validation score of every run against optimiser steps (left) and training seconds (right), one colour and one
    legend entry per variant, in the order of ``variants`` (that of the tables)."""
    from genmedseg.report.common import BLUE, GREEN, ORANGE, PURPLE, SKY_BLUE, VERMILLION, YELLOW, new_figure, png_bytes

    colours = (BLUE, VERMILLION, GREEN, ORANGE, PURPLE, SKY_BLUE, YELLOW)
    figure = new_figure(11, 4)
    step_axes, time_axes = figure.subplots(1, 2, sharey=True)
    for index, variant in enumerate(variants):
        runs = [rows for key, rows in curves.items() if variant_of(key) == variant]
        for run, rows in enumerate(runs):
            for axes, x in ((step_axes, "step"), (time_axes, "seconds")):
                axes.plot(
                    [row[x] for row in rows],
                    [row["value"] for row in rows],
                    color=colours[index % len(colours)],
                    alpha=0.8,
                    marker="o",
                    markersize=2,
                    label=variant if axes is step_axes and run == 0 else None,
                )
    step_axes.set_xlabel("optimiser steps")
    time_axes.set_xlabel("training seconds")
    step_axes.set_ylabel("validation score")
    for axes in (step_axes, time_axes):
        axes.grid(alpha=0.3)
    step_axes.legend(frameon=False)
    figure.suptitle(title)
    png = png_bytes(figure, 100)
    path.write_bytes(png)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--variants", default="wave-gms,unet", help=f"comma-separated, from {', '.join(NAMES)}")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of every run")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (weights, shuffling, augmentation)")
    parser.add_argument("--precision", default="32-true", help="train --precision (32-true or bf16-mixed)")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"), help="where to train and test")
    parser.add_argument("--num-workers", type=int, default=0, help="data loading processes (train --num-workers)")
    parser.add_argument("--vae", default=None, help="frozen VAE (default: GENMEDSEG_VAE)")
    parser.add_argument("--extra-data", default=None, help="pairs that join the training split (train --extra-data)")
    parser.add_argument("--extra-weight", type=float, default=1.0, help="their sampling weight (train --extra-weight)")
    parser.add_argument("--out", required=True, help="output prefix (<out>.csv, .md, .png, .curves.json, <out>/)")
    parser.add_argument("--jobs", type=int, default=1, help="(variant, seed) runs at once (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the (variant, seed) rows already in <out>.csv and run only the rest"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no CUDA GPU here (a CPU build of torch, or no driver)")
    out = Path(args.out)
    if args.one:
        torch.set_num_threads(threads_per_run(args))
        variant, seed = args.one.rsplit(":", 1)
        print("ROW " + json.dumps(run_one(variant, int(seed), args, out)))
        return
    jobs = [(variant, int(seed)) for variant in args.variants.split(",") for seed in args.seeds.split(",")]
    for variant, _ in jobs:
        resolve_variant(variant)
    rows, curves = [], {}
    if out.with_suffix(".csv").is_file():
        with out.with_suffix(".csv").open() as handle:
            rows = [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]
        if args.resume:
            done = {(row["variant"], row["seed"]) for row in rows}
            jobs = [job for job in jobs if job not in done]
        rows = [row for row in rows if (row["variant"], row["seed"]) not in jobs]
        kept = {f"{row['variant']}-s{row['seed']}" for row in rows}
        if out.with_suffix(".curves.json").is_file():
            curves = {
                key: value
                for key, value in json.loads(out.with_suffix(".curves.json").read_text()).items()
                if key in kept
            }

    def run_process(variant: str, seed: int) -> subprocess.CompletedProcess:
        # A process per run, so that its peak memory is its own.
        command = [sys.executable, __file__, *sys.argv[1:], "--one", f"{variant}:{seed}"]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_process, variant, seed): (variant, seed) for variant, seed in jobs}
        for future in as_completed(futures):
            (variant, seed), result = futures[future], future.result()
            line = next((line for line in reversed(result.stdout.splitlines()) if line.startswith("ROW ")), None)
            if result.returncode or line is None:
                print(f"{variant} seed {seed} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
                continue
            row = json.loads(line[4:])
            curves[f"{variant}-s{seed}"] = row.pop("curve")
            rows.append(row)
            print(row, flush=True)
            write_tables(rows, curves, out, args)
    if rows and not jobs:  # nothing left to run: the tables are rewritten from the rows kept
        write_tables(rows, curves, out, args)


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


if __name__ == "__main__":
    main()
