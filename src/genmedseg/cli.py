"""The ``genmedseg`` command: one verb per job. Heavy modules are imported inside each verb."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from genmedseg.errors import ConfigError, GenMedSegError

if TYPE_CHECKING:
    from genmedseg.config import RunConfig


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with data/model/train sections; flags override it")
    parser.add_argument("--model", help="method to train (see `genmedseg models`); default wave-gms")
    parser.add_argument("--data", help="dataset folder (GMS layout or images/ + masks/ + split.csv)")
    parser.add_argument("--split-file", help="split file if not the one found in the dataset folder")
    parser.add_argument("--vae", help="the method's frozen autoencoder: weights folder or file, diffusers folder or hub id")
    parser.add_argument("--image-size", type=int, help="square input size (multiple of 8); default 224")
    parser.add_argument("--epochs", type=int, help="default 1000")
    parser.add_argument("--batch-size", type=int, help="default 12")
    parser.add_argument("--lr", type=float, help="AdamW learning rate; default 2e-3")
    parser.add_argument("--seed", type=int, help="seeds the split, shuffling, augmentation and weights; default 0")
    parser.add_argument("--devices", help="number of devices (several = DDP) or 'auto'; default 1")
    parser.add_argument("--accelerator", help="cpu, gpu or auto (default)")
    parser.add_argument("--precision", help="Lightning precision, e.g. 32-true (default) or bf16-mixed")
    parser.add_argument("--num-workers", type=int, help="data loading processes; default 0")
    parser.add_argument("--max-minutes", type=float, help="stop training after this many minutes (checkpoints kept)")
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. mapping=sft (repeatable)"
    )


def _config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    from genmedseg.config import RunConfig

    config = base or (RunConfig.from_yaml(args.config) if args.config else RunConfig())
    config.override("data", root=args.data, split_file=args.split_file, image_size=args.image_size,
                    num_workers=args.num_workers)
    devices = None if args.devices is None else (int(args.devices) if args.devices.lstrip("-").isdigit() else args.devices)
    config.override("train", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    devices=devices, accelerator=args.accelerator, precision=args.precision,
                    max_minutes=args.max_minutes)
    options = dict(config.model.options)
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option mapping=sft")
        options[key] = yaml.safe_load(value)
    config.override("model", name=args.model, vae=args.vae, options=options)
    return config


def cmd_train(args: argparse.Namespace) -> int:
    from genmedseg.config import RunConfig
    from genmedseg.engine.training import CONFIG_NAME, fit

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise ConfigError("--resume RUN continues RUN in place; leave out --out (or give the same folder)")
        if not (run_dir / CONFIG_NAME).is_file():
            raise ConfigError(f"{run_dir}: not a run folder (no {CONFIG_NAME}); nothing to resume")
        config = _config_from_args(args, base=RunConfig.from_yaml(run_dir / CONFIG_NAME))
    else:
        if not args.out:
            raise ConfigError("give --out RUN, the folder that will hold checkpoints, logs and the model")
        run_dir, config = Path(args.out), _config_from_args(args)
    summary = fit(config, run_dir, resume=bool(args.resume))
    if summary:
        print(f"trained {summary['model']} for {summary['epochs_done']} epochs in {summary['train_seconds']:.0f} s;"
              f" best validation Dice {summary['best_val_dice']:.4f}")
        print(f"run folder: {run_dir}  model folder: {run_dir / 'model'}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from genmedseg.data import check_index, discover, format_report

    index = discover(args.data, args.split_file)
    problems = check_index(index)
    print(format_report(problems, len(index.pairs), index.root))
    return 1 if any(p.severity == "error" for p in problems) else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from genmedseg.engine.inference import evaluate, format_summary

    data = args.data or _run_data_root(Path(args.run))
    summary = evaluate(args.run, data, args.out, split=args.split, split_file=args.split_file,
                       resolution=args.resolution, batch_size=args.batch_size)
    print(f"{args.split} split of {data}:")
    print(format_summary(summary))
    print(f"written: {Path(args.out) / 'metrics.csv'}, {Path(args.out) / 'summary.json'}, masks/ and probabilities/")
    if args.report:
        from genmedseg.report import write_report

        print(f"report: {write_report(args.out, data_root=data, split_file=args.split_file)}")
    return 0


def _run_data_root(run_dir: Path) -> str:
    from genmedseg.config import RunConfig
    from genmedseg.engine.training import CONFIG_NAME

    if not (run_dir / CONFIG_NAME).is_file():
        raise ConfigError(f"give --data DIR: {run_dir} is not a run folder that records its dataset")
    return RunConfig.from_yaml(run_dir / CONFIG_NAME).data.root


def cmd_predict(args: argparse.Namespace) -> int:
    from genmedseg.engine.inference import predict

    written = predict(args.run, args.inputs, args.out, batch_size=args.batch_size)
    print(f"{len(written)} masks written to {Path(args.out) / 'masks'} (probabilities in {Path(args.out) / 'probabilities'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from genmedseg.demo import run_demo

    run_demo(out=Path(args.out or f"genmedseg-demo-{time.strftime('%Y%m%d-%H%M%S')}"), data=args.data,
             epochs=args.epochs, image_size=args.image_size, vae=args.vae)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from genmedseg.models.registry import describe_models

    rows = describe_models()
    width = max(len(name) for name, _, _ in rows)
    for name, summary, parameters in rows:
        print(f"{name:{width}s}  {parameters / 1e6:5.2f} M trainable  {summary}")
    print("Options: `--option KEY=VALUE`; e.g. wave-gms mapping=sft, image_encoder=tiny-vae (see docs/models.md).")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from genmedseg.report import runs_table

    print(runs_table([Path(run) for run in args.runs], evaluations=[Path(e) for e in args.evaluations]))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from genmedseg.report import write_report

    path = write_report(args.evaluation, data_root=args.data, n_cases=args.cases, split_file=args.split_file)
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genmedseg", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    demo = verbs.add_parser("demo", help="train Wave-GMS briefly and evaluate it (synthetic data unless --data)")
    demo.add_argument("--data", help="use this dataset folder instead of generating a synthetic one")
    demo.add_argument("--out", help="demo folder (default genmedseg-demo-<time>)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: fits in a few minutes)")
    demo.add_argument("--image-size", type=int, default=None)
    demo.add_argument("--vae", help="frozen tiny VAE (default: GENMEDSEG_VAE, else madebyollin/taesd)")
    demo.set_defaults(handler=cmd_demo)

    check = verbs.add_parser("check-data", help="decode every file of a dataset and list every problem")
    check.add_argument("data", help="dataset folder")
    check.add_argument("--split-file")
    check.set_defaults(handler=cmd_check_data)

    train = verbs.add_parser("train", help="train a model into a run folder")
    _add_training_flags(train)
    train.add_argument("--out", help="new run folder")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run exactly where it stopped")
    train.set_defaults(handler=cmd_train)

    evaluate = verbs.add_parser("evaluate", help="metrics.csv, summary.json and masks of a split")
    evaluate.add_argument("run", help="run folder or model folder")
    evaluate.add_argument("--data", help="dataset folder (default: the run's own)")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--split-file")
    evaluate.add_argument("--out", required=True)
    evaluate.add_argument("--resolution", choices=("native", "model"), default="native",
                          help="native: each image's own size (default); model: the input size, as the papers do")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--report", action="store_true", help="also write report.html (plots, worst/best cases)")
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = verbs.add_parser("predict", help="segment image files of any size")
    predict.add_argument("run", help="run folder or model folder")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True)
    predict.add_argument("--batch-size", type=int, default=8)
    predict.set_defaults(handler=cmd_predict)

    report = verbs.add_parser("report", help="write report.html for an evaluation folder")
    report.add_argument("evaluation", help="folder written by `genmedseg evaluate`")
    report.add_argument("--data", help="dataset folder (default: the one the evaluation records)")
    report.add_argument("--split-file")
    report.add_argument("--cases", type=int, default=3, help="worst, median and best cases shown (each)")
    report.set_defaults(handler=cmd_report)

    models = verbs.add_parser("models", help="list the methods with their trainable parameter counts")
    models.set_defaults(handler=cmd_models)

    runs = verbs.add_parser("runs", help="side-by-side table of training runs")
    runs.add_argument("runs", nargs="+", help="run folders")
    runs.add_argument("--evaluations", nargs="*", default=[], help="evaluation folders to take test Dice from")
    runs.set_defaults(handler=cmd_runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except GenMedSegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a training run continues with `genmedseg train --resume RUN`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
