"""Do synthetic pairs help a segmenter trained on a small real subset? (segmentation-guided diffusion, part 4)

The setting of a user with few annotated images and more masks: a fraction of the real training pairs is kept
(``--fraction``, drawn once with seed 0; validation and test stay the dataset's own), the generator trains on those
pairs alone, and it draws one image for each mask of the *remaining* training pairs (their images are never used).
Each segmenter variant then trains with and without those synthetic pairs (``train --extra-data``) for the same
number of optimiser steps and seeds, through ``accuracy.py``. The synthetic set is also scored with
``genmedseg evaluate-synthetic`` (faithfulness with a wrong-mask control; realism with its real-vs-real floor),
using the real-only U-Net of seed 0 as the segmenter.

    python benchmarks/synthetic_pairs.py --data ../shared/data/glas --work /tmp/synthetic-pairs \\
        --out benchmarks/results/synthetic-pairs-glas-64

Writes ``OUT.md`` and ``OUT.json`` (and the generator's last preview grid as ``OUT-preview.png``); the two
conditions' tables are ``OUT-real.*`` (or ``--real-rows``) and ``OUT-real+synthetic.*``. Finished stages in
``--work`` are kept, so a run that is stopped continues where it was. Every number in the table is measured by this
script.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from accuracy import interval, machine
from genmedseg.data import discover
from seg_guided_cpu import resized_copy, run

REPOSITORY = Path(__file__).resolve().parents[1]
CONDITIONS = ("real", "real+synthetic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "glas"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of the real training pairs kept")
    parser.add_argument("--generator-epochs", type=int, default=1200)
    parser.add_argument("--generator-lr", type=float, default=5e-4)
    parser.add_argument("--generator-batch-size", type=int, default=8)
    parser.add_argument("--generator-minutes", type=float, default=60.0, help="cap on the generator's training")
    parser.add_argument("--sampler", default="ddpm", help="generation sampler (ddpm, ddim or dpm-solver)")
    parser.add_argument("--sampling-steps", type=int, default=100, help="denoising steps of generation")
    parser.add_argument("--variants", default="unet,wave-gms[tiny-vae+sft]", help="segmenters (accuracy.py names)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=126, help="optimiser steps of every segmenter run (about)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", required=True, help="folder for the data, runs and generated pairs")
    parser.add_argument("--out", default=str(REPOSITORY / "benchmarks" / "results" / "synthetic-pairs-glas-64"))
    parser.add_argument(
        "--real-rows",
        default=None,
        help="prefix of the real-only condition's tables (default OUT-real); give an earlier run's to reuse them when "
        "only the synthetic pairs change (same subset, variants, seeds and steps)",
    )
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    prefixes = {
        "real": Path(args.real_rows) if args.real_rows else out.with_name(f"{out.name}-real"),
        "real+synthetic": out.with_name(f"{out.name}-real+synthetic"),
    }
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = json.loads((work / "times.json").read_text()) if (work / "times.json").is_file() else {}

    def stage(name: str, done: Path, action) -> None:
        if not done.exists():
            started = time.perf_counter()
            action()
            times[name] = round(time.perf_counter() - started, 1)
            (work / "times.json").write_text(json.dumps(times, indent=1))

    full = work / "data"
    stage("resize_copy_s", full, lambda: resized_copy(Path(args.data), full, args.image_size))
    subset, rest = work / "subset", work / "held-back"
    stage("subset_s", subset / "split.csv", lambda: write_subset(full, subset, rest, args.fraction))

    common = ["--accelerator", "cpu", "--image-size", str(args.image_size), "--threads", str(args.threads)]
    generator, generated = work / "generator", work / "generated"
    config = REPOSITORY / "configs" / "seg-guided-diffusion" / "glas-cpu.yaml"
    generator_args = [
        *("train", "--config", str(config), "--data", str(subset), "--out", str(generator), *common),
        *("--epochs", str(args.generator_epochs), "--batch-size", str(args.generator_batch_size)),
        *("--lr", str(args.generator_lr), "--ema-decay", "0.999", "--val-every", "50", "--preview-every", "200"),
        *("--option", "mask_ablation=false", "--max-minutes", str(args.generator_minutes)),
    ]
    stage("generator_train_s", generator / "train_summary.json", lambda: run(generator_args))
    sampling = ["--sample", f"sampler={args.sampler}", "--sample", f"steps={args.sampling_steps}", "--sample", "seed=0"]
    stage(
        "generate_s",
        generated / "provenance.json",
        lambda: run(
            ["generate", str(generator), "--masks", str(rest), "--split", "test", "--out", str(generated), *sampling]
        ),
    )

    n_real = len(discover(subset).splits["train"])
    n_synthetic = len(list((generated / "images").iterdir()))
    epochs = {
        "real": epochs_for(args.steps, n_real, args.batch_size),
        "real+synthetic": epochs_for(args.steps, n_real + n_synthetic, args.batch_size),
    }
    for condition in CONDITIONS:
        prefix = prefixes[condition]
        command = [
            *(sys.executable, str(REPOSITORY / "benchmarks" / "accuracy.py"), "--data", str(subset)),
            *("--image-size", str(args.image_size), "--batch-size", str(args.batch_size)),
            *("--epochs", str(epochs[condition]), "--seeds", args.seeds, "--variants", args.variants),
            *("--out", str(prefix)),
        ]
        if condition == "real+synthetic":
            command += ["--extra-data", str(generated)]
        if not prefix.with_suffix(".csv").is_file():
            subprocess.run(command, check=True)
    segmenter = prefixes["real"] / "unet-s0"
    quality = work / "quality"
    stage(
        "evaluate_synthetic_s",
        quality / "summary.json",
        lambda: run(["evaluate-synthetic", str(segmenter), str(generated), "--out", str(quality)]),
    )

    record = {
        "machine": machine(),
        "arguments": vars(args),
        "times": times,
        "pairs": {"real_train": n_real, "synthetic": n_synthetic, "val": len(discover(subset).splits["val"])},
        "epochs": epochs,
        "generator": json.loads((generator / "train_summary.json").read_text()),
        "quality": json.loads((quality / "summary.json").read_text()),
        "rows": {condition: read_rows(prefix) for condition, prefix in prefixes.items()},
    }
    previews = sorted((generator / "previews").glob("*.png"))
    if previews:
        shutil.copy(previews[-1], out.with_name(out.name + "-preview.png"))
    out.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(render(record))
    print(render(record))


def write_subset(full: Path, subset: Path, rest: Path, fraction: float) -> None:
    """``subset``: the dataset with only ``fraction`` of its training pairs (validation and test unchanged);
    ``rest``: the other training pairs, as the test split of a dataset of their own (the generator reads only their
    masks; ``evaluate-synthetic`` finds their real images there)."""
    index = discover(full)
    train = sorted(index.splits["train"])
    kept = set(random.Random(0).sample(train, max(1, round(fraction * len(train)))))
    rows: dict[Path, list[str]] = {subset: ["name,split"], rest: ["name,split"]}
    for split in ("train", "val", "test"):
        for name in index.splits[split]:
            held_back = split == "train" and name not in kept
            target, row = (rest, f"{name},test") if held_back else (subset, f"{name},{split}")
            for source, folder in zip(index.pairs[name], ("images", "masks"), strict=True):
                (target / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy(source, target / folder / source.name)
            rows[target].append(row)
    for target, lines in rows.items():
        (target / "split.csv").write_text("\n".join(lines) + "\n")


def epochs_for(steps: int, pairs: int, batch_size: int) -> int:
    """Epochs that make about ``steps`` optimiser steps (the last incomplete batch is dropped where a full remains)."""
    per_epoch = pairs // batch_size if pairs > batch_size else 1
    return max(1, math.ceil(steps / per_epoch))


def read_rows(prefix: Path) -> list[dict]:
    with prefix.with_suffix(".csv").open() as handle:
        return list(csv.DictReader(handle))


def render(record: dict) -> str:
    args, pairs, gen = record["arguments"], record["pairs"], record["generator"]
    faith, realism = record["quality"]["faithfulness"], record["quality"]["realism"]
    synthetic, real = faith["synthetic_vs_conditioning_mask"]["dice"], faith["real_vs_its_mask"]["dice"]
    times = record["times"]
    real_rows = f" --real-rows {Path(args['real_rows']).name}" if args.get("real_rows") else ""
    lines = [
        f"# Do synthetic pairs help? {Path(args['data']).name} at {args['image_size']}², {args['fraction']:.0%} of"
        " the real training pairs",
        "",
        f"{record['machine']}. Command: `python benchmarks/synthetic_pairs.py --data {args['data']}"
        f" --fraction {args['fraction']} --sampler {args['sampler']} --sampling-steps {args['sampling_steps']}"
        f" --steps {args['steps']} --seeds {args['seeds']}"
        f" --variants {args['variants']}{real_rows}`.",
        "",
        f"- real pairs: {pairs['real_train']} for training (drawn once, seed 0), {pairs['val']} validation (checkpoint"
        " selection), the dataset's test split for the test Dice;",
        f"- generator: `configs/seg-guided-diffusion/glas-cpu.yaml` without mask ablation, trained on those"
        f" {pairs['real_train']} pairs only: {gen['epochs_done']} epochs = {gen['steps']} optimiser steps (batch"
        f" {args['generator_batch_size']}, lr {args['generator_lr']:g}, EMA 0.999) in"
        f" {times['generator_train_s'] / 60:.0f} min;",
        f"- synthetic pairs: one image per mask of the other {pairs['synthetic']} training pairs (their images unused),"
        f" {args['sampler'].upper()} {args['sampling_steps']} steps, seed 0, in {times['generate_s'] / 60:.1f} min;",
        f"- segmenters: about {args['steps']} optimiser steps in both conditions ({record['epochs']['real']} epochs on"
        f" real pairs alone, {record['epochs']['real+synthetic']} with the synthetic ones; weight 1), batch"
        f" {args['batch_size']}, seeds {args['seeds']}.",
        "",
        "| variant | condition | steps | test Dice | test IoU | test HD95 px | train s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = list(dict.fromkeys(row["variant"] for row in record["rows"]["real"]))
    differences = []
    for variant in variants:
        by_condition = {
            condition: {int(row["seed"]): row for row in record["rows"][condition] if row["variant"] == variant}
            for condition in CONDITIONS
        }
        for condition, group in by_condition.items():
            rows = list(group.values())

            def cell(key: str, digits: int, rows: list[dict] = rows) -> str:
                mean, half = interval([float(row[key]) for row in rows])
                return f"{mean:.{digits}f} ± {half:.{digits}f}"

            lines.append(
                f"| {variant} | {condition} | {rows[0]['steps']} | {cell('test_dice', 4)} | {cell('test_iou', 4)}"
                f" | {cell('test_hd95', 1)} | {cell('seconds_per_step', 3)} |"
            )
        seeds = sorted(set(by_condition["real"]) & set(by_condition["real+synthetic"]))
        gains = [
            float(by_condition["real+synthetic"][s]["test_dice"]) - float(by_condition["real"][s]["test_dice"])
            for s in seeds
        ]
        mean, half = interval(gains)
        differences.append(
            f"| {variant} | {len(seeds)} | {mean:+.4f} ± {half:.4f} | {', '.join(f'{g:+.4f}' for g in gains)} |"
        )
    lines += [
        "",
        "Test Dice gained by adding the synthetic pairs (same seed paired; mean with its 95 % t-interval):",
        "",
        "| variant | seeds | Δ test Dice | per seed |",
        "|---|---|---|---|",
        *differences,
        "",
        "The synthetic pairs themselves (`genmedseg evaluate-synthetic`, segmenter: the real-only U-Net, seed 0):",
        "",
        "| measure | value |",
        "|---|---|",
        f"| Dice of the segmenter on synthetic images vs their conditioning masks | {synthetic['mean']:.4f}"
        f" (n={synthetic['n']}) |",
        f"| the same segmenter on the real images of those masks | {real['mean']:.4f} |",
        f"| the same vs another source's mask (control) | {faith['control_synthetic_vs_another_mask']:.4f} |",
        f"| {realism['name']}: synthetic vs a real half | {realism['synthetic_vs_real_half_same_sizes']:.3f} |",
        f"| floor: real half vs real half | {realism['floor_real_half_vs_real_half']:.3f} |",
        "",
        "Means over seeds with 95 % t-intervals; test metrics at native resolution.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
