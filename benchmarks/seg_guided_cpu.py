"""A CPU-budget run of segmentation-guided diffusion, end to end: does a briefly trained generator follow its masks?

Trains a U-Net segmenter and the CPU-size generator (``configs/seg-guided-diffusion/glas-cpu.yaml``) on a dataset at
a small size for a few minutes each, generates one image per test mask, and measures faithfulness and realism with
``genmedseg evaluate-synthetic``. Writes ``OUT.md`` and ``OUT.json`` (and the generator's last preview grid as
``OUT-preview.png``). Every number in the table is measured by this script.

    python benchmarks/seg_guided_cpu.py --data ../shared/data/glas --out benchmarks/results/seg-guided-cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from genmedseg.cli import main

REPOSITORY = Path(__file__).resolve().parents[1]


def run(args: list[str]) -> float:
    """Run one CLI command; its wall time in seconds."""
    started = time.perf_counter()
    if main(args) != 0:
        raise SystemExit(f"failed: genmedseg {' '.join(args)}")
    return time.perf_counter() - started


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "glas"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--generator-minutes", type=float, default=4.5)
    parser.add_argument("--generator-epochs", type=int, default=60)
    parser.add_argument("--generator-lr", type=float, default=5e-4)
    parser.add_argument("--segmenter-minutes", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of generation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae", default=None, help="tiny-VAE encoder of the realism distance (GENMEDSEG_VAE)")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "results" / "seg-guided-cpu"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="seg-guided-cpu-"))
    size = str(args.image_size)
    started = time.perf_counter()
    data = work / "data"
    if not data.is_dir():
        resized_copy(Path(args.data), data, args.image_size)
    times = {"resize_copy_s": time.perf_counter() - started}
    common = ["--accelerator", "cpu", "--image-size", size, "--threads", str(args.threads)]
    segmenter, generator, generated = work / "unet", work / "generator", work / "generated"
    # A stage whose result is already in --work is kept (so that a run cut by the 10-minute limit continues).
    budget = ["--epochs", "1000", "--batch-size", "8", "--lr", "1e-3", "--max-minutes", str(args.segmenter_minutes)]
    if not (segmenter / "train_summary.json").is_file():
        run(["train", "--model", "unet", "--data", str(data), "--out", str(segmenter), *common, *budget])
    config = REPOSITORY / "configs" / "seg-guided-diffusion" / "glas-cpu.yaml"
    budget = ["--epochs", str(args.generator_epochs), "--lr", str(args.generator_lr)]
    budget += ["--max-minutes", str(args.generator_minutes), "--preview-every", "5"]
    if not (generator / "train_summary.json").is_file():
        run(["train", "--config", str(config), "--data", str(data), "--out", str(generator), *common, *budget])
    for name, folder in (("segmenter", segmenter), ("generator", generator)):
        times[f"{name}_train_s"] = json.loads((folder / "train_summary.json").read_text())["train_seconds"]
    sampling = ["--sample", "sampler=ddim", "--sample", f"steps={args.steps}", "--sample", "seed=0"]
    times_file = work / "times.json"
    if not (generated / "provenance.json").is_file():
        times["generate_s"] = run(
            ["generate", str(generator), "--masks", str(data), "--split", "test", "--out", str(generated), *sampling]
        )
        times_file.write_text(json.dumps(times))
    times["generate_s"] = json.loads(times_file.read_text())["generate_s"]
    quality = work / "quality"
    evaluate = ["evaluate-synthetic", str(segmenter), str(generated), "--out", str(quality)]
    times["evaluate_synthetic_s"] = run(evaluate + (["--vae", args.vae] if args.vae else []))

    summary = json.loads((quality / "summary.json").read_text())
    gen_summary = json.loads((generator / "train_summary.json").read_text())
    seg_summary = json.loads((segmenter / "train_summary.json").read_text())
    previews = sorted((generator / "previews").glob("*.png"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if previews:
        shutil.copy(previews[-1], out.with_name(out.name + "-preview.png"))
    record = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}",
        "arguments": vars(args),
        "times": times,
        "generator": {k: gen_summary[k] for k in ("epochs_done", "steps", "trainable_parameters", "best_val")},
        "segmenter": {k: seg_summary[k] for k in ("epochs_done", "steps", "trainable_parameters", "best_val")},
        "quality": summary,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(record))
    print(render(record))


def resized_copy(source: Path, target: Path, size: int) -> Path:
    """The dataset at ``size`` x ``size`` (images antialiased bicubic, masks nearest) with its split file, so that
    a CPU epoch is not spent decoding full-size images; the pipeline resizes to the input size anyway."""
    from PIL import Image

    from genmedseg.data import discover

    index = discover(source)
    (target / "images").mkdir(parents=True, exist_ok=True)
    (target / "masks").mkdir(exist_ok=True)
    for name, (image, mask) in index.pairs.items():
        Image.open(image).convert("RGB").resize((size, size), Image.BICUBIC).save(target / "images" / f"{name}.png")
        Image.open(mask).convert("L").resize((size, size), Image.NEAREST).save(target / "masks" / f"{name}.png")
    for split_file in [*source.glob("*_train_test_names.pkl"), *source.glob("split.csv")]:
        shutil.copy(split_file, target / split_file.name)
    return target


def render(record: dict) -> str:
    quality, args = record["quality"], record["arguments"]
    faith, realism = quality["faithfulness"], quality["realism"]
    synthetic, real = faith["synthetic_vs_conditioning_mask"]["dice"], faith["real_vs_its_mask"]["dice"]
    gen, seg, times = record["generator"], record["segmenter"], record["times"]
    grid = quality["grid"]
    return "\n".join(
        [
            f"# Segmentation-guided diffusion on a CPU budget: {Path(args['data']).name} at {args['image_size']}²",
            "",
            f"{record['machine']}. Command: `python benchmarks/seg_guided_cpu.py --data {args['data']}`"
            f" (run under `flock /tmp/genmedseg-heavy.lock`). The dataset is first copied at"
            f" {args['image_size']}x{args['image_size']} (split kept); the U-Net and the generator train on the copy,"
            " masks of its test split condition the generator.",
            "",
            f"- generator: `configs/seg-guided-diffusion/glas-cpu.yaml` ({gen['trainable_parameters']:,} parameters),"
            f" lr {args['generator_lr']:g} (the paper's 1e-4 is for 100k+ steps), {gen['epochs_done']} epochs ="
            f" {gen['steps']} optimiser steps in {times['generator_train_s'] / 60:.1f} min; best val loss"
            f" {gen['best_val']['value']:.4f}",
            f"- segmenter: `unet` ({seg['trainable_parameters']:,} parameters), {seg['epochs_done']} epochs"
            f" ({seg['steps']} steps) in {times['segmenter_train_s'] / 60:.1f} min; best val Dice"
            f" {seg['best_val']['value']:.4f}",
            f"- generated: one image per test mask ({quality['n_synthetic']}), DDIM {args['steps']} steps, seed 0, in"
            f" {times['generate_s']:.0f} s; evaluated in {times['evaluate_synthetic_s']:.0f} s",
            "",
            f"| measure (grid {grid[0]}x{grid[1]}) | value |",
            "|---|---|",
            f"| Dice, segmenter on synthetic images vs their conditioning masks | {synthetic['mean']:.4f} ±"
            f" {synthetic['std']:.4f} (n={synthetic['n']}) |",
            f"| Dice, segmenter on the real images of those masks | {real['mean']:.4f} ± {real['std']:.4f}"
            f" (n={real['n']}) |",
            f"| control: the same predictions vs another source's mask (synthetic / real) |"
            f" {faith['control_synthetic_vs_another_mask']:.4f} / {faith['control_real_vs_another_mask']:.4f} |",
            f"| {realism['name']}: real vs synthetic (n {realism['sizes']['real']} vs"
            f" {realism['sizes']['synthetic']}) | {realism['real_vs_synthetic']:.3f} |",
            f"| same distance, synthetic vs one real half (n {realism['sizes']['halves'][0]} vs"
            f" {realism['sizes']['halves'][1]}) | {realism['synthetic_vs_real_half_same_sizes']:.3f} |",
            f"| floor: real half vs real half (n {realism['sizes']['halves'][0]} vs {realism['sizes']['halves'][1]})"
            f" | {realism['floor_real_half_vs_real_half']:.3f} |",
            "",
            f"Features: {realism['feature_dims']} per image (mean and std of each latent channel of the encoder at"
            f" {grid[0]}²). ± is the standard deviation over images.",
            "",
        ]
    )


if __name__ == "__main__":
    main_benchmark()
