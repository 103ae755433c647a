"""The ``genmedseg`` command: one verb per job. Heavy modules are imported inside each verb, after the arguments
are checked, so that a mistake is answered at once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from genmedseg import __version__
from genmedseg.config import FULL_PRECISION, INFERENCE_PRECISIONS
from genmedseg.errors import ConfigError, GenMedSegError

if TYPE_CHECKING:
    from genmedseg.config import RunConfig


def _key_values(items: list[str], flag: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` items of a repeatable flag as a dict (values parsed as YAML scalars: 5, 1e-4, true, text)."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. {flag} {example}")
        values[key.strip()] = yaml.safe_load(value) if value else ""
    return values


def _add_training_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with data/model/train sections; flags override it")
    parser.add_argument("--model", help="method to train (see `genmedseg models`); default wave-gms")
    parser.add_argument("--data", help="dataset folder (GMS layout or images/ + masks/ + split.csv)")
    parser.add_argument("--split-file", help="split file if not the one found in the dataset folder")
    parser.add_argument(
        "--extra-data",
        metavar="DIR",
        help="a second dataset (e.g. pairs from `genmedseg generate`) whose train pairs join training only",
    )
    parser.add_argument(
        "--extra-weight",
        type=float,
        metavar="W",
        help="sampling weight of an extra pair relative to a real one; default 1 (every pair once per epoch)",
    )
    parser.add_argument(
        "--pretrained",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="a frozen pretrained part by role, e.g. vae=DIR: path, diffusers folder or hub id "
        "(repeatable; `genmedseg models` lists each method's parts)",
    )
    parser.add_argument("--vae", help="short for --pretrained vae=SOURCE")
    parser.add_argument("--image-size", type=int, help="square input size (a multiple of the method's); default 224")
    parser.add_argument("--epochs", type=int, help="default 1000")
    parser.add_argument("--batch-size", type=int, help="default 12")
    parser.add_argument("--lr", type=float, help="AdamW learning rate; default 2e-3 (or the method's)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay; default 0.01 (or the method's)")
    parser.add_argument("--schedule", help="warmup-cosine (default) or constant (after the warm-up)")
    parser.add_argument("--warmup-epochs", type=int, help="linear warm-up length; default 5")
    parser.add_argument(
        "--ema-decay",
        type=float,
        help="validate and export an EMA of the weights, e.g. 0.999; off by default (or the method's)",
    )
    parser.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value; off by default")
    parser.add_argument("--val-every", type=int, help="validate every N epochs; default 1")
    parser.add_argument("--preview-every", type=int, help="save a preview grid every N epochs (0: never); default 10")
    parser.add_argument("--seed", type=int, help="seeds the split, shuffling, augmentation and weights; default 0")
    parser.add_argument("--devices", help="number of devices (several = DDP) or 'auto'; default 1")
    parser.add_argument("--accelerator", help="cpu, gpu or auto (default)")
    parser.add_argument(
        "--precision",
        help="Lightning precision: 32-true (default) or bf16-mixed (about 2.5x faster where bf16 is native: recent "
        "GPUs, AMX CPUs; slower elsewhere)",
    )
    parser.add_argument("--num-workers", type=int, help="data loading processes; default 0")
    parser.add_argument("--max-minutes", type=float, help="stop training after this many minutes (checkpoints kept)")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. mapping=sft (repeatable; `genmedseg models` lists them)",
    )


def _config_from_args(args: argparse.Namespace, raw: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Defaults, the method's training defaults, the YAML file ``raw``, then the flags (``base``: a run's config)."""
    from genmedseg.models.registry import default_run_config

    if base is None:
        base = default_run_config(_model_name(args, raw))
        base.update(raw, source=args.config or "configuration")
    config = base
    config.override(
        "data",
        root=args.data,
        split_file=args.split_file,
        image_size=args.image_size,
        num_workers=args.num_workers,
        extra_root=args.extra_data,
        extra_weight=args.extra_weight,
    )
    devices = args.devices
    if devices is not None and devices.lstrip("-").isdigit():
        devices = int(devices)
    config.override(
        "train",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        ema_decay=args.ema_decay,
        grad_clip=args.grad_clip,
        val_every=args.val_every,
        preview_every=args.preview_every,
        devices=devices,
        accelerator=args.accelerator,
        precision=args.precision,
        max_minutes=args.max_minutes,
    )
    options = {**config.model.options, **_key_values(args.option, "--option", "mapping=sft")}
    pretrained = {**config.model.pretrained, **_key_values(args.pretrained, "--pretrained", "vae=DIR")}
    if args.vae:
        pretrained["vae"] = args.vae
    config.override(
        "model", name=args.model, pretrained={key: str(value) for key, value in pretrained.items()}, options=options
    )
    return config


