"""MedSegDiff on the CPU: training s/step, and per sampler the s/image, U-Net evaluations per image and accuracy.

Trains the CPU-size MedSegDiff (``configs/medsegdiff/glas.yaml``) at ``--image-size`` for ``--minutes`` with the
shared trainer, then segments the first ``--test-images`` test images one at a time (batch = one image, its
ensemble members in one batch) with every sampling setting of ``--settings`` (``sampler-steps-ensemble``;
``ddpm-1000`` on ``--ddpm-images`` only, it is 50x dearer than DDIM-50). Per setting: seconds per image, U-Net
evaluations and condition passes per image (counted), Dice / IoU / HD95 at each image's own size (genmedseg's
metrics, threshold 0.5), and the released code's threshold-averaged Dice (``scripts/segmentation_env.py``: each
probability map divided by its own maximum, Dice averaged over thresholds 0.1, 0.3, 0.5, 0.7, 0.9), labelled as the
released protocol.

    flock /tmp/genmedseg-heavy.lock python benchmarks/medsegdiff.py --data ../shared/data/glas --image-size 64 \\
        --minutes 3 --out benchmarks/results/medsegdiff-cpu

writes ``<out>.md``, ``<out>.json`` and ``<out>.png`` (Dice against s/image) and keeps the run under ``<out>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmedseg.config import RunConfig
from genmedseg.data import discover, read_image, read_mask
from genmedseg.engine.inference import load
from genmedseg.engine.training import fit
from genmedseg.metrics import segmentation_metrics
from genmedseg.models.registry import default_run_config

ROOT = Path(__file__).resolve().parents[1]
RELEASED_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_SETTINGS = "dpm-solver-20-1,dpm-solver-20-5,ddim-50-1,ddim-50-5,ddpm-1000-1"


def released_dice(probability: np.ndarray, truth: np.ndarray) -> float:
    """The released ``segmentation_env.py`` Dice of one image: the map divided by its own maximum, both binarised at
    each of 0.1 ... 0.9, ``(2|P∩G| + 1e-4) / (|P| + |G| + 1e-4)``, averaged over the thresholds."""
    normalised = probability / probability.max() if probability.max() > 0 else probability
    scores = []
    for threshold in RELEASED_THRESHOLDS:
        pred, gt = normalised > threshold, truth.astype(np.float32) > threshold
        scores.append((2 * (pred & gt).sum() + 1e-4) / (pred.sum() + gt.sum() + 1e-4))
    return float(np.mean(scores))


class Counter:
    """Counts the samples a module's ``forward`` sees (its calls weighted by batch size)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.forward, self.samples, self.calls = module.forward, 0, 0
        module.forward = self

    def __call__(self, first: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.samples += first.shape[0]
        self.calls += 1
        return self.forward(first, *args, **kwargs)


def parse_setting(text: str) -> dict[str, Any]:
    sampler, steps, ensemble = text.rsplit("-", 2)
    return {"sampler": sampler, "steps": int(steps), "ensemble": int(ensemble)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glas"))
    parser.add_argument("--config", default=str(ROOT / "configs" / "medsegdiff" / "glas.yaml"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--val-every", type=int, default=5)
    parser.add_argument("--test-images", type=int, default=6)
    parser.add_argument("--ddpm-images", type=int, default=2)
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated sampler-steps-ensemble")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared 2-core machine)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "medsegdiff-cpu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)

    config = RunConfig.from_yaml(args.config, base=default_run_config("medsegdiff"))
    config.override("data", root=args.data, image_size=args.image_size)
    config.override(
        "train",
        epochs=100_000,
        max_minutes=args.minutes,
        batch_size=args.batch_size,
        val_every=args.val_every,
        preview_every=100_000,
        accelerator="cpu",
    )
    summary = fit(config, run_dir, enable_progress_bar=False)

    segmenter = load(run_dir, device="cpu")
    method = segmenter.method
    index = discover(args.data)
    names = sorted(index.splits["test"])[: args.test_images]
    images = {name: read_image(index.pairs[name][0]) for name in names}
    truths = {name: read_mask(index.pairs[name][1]) for name in names}
    unet, condition = Counter(method.unet), Counter(method.condition)

    rows = []
    for text in args.settings.split(","):
        setting = parse_setting(text)
        subset = names[: args.ddpm_images] if setting["sampler"] == "ddpm" and setting["steps"] > 100 else names
        unet.samples = unet.calls = condition.samples = 0
        seconds, metrics, released = 0.0, [], []
        for name in subset:
            start = time.perf_counter()
            maps = segmenter.predict_batch([images[name]], keys=[name], sampling={**setting, "seed": 0})[0]
            seconds += time.perf_counter() - start
            metrics.append(segmentation_metrics(maps["probability"] > 0.5, truths[name]))
            released.append(released_dice(maps["probability"], truths[name]))
        rows.append(
            {
                "setting": f"{setting['sampler']}-{setting['steps']} x{setting['ensemble']}",
                **setting,
                "images": len(subset),
                "seconds_per_image": seconds / len(subset),
                "unet_evaluations_per_image": unet.samples / len(subset),
                "unet_calls_per_image": unet.calls / len(subset),
                "condition_passes_per_image": condition.samples / len(subset),
                "dice": float(np.mean([m["dice"] for m in metrics])),
                "iou": float(np.mean([m["iou"] for m in metrics])),
                "hd95": float(np.mean([m["hd95"] for m in metrics])),
                "released_threshold_averaged_dice": float(np.mean(released)),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        # After every setting, so that a timeout keeps what was measured.
        write_results(out, args, summary, config, method.num_parameters(), names, rows)


def write_results(
    out: Path,
    args: argparse.Namespace,
    summary: dict[str, Any],
    config: RunConfig,
    parameters: int,
    names: list[str],
    rows: list[dict[str, Any]],
) -> None:
    record = {
        "command": "python benchmarks/medsegdiff.py "
        + " ".join(f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items()),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} when written (the 2 cores are shared)",
        "training": {
            "image_size": args.image_size,
            "steps": summary["steps"],
            "epochs": summary["epochs_done"],
            "train_seconds": summary["train_seconds"],
            "seconds_per_step": summary["train_seconds"] / max(1, summary["steps"]),
            "best_val_dice": summary["best_val"]["value"],
            "parameters": parameters,
            "options": config.model.options,
        },
        "test_images": names,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(Path(f"{out}.md"), record)
    write_plot(Path(f"{out}.png"), rows)


def write_markdown(path: Path, record: dict[str, Any]) -> None:
    training = record["training"]
    lines = [
        f"# MedSegDiff on the CPU: GlaS at {training['image_size']}²",
        "",
        f"Machine: {record['machine']}. Command: `{record['command']}` (under `flock /tmp/genmedseg-heavy.lock`).",
        "",
        f"Training (CPU-size model, {training['parameters']:,} parameters, batch 8, constant lr 1e-4, EMA 0.9999 "
        f"with warm-up): {training['steps']} steps in {training['train_seconds']:.0f} s of training wall time "
        f"(validation included) = "
        f"**{training['seconds_per_step']:.2f} s/step**; best validation Dice (DDIM-10, 1 member) "
        f"{training['best_val_dice']:.4f}. A few minutes of training: the accuracy columns show what this budget "
        "gives, not what the method reaches after the release's ~100k steps.",
        "",
        "Inference: one image per call (its ensemble members as one batch), each image's own size for the metrics. "
        "U-Net evaluations are counted (samples through the U-Net per image), and so are condition passes. "
        "`released Dice` is the original's threshold-averaged protocol (each map divided by its maximum, thresholds "
        "0.1-0.9), computed from the same probability maps. A row on fewer images (DDPM-1000) uses the first ones of "
        "the same list, so its accuracy compares only roughly with the others'.",
        "",
        "| setting | images | s/image | U-Net evals/image | condition passes/image | Dice | IoU | HD95 px "
        "| released Dice |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        lines.append(
            f"| {row['setting']} | {row['images']} | {row['seconds_per_image']:.2f} | "
            f"{row['unet_evaluations_per_image']:.0f} | {row['condition_passes_per_image']:.0f} | {row['dice']:.4f} | "
            f"{row['iou']:.4f} | {row['hd95']:.1f} | {row['released_threshold_averaged_dice']:.4f} |"
        )
    by_setting = {row["setting"]: row for row in record["rows"]}
    slow, fast = by_setting.get("ddpm-1000 x1"), by_setting.get("dpm-solver-20 x5")
    if slow and fast:
        lines += [
            "",
            f"DPM-Solver-20 x5 vs DDPM-1000 x1: {slow['seconds_per_image'] / fast['seconds_per_image']:.1f}x faster "
            f"per image ({fast['unet_evaluations_per_image']:.0f} vs {slow['unet_evaluations_per_image']:.0f} U-Net "
            "evaluations).",
        ]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for row in rows:
        axes.scatter(row["seconds_per_image"], row["dice"])
        axes.annotate(row["setting"], (row["seconds_per_image"], row["dice"]), fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("s / image (CPU)")
    axes.set_ylabel("Dice (test subset)")
    axes.set_title("MedSegDiff: Dice against sampling cost")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
