"""Accuracy for a fixed compute budget: train each model variant on a dataset, evaluate the test split.

Every variant gets the same wall-clock training budget on the same machine. The number of epochs is chosen from a
short timing of the variant's own training step so that its warm-up + cosine schedule ends inside the budget
(Lightning's ``max_time`` is a hard cap on top). Checkpoints are selected on the validation split; the test split
is touched once, at the end. Each variant runs in its own process, so peak memory is its own.

    python benchmarks/accuracy.py --data ../shared/data/glas --image-size 128 --minutes 6 \\
        --variants wave-gms,wave-gms[sft],wave-gms[tiny-vae],wave-gms[tiny-vae+sft],unet \\
        --out benchmarks/results/accuracy-glas-128

writes ``<out>.csv`` and ``<out>.md`` (and keeps the runs and evaluations under ``<out>/``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from genmedseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from genmedseg.data import discover, read_image
from genmedseg.engine.inference import evaluate, load
from genmedseg.engine.training import fit
from genmedseg.models.registry import create_model
from variants import NAMES, resolve

COLUMNS = ("variant", "data", "image_size", "trainable_parameters", "epochs", "steps", "train_seconds",
           "seconds_per_step", "best_val_dice", "test_dice", "test_dice_std", "test_iou", "test_hd95", "n_test",
           "inference_images_per_second", "peak_rss_mb")


def seconds_per_step(model_name: str, options: dict, vae: str | None, image_size: int, batch_size: int) -> float:
    """Median time of a few optimiser steps on random data of the benchmark's shape (after one warm-up step)."""
    torch.manual_seed(0)
    method = create_model(model_name, vae=vae, **options).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)
    batch = {
        "image": torch.rand(batch_size, 3, image_size, image_size).contiguous(memory_format=torch.channels_last),
        "mask": (torch.rand(batch_size, 1, image_size, image_size) > 0.5).float(),
    }
    times = []
    for _ in range(3):
        started = time.perf_counter()
        method.training_loss(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[0]


def inference_speed(run_dir: Path, data: str, split: str, batch_size: int = 12) -> float:
    """Images per second of ``predict_proba`` at the model's input size (images already in memory)."""
    segmenter = load(run_dir)
    index = discover(data)
    images = [read_image(index.pairs[name][0]) for name in index.splits[split][:batch_size]]
    segmenter.predict_proba_batch(images)
    started = time.perf_counter()
    segmenter.predict_proba_batch(images)
    return len(images) / (time.perf_counter() - started)


def run_variant(variant: str, args: argparse.Namespace, folder: Path) -> dict:
    """Train, evaluate and time one variant; returns its row."""
    model_name, options = resolve(variant)
    vae = args.vae if model_name != "unet" else None
    index = discover(args.data, val_fraction=0.1, seed=0)
    steps_per_epoch = max(1, len(index.splits["train"]) // args.batch_size)
    step = seconds_per_step(model_name, options, vae, args.image_size, args.batch_size)
    # 10% for validation passes and data loading.
    epochs = max(1, int(args.minutes * 60 / (1.1 * step * steps_per_epoch)))
    config = RunConfig(
        data=DataConfig(root=args.data, image_size=args.image_size),
        model=ModelConfig(name=model_name, vae=vae, options=options),
        train=TrainConfig(epochs=epochs, batch_size=args.batch_size, warmup_epochs=max(1, epochs // 20),
                          accelerator="cpu", max_minutes=args.minutes * 1.05),
    )
    run_dir = folder / variant
    summary = fit(config, run_dir, enable_progress_bar=False)
    results = evaluate(run_dir, args.data, folder / f"{variant}-evaluation", split="test")
    return {
        "variant": variant,
        "data": Path(args.data).name,
        "image_size": args.image_size,
        "trainable_parameters": summary["trainable_parameters"],
        "epochs": summary["epochs_done"],
        "steps": summary["steps"],
        "train_seconds": round(summary["train_seconds"], 1),
        "seconds_per_step": round(summary["train_seconds"] / max(1, summary["steps"]), 3),
        "best_val_dice": round(summary["best_val_dice"], 4),
        "test_dice": round(results["dice"]["mean"], 4),
        "test_dice_std": round(results["dice"]["std"], 4),
        "test_iou": round(results["iou"]["mean"], 4),
        "test_hd95": round(results["hd95"]["mean"], 2),
        "n_test": results["dice"]["n"],
        "inference_images_per_second": round(inference_speed(run_dir, args.data, "test"), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def write_tables(rows: list[dict], out: Path, args: argparse.Namespace) -> None:
    with out.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"# Accuracy for a fixed budget: {Path(args.data).name} at {args.image_size}x{args.image_size}",
        "",
        f"{args.minutes:g} min of training per variant, batch {args.batch_size}, on {machine()}.",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        "| variant | trainable params | epochs (steps) | s/step | best val Dice | test Dice | test IoU | test HD95 px "
        "| infer img/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['trainable_parameters']:,} | {r['epochs']} ({r['steps']}) | {r['seconds_per_step']} "
            f"| {r['best_val_dice']} | {r['test_dice']} ± {r['test_dice_std']} | {r['test_iou']} | {r['test_hd95']} "
            f"| {r['inference_images_per_second']} | {r['peak_rss_mb']:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--variants", default="wave-gms,unet", help=f"comma-separated, from {', '.join(NAMES)}")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per variant")
    parser.add_argument("--vae", default=None, help="frozen VAE (default: GENMEDSEG_VAE)")
    parser.add_argument("--out", required=True, help="output prefix (<out>.csv, <out>.md, <out>/ for runs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out, folder = Path(args.out), Path(args.out)
    if args.one:
        print(json.dumps(run_variant(args.one, args, folder)))
        return
    # Rows of earlier runs into the same table are kept unless their variant is run again.
    variants = args.variants.split(",")
    rows = []
    if out.with_suffix(".csv").is_file():
        with out.with_suffix(".csv").open() as handle:
            rows = [{key: _number(value) for key, value in row.items()}
                    for row in csv.DictReader(handle) if row["variant"] not in variants]
    for variant in variants:
        resolve(variant)
        # A process per variant, so that its peak memory is its own.
        result = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", variant],
                                capture_output=True, text=True, check=False)
        if result.returncode:
            print(f"{variant} failed:\n{result.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
        write_tables(rows, out, args)


if __name__ == "__main__":
    main()