def _model_name(args: argparse.Namespace, raw: dict[str, Any]) -> str:
    from genmedseg.config import ModelConfig

    return args.model or (raw.get("model") or {}).get("name") or ModelConfig().name


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def cmd_train(args: argparse.Namespace) -> int:
    from genmedseg.config import RunConfig, read_yaml
    from genmedseg.errors import DataError
    from genmedseg.folders import RunFolder
    from genmedseg.models.registry import check_model_name

    # Everything a mistake can be found in is checked here, before torch and the method are imported.
    raw: dict[str, Any] = {}
    base = None
    if args.resume:
        run = RunFolder(Path(args.resume))
        if args.out and Path(args.out).resolve() != run.path.resolve():
            raise ConfigError("--resume RUN continues RUN in place; leave out --out (or give the same folder)")
        if not run.is_run():
            raise ConfigError(f"{run.path}: not a run folder (no {run.config.name}); nothing to resume")
        run.check_can_start(resume=True)
        if args.config or args.model:
            raise ConfigError("--resume RUN continues RUN with its own config.yaml; --config and --model do not apply")
        base = RunConfig.from_yaml(run.config)
        check_model_name(base.model.name)
        data = args.data or base.data.root
    else:
        if not args.out:
            raise ConfigError("give --out RUN, the folder that will hold checkpoints, logs and the model")
        run = RunFolder(Path(args.out))
        run.check_can_start(resume=False)
        raw = read_yaml(args.config) if args.config else {}
        check_model_name(_model_name(args, raw))
        data = args.data or (raw.get("data") or {}).get("root")
    if data is None:
        raise ConfigError("no dataset: give --data DIR (or data.root in the config file)")
    if not Path(data).is_dir():
        raise DataError(f"{data}: dataset folder not found")
    if args.extra_data and not Path(args.extra_data).is_dir():
        raise DataError(f"--extra-data {args.extra_data}: dataset folder not found")
    _set_threads(args)
    config = _config_from_args(args, raw, base)
    from genmedseg.engine.training import fit

    summary = fit(config, run.path, resume=bool(args.resume))
    if summary:
        best = summary["best_val"]
        score = (
            f"best validation {best['metric']} {best['value']:.4f}" if best["value"] is not None else "no validation"
        )
        stopped = "" if summary["stopped"] == "finished" else f" (stopped: {summary['stopped']})"
        print(
            f"trained {summary['model']}: {summary['epochs_done']} of {summary['epochs']} epochs finished{stopped}, "
            f"{summary['train_seconds']:.0f} s in all; {score}"
        )
        for warning in summary["warnings"]:
            print(f"warning: {warning}")
        if summary["stopped"] != "finished":
            print(f"continue with `genmedseg train --resume {run.path}` (with more --epochs or --max-minutes)")
        print(f"run folder: {run.path}  model folder: {run.model.path}")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from genmedseg.data import check_index, discover, format_report

    index = discover(args.data, args.split_file)
    problems = check_index(index)
    print(format_report(problems, len(index.pairs), index.root))
    return 1 if any(p.severity == "error" for p in problems) else 0


PREPARE_DATASETS = (
    "busi",
    "bus",
    "kvasir-seg",
    "kvasir-instrument",
    "cvc-clinicdb",
    "isic2016",
    "isic2017",
    "isic2018",
    "ham10000",
    "glas",
)
"""The names ``genmedseg prepare`` takes (its registry, ``genmedseg.data.prepare.DATASETS``, is imported later)."""


def cmd_prepare(args: argparse.Namespace) -> int:
    from genmedseg.data.prepare import prepare_dataset

    result = prepare_dataset(
        args.name,
        args.raw_dir,
        args.out_dir,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        exclude_normal=args.exclude_normal,
    )
    print(result.summary())
    return 0


def _prompts(args: argparse.Namespace) -> Any:
    from genmedseg.prompts import prompt_source

    return prompt_source(args.prompts, getattr(args, "prompt_jitter", 0) or 0)


def _require_model(path: str) -> None:
    """Refuse a path that holds no trained model, before the heavy imports."""
    from genmedseg.folders import model_folder_of

    if not model_folder_of(path).exists():
        raise ConfigError(
            f"{path}: no trained model here (expected {Path(path) / 'model' / 'config.json'} or "
            f"{Path(path) / 'config.json'}); a run gets its model folder when training finishes"
        )


def cmd_evaluate(args: argparse.Namespace) -> int:
    _require_model(args.run)
    from genmedseg.engine.inference import check_resolution

    resolution = check_resolution(args.resolution)
    sampling = _key_values(args.sample, "--sample", "steps=20")
    prompts = _prompts(args)
    data = args.data or _run_data_root(Path(args.run))
    _set_threads(args)
    from genmedseg.engine.inference import evaluate, format_summary

    summary = evaluate(
        args.run,
        data,
        args.out,
        split=args.split,
        split_file=args.split_file,
        resolution=resolution,
        batch_size=args.batch_size,
        prompts=prompts,
        sampling=sampling,
        precision=args.precision,
    )
    settings = [f"grid {summary['resolution']}", *([f"prompts: {summary['prompts']}"] if summary["prompts"] else [])]
    print(f"{args.split} split of {data} ({'; '.join(settings)}):")
    print(format_summary(summary))
    extra = "".join(f", {name}/" for name in summary["maps"])
    print(
        f"written: {Path(args.out) / 'metrics.csv'}, {Path(args.out) / 'summary.json'}, masks/, probabilities/{extra}"
    )
    if args.report:
        from genmedseg.report import write_report

        print(f"report: {write_report(args.out, data_root=data, split_file=args.split_file)}")
    return 0


def _run_data_root(run_dir: Path) -> str:
    """The dataset a run was trained on: its ``run.json`` (absolute), else its ``config.yaml``."""
    import json

    from genmedseg.config import RunConfig
    from genmedseg.folders import RunFolder

    run = RunFolder(run_dir)
    if run.record.is_file():
        return json.loads(run.record.read_text())["data"]
    if not run.is_run():
        raise ConfigError(f"give --data DIR: {run_dir} is not a run folder that records its dataset")
    return RunConfig.from_yaml(run.config).data.root


def cmd_predict(args: argparse.Namespace) -> int:
    _require_model(args.run)
    sampling = _key_values(args.sample, "--sample", "steps=20")
    prompts = _prompts(args)
    _set_threads(args)
    from genmedseg.engine.inference import predict

    written = predict(
        args.run,
        args.inputs,
        args.out,
        batch_size=args.batch_size,
        prompts=prompts,
        sampling=sampling,
        precision=args.precision,
    )
    folder = Path(args.out)
    print(f"{len(written)} masks written to {folder / 'masks'} (probabilities in {folder / 'probabilities'})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    _require_model(args.run)
    sampling = _key_values(args.sample, "--sample", "steps=50")
    _set_threads(args)
    from genmedseg.engine.generation import generate

    out = generate(
        args.run,
        args.masks,
        args.out,
        per_mask=args.per_mask,
        split=args.split,
        batch_size=args.batch_size,
        sampling=sampling,
    )
    print(f"generated dataset: {out} (images/, masks/, split.csv, provenance.json)")
    return 0


def cmd_evaluate_synthetic(args: argparse.Namespace) -> int:
    _require_model(args.seg_run)
    if not Path(args.synthetic).is_dir():
        from genmedseg.errors import DataError

        raise DataError(f"{args.synthetic}: no such folder (a dataset written by `genmedseg generate`)")
    sampling = _key_values(args.sample, "--sample", "steps=20")
    _set_threads(args)
    from genmedseg.engine.synthetic_quality import evaluate_synthetic, format_synthetic_summary

    summary = evaluate_synthetic(
        args.seg_run,
        args.synthetic,
        out=args.out,
        vae=args.vae,
        batch_size=args.batch_size,
        sampling=sampling,
        seed=args.seed,
    )
    print(format_synthetic_summary(summary))
    if args.out:
        print(f"written: {Path(args.out) / 'summary.json'}, {Path(args.out) / 'metrics.csv'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _require_model(args.run)
    _set_threads(args)
    from genmedseg.engine.export import export_onnx

    print(export_onnx(args.run, args.onnx, data_root=args.data).summary())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _set_threads(args)
    from genmedseg.demo import run_demo

    run_demo(
        out=Path(args.out or f"genmedseg-demo-{time.strftime('%Y%m%d-%H%M%S')}"),
        data=args.data,
        epochs=args.epochs,
        image_size=args.image_size,
        vae=args.vae,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from genmedseg.models.registry import describe_models

    rows = describe_models()
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        print(
            f"{row['name']:{width}s}  {row['role']:9s}  {row['trainable_parameters'] / 1e6:5.2f} M trainable  "
            f"{row['summary']}"
        )
        for role, description in row["pretrained"].items():
            print(f"{'':{width}s}    pretrained {role}: {description} (--pretrained {role}=SOURCE)")
        if row["prompts"]:
            print(f"{'':{width}s}    prompts: {row['prompts']}es (--prompts FILE | from-mask)")
        for option in row["sampling"]:
            print(f"{'':{width}s}    --sample {option}")
    print("Model options: `--option KEY=VALUE` (a wrong key lists the valid ones); methods: docs/methods.md.")
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


def cmd_env(args: argparse.Namespace) -> int:
    from genmedseg.environment import describe_environment

    print(describe_environment())
    return 0


def _add_sample_flag(parser: argparse.ArgumentParser, example: str = "steps=20") -> None:
    parser.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"sampling option of the method, e.g. {example} (repeatable; `genmedseg models` lists them)",
    )


def _add_inference_flags(parser: argparse.ArgumentParser, evaluation: bool) -> None:
    _add_sample_flag(parser)
    parser.add_argument(
        "--prompts",
        metavar="FILE" + ("|from-mask" if evaluation else ""),
        help="box prompts for methods that take them: a JSON or CSV box file"
        + (", or from-mask (the ground truth's box)" if evaluation else ""),
    )
    if evaluation:
        parser.add_argument(
            "--prompt-jitter",
            type=int,
            default=0,
            metavar="PX",
            help="with --prompts from-mask: move each box side out by up to PX pixels (seeded)",
        )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument(
        "--precision",
        default=FULL_PRECISION,
        choices=INFERENCE_PRECISIONS,
        help="bf16-mixed: bfloat16 autocast, faster where bf16 is native (recent GPUs, AMX CPUs)",
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text
        return f"{text} (default: %(default)s)" if shown and action.option_strings else text


def _add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, help="CPU threads torch may use (default: torch's, all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genmedseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"genmedseg {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def add_verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    demo = add_verb("demo", help="train Wave-GMS briefly and evaluate it (synthetic data unless --data)")
    demo.add_argument("--data", help="use this dataset folder instead of generating a synthetic one")
    demo.add_argument("--out", help="demo folder (default genmedseg-demo-<time>)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: fits in a few minutes)")
    demo.add_argument("--image-size", type=int, default=None, help="input size (default: 64, a few minutes on a CPU)")
    demo.add_argument("--vae", help="frozen tiny VAE (default: GENMEDSEG_VAE, else madebyollin/taesd)")
    _add_threads_flag(demo)
    demo.set_defaults(handler=cmd_demo)

    check = add_verb("check-data", help="decode every file of a dataset and list every problem")
    check.add_argument("data", help="dataset folder")
    check.add_argument("--split-file", help="split file if not the one found in the dataset folder")
    check.set_defaults(handler=cmd_check_data)

    prepare = add_verb("prepare", help="turn a public dataset, as downloaded, into the GMS layout with a split")
    prepare.add_argument("name", metavar="NAME", choices=PREPARE_DATASETS, help=", ".join(PREPARE_DATASETS))
    prepare.add_argument("raw_dir", metavar="RAW_DIR", help="the folder the download was unpacked into")
    prepare.add_argument("out_dir", metavar="OUT_DIR", help="new dataset folder (must not exist, or be empty)")
    prepare.add_argument(
        "--val-fraction", type=float, default=0.1, help="validation share where there is no official one"
    )
    prepare.add_argument("--test-fraction", type=float, default=0.2, help="test share where there is no official one")
    prepare.add_argument("--seed", type=int, default=0, help="seeds the split")
    prepare.add_argument(
        "--exclude-normal", action="store_true", help="busi: leave out the normal cases (empty masks) instead"
    )
    prepare.set_defaults(handler=cmd_prepare)

    train = add_verb("train", help="train a model into a run folder")
    _add_training_flags(train)
    train.add_argument("--out", help="new run folder")
    train.add_argument("--resume", metavar="RUN", help="continue an interrupted run exactly where it stopped")
    _add_threads_flag(train)
    train.set_defaults(handler=cmd_train)

    evaluate = add_verb("evaluate", help="metrics.csv, summary.json and masks of a split (segmenters)")
    evaluate.add_argument("run", help="run folder or model folder")
    evaluate.add_argument("--data", help="dataset folder (default: the run's own)")
    evaluate.add_argument("--split", default="test", help="split to evaluate: train, val or test")
    evaluate.add_argument("--split-file", help="split file if not the one found in the dataset folder")
    evaluate.add_argument("--out", required=True, help="new folder for metrics.csv, summary.json and the masks")
    evaluate.add_argument(
        "--resolution",
        default="native",
        metavar="native|model|N",
        help="metric grid: native = each image's own size; model = the input size, as the papers do; N = an N x N grid",
    )
    _add_inference_flags(evaluate, evaluation=True)
    evaluate.add_argument("--report", action="store_true", help="also write report.html (plots, worst/best cases)")
    _add_threads_flag(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = add_verb("predict", help="segment image files of any size (segmenters)")
    predict.add_argument("run", help="run folder or model folder")
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True, help="folder for masks/, probabilities/ and extra maps")
    _add_inference_flags(predict, evaluation=False)
    _add_threads_flag(predict)
    predict.set_defaults(handler=cmd_predict)

    generate = add_verb("generate", help="synthesise images from masks into a new dataset (generators)")
    generate.add_argument("run", help="run folder or model folder of a generator")
    generate.add_argument(
        "--masks", required=True, metavar="DATA_DIR", help="dataset folder (its --split is used) or a folder of masks"
    )
    generate.add_argument("--out", required=True, metavar="NEW_DIR", help="new dataset folder")
    generate.add_argument("--per-mask", type=int, default=1, metavar="K", help="images per mask (default 1)")
    generate.add_argument("--split", help="split of DATA_DIR to take masks from (default train)")
    _add_sample_flag(generate, example="steps=50 or seed=3")
    generate.add_argument("--batch-size", type=int, default=8, help="images per sampling batch")
    _add_threads_flag(generate)
    generate.set_defaults(handler=cmd_generate)

    synthetic = add_verb(
        "evaluate-synthetic",
        help="faithfulness (a segmenter's Dice on synthetic images vs their masks, beside real ones) and realism "
        "(Fréchet distance of tiny-VAE encoder features) of a dataset written by `generate`",
    )
    synthetic.add_argument("seg_run", metavar="SEG_RUN", help="run folder or model folder of a segmenter")
    synthetic.add_argument("synthetic", metavar="NEW_DIR", help="dataset folder written by `genmedseg generate`")
    synthetic.add_argument("--out", help="folder for summary.json and metrics.csv (default: print only)")
    synthetic.add_argument(
        "--vae", help="tiny-VAE encoder for the realism features (default: GENMEDSEG_VAE, else madebyollin/taesd)"
    )
    synthetic.add_argument("--seed", type=int, default=0, help="seeds the split of the real images into halves")
    _add_sample_flag(synthetic)
    synthetic.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    _add_threads_flag(synthetic)
    synthetic.set_defaults(handler=cmd_evaluate_synthetic)

    export = add_verb("export", help="write the model's inference graph as ONNX, checked against PyTorch")
    export.add_argument("run", help="run folder or model folder")
    export.add_argument("--onnx", required=True, metavar="FILE", help="output file (.onnx)")
    export.add_argument("--data", help="dataset whose images check the export (default: the run's own)")
    _add_threads_flag(export)
    export.set_defaults(handler=cmd_export)

    report = add_verb("report", help="write report.html for an evaluation folder")
    report.add_argument("evaluation", help="folder written by `genmedseg evaluate`")
    report.add_argument("--data", help="dataset folder (default: the one the evaluation records)")
    report.add_argument("--split-file", help="split file if not the one found in the dataset folder")
    report.add_argument("--cases", type=int, default=3, help="worst, median and best cases shown (each)")
    report.set_defaults(handler=cmd_report)

    models = add_verb("models", help="the methods: role, parameters, pretrained parts, sampling options")
    models.set_defaults(handler=cmd_models)

    runs = add_verb("runs", help="side-by-side table of training runs")
    runs.add_argument("runs", nargs="+", help="run folders")
    runs.add_argument("--evaluations", nargs="*", default=[], help="more evaluation folders to take test metrics from")
    runs.set_defaults(handler=cmd_runs)

    env = add_verb("env", help="versions and devices, for bug reports")
    env.set_defaults(handler=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except GenMedSegError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130


def _interrupted_message(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves: for training, the run to resume (or that nothing was kept yet)."""
    if args.verb != "train":
        return "interrupted; files already written are complete (each is written atomically)"
    from genmedseg.folders import RunFolder

    run = RunFolder(Path(args.resume or args.out or "."))
    if not run.last_checkpoint.is_file():
        return "interrupted before the first epoch ended: nothing was kept; run the same command again"
    return f"interrupted; continue where the last finished epoch left off with `genmedseg train --resume {run.path}`"


if __name__ == "__main__":
    sys.exit(main())
