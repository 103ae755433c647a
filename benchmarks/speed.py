"""Speed benchmark of every registered method: training step time, inference throughput, peak memory, FLOP/s.

For each model, image size and batch size it measures

* the time of one training step (``training_loss`` + backward + AdamW step, as the trainer runs it),
* inference images per second (``predict`` under ``torch.inference_mode()`` at the same batch size),
* peak memory: resident set size of a fresh process per configuration on CPU, ``max_memory_allocated`` on CUDA,
* the FLOPs of one training step and one inference call (``torch.utils.flop_counter.FlopCounterMode``) and the
  FLOP/s achieved, as a fraction of the machine's matmul peak measured in the same run (the bfloat16 peak for
  bfloat16 rows).

Models and batches are in the engine's memory format (``genmedseg.models.base.MEMORY_FORMAT``, channels-last);
``--compare-memory-format`` also runs every configuration in the contiguous (NCHW) format and reports the speed-up
and whether the losses agree; ``--compare-precision`` does the same for bfloat16 autocast (as the trainer's
``--precision bf16-mixed`` runs the step: the forward pass and the loss under autocast, the backward pass and the
optimiser outside), with inference under autocast too; ``--compare-memory-savings`` without genmedseg's memory
savings: the frozen autoencoder's plain ``nn.Conv2d`` / ``nn.ReLU`` layers instead of the memory-lean ones
(``genmedseg.vae.frozen``), and no gradient checkpointing (``gradient_checkpointing`` attributes set to False).
Weights are random (timing does not depend on their values) at the paper's sizes; ``--vae`` (default
``$GENMEDSEG_VAE``) gives Wave-GMS real tiny-VAE weights instead. Writes ``OUT.csv`` and ``OUT.md``. See
benchmarks/README.md.

Usage::

    python benchmarks/speed.py --models unet --sizes 64 --batches 1,2 --repeats 1 --out /tmp/speed-smoke
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from genmedseg.config import BF16_PRECISION as HALF_PRECISION
from genmedseg.config import FULL_PRECISION, TrainConfig
from genmedseg.errors import ConfigError, GenMedSegError
from genmedseg.models.base import MEMORY_FORMAT, SegmentationMethod
from genmedseg.models.registry import MODELS, create_model, get_model_class
from genmedseg.vae.frozen import FrozenConv2d, MaskedReLU
from genmedseg.vae.loading import TINY_VAE_ENV
from variants import NAMES, resolve

# Named variants benchmarked as rows of their own: label -> (registered model, constructor options).
# Methods whose frozen part is a tiny VAE, i.e. those that ``--vae`` weights are for.
TINY_VAE_METHODS = ("wave-gms",)
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
ENGINE_FORMAT = next(name for name, value in MEMORY_FORMATS.items() if value == MEMORY_FORMAT)
BASELINE_FORMAT = "contiguous"
PEAK_DTYPES = {FULL_PRECISION: ("float32", torch.float32), HALF_PRECISION: ("bfloat16", torch.bfloat16)}
RESULT_PREFIX = "SPEED-RESULT "
# Largest relative difference of the first loss and the mean probability that counts as agreeing with the baseline:
# a change of memory format reorders sums only; bfloat16 keeps 8 bits of mantissa; the memory savings compute the same.
AGREEMENT_TOLERANCE = {"memory format": 1e-4, "precision": 3e-2, "memory savings": 1e-4}
COMPARED_WITH = {"memory format": "NCHW", "precision": "float32", "memory savings": "no memory savings"}


@dataclass
class Config:
    """One measured configuration, run in a process of its own (JSON round-trips through the command line)."""

    model: str
    size: int
    batch: int
    memory_format: str
    precision: str
    device: str
    threads: int
    repeats: int
    warmup: int
    max_seconds: float
    seed: int
    vae: str
    memory_savings: bool = True

    def key(self) -> tuple[str, int, int, str, str, bool]:
        """What identifies the configuration among those of one run."""
        return (self.model, self.size, self.batch, self.memory_format, self.precision, self.memory_savings)


@dataclass
class Measurement:
    """What a configuration's process reports; the parent adds the columns that need the matmul peak."""

    model: str
    frozen_part: str
    size: int
    batch: int
    memory_format: str
    precision: str
    train_step_s: float
    train_flops: float
    train_repeats: int
    first_loss: float
    infer_call_s: float
    infer_flops: float
    infer_repeats: int
    mean_probability: float
    peak_memory_mib: float
    baseline_memory_mib: float
    note: str


def parse_model_list(text: str) -> list[str]:
    """Split ``"wave-gms,wave-gms[tiny-vae+sft],unet"`` on the commas outside brackets; check every name."""
    labels = [label.strip() for label in re.findall(r"[^,\[\]]+(?:\[[^\]]*\])?", text) if label.strip()]
    for label in labels:
        if label not in NAMES:
            raise ConfigError(f"--models: unknown model {label!r}; valid names are: {', '.join(NAMES)}")
    return labels


def parse_int_list(text: str, option: str) -> list[int]:
    """``"128,224"`` -> ``[128, 224]``, with an error naming the option when an entry is not a positive integer."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers such as 128,224, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option}: expected positive integers, got {text!r}")
    return values


def resolve_model(label: str) -> tuple[type[SegmentationMethod], dict[str, Any]]:
    """The registered class and constructor options of a model label (a registered name or a variant)."""
    name, options = resolve(label)
    return get_model_class(name), dict(options)


def build_model(label: str, vae: str, seed: int) -> tuple[SegmentationMethod, str]:
    """The model of ``label`` with seeded random weights (real tiny-VAE weights from ``vae`` where they apply).

    Returns the model and a short description of its frozen part, for the table.
    """
    cls, options = resolve_model(label)
    torch.manual_seed(seed)
    uses_real_vae = bool(vae) and cls.name in TINY_VAE_METHODS
    model = (
        create_model(cls.name, pretrained={"vae": vae}, **options)
        if uses_real_vae
        else cls.with_random_weights(**options)
    )
    autoencoder = getattr(model, "autoencoder", None)
    if autoencoder is None:
        return model, "none"
    weights = "--vae weights" if uses_real_vae else "random"
    return model, f"{type(autoencoder).__name__} {autoencoder.latent_channels} ch, {weights}"


def turn_off_memory_savings(model: torch.nn.Module) -> None:
    """Turn the memory-lean frozen layers back into ``nn.Conv2d`` / ``nn.ReLU`` (same weights) and gradient
    checkpointing off: the autograd graph then keeps every activation, as before genmedseg had them."""
    for module in model.modules():
        if isinstance(module, FrozenConv2d):
            module.__class__ = torch.nn.Conv2d
        elif isinstance(module, MaskedReLU):
            module.__class__ = torch.nn.ReLU
        if getattr(module, "gradient_checkpointing", False):
            module.gradient_checkpointing = False


def synthetic_batch(
    batch: int, size: int, seed: int, device: torch.device, memory_format: torch.memory_format
) -> dict[str, torch.Tensor]:
    """Seeded random images in [0, 1] and binary masks, drawn on the CPU so every device sees the same values."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=generator)
    masks = (torch.rand(batch, 1, size, size, generator=generator) > 0.5).float()
    return {
        "image": images.to(device).contiguous(memory_format=memory_format),
        "mask": masks.to(device).contiguous(memory_format=memory_format),
    }


def saved_activation_bytes(model: SegmentationMethod, size: int, batch: int) -> int:
    """Bytes of the distinct tensors a training step keeps for its backward pass: a floor of its extra memory.

    ``model`` lives on the meta device, so the forward pass allocates and computes nothing; this lets a
    configuration that cannot fit be skipped instead of being killed for memory (along with its neighbours).
    """
    parameters = {tensor.untyped_storage()._cdata for tensor in [*model.parameters(), *model.buffers()]}
    # Keyed by the storage's C++ address; holding the storages keeps an address from being reused.
    saved: dict[int, torch.UntypedStorage] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage
        return tensor

    inputs = {
        "image": torch.zeros(batch, 3, size, size, device="meta"),
        "mask": torch.zeros(batch, 1, size, size, device="meta"),
    }
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model.training_loss(inputs)
    return sum(storage.nbytes() for storage in saved.values())


def training_memory_floors(labels: list[str], sizes: list[int], batches: list[int]) -> dict[tuple[str, int, int], int]:
    """``saved_activation_bytes`` of every (model, size, batch), with random-weight models on the meta device."""
    floors = {}
    for label in labels:
        cls, options = resolve_model(label)
        with torch.device("meta"):
            model = cls.with_random_weights(**options)
        for size in sizes:
            for batch in batches:
                floors[label, size, batch] = saved_activation_bytes(model, size, batch)
    return floors


def available_memory_bytes(device: torch.device) -> int:
    """Memory a new process can use now: free GPU memory on CUDA, ``MemAvailable`` (Linux) or free pages on CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 2**10
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds that ``run()`` takes (GPU work included) and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    output = run()
    synchronize(device)
    return time.perf_counter() - start, output


def measure(
    run_step: Callable[[int], Any], device: torch.device, repeats: int, warmup: int, max_seconds: float
) -> tuple[float, float, int, Any]:
    """Median seconds per call of ``run_step(step)``, FLOPs of one call, timed calls made, first call's output.

    The first call runs under the FLOP counter and doubles as warm-up; ``warmup`` more untimed calls follow, then
    ``repeats`` timed ones. Once the calls have used ``max_seconds`` no further calls start, but at least one call
    is always timed, so a very slow configuration costs two calls.
    """
    with FlopCounterMode(display=False) as counter:
        spent, first_output = timed(lambda: run_step(0), device)
    step = 1
    for _ in range(warmup):
        if spent > max_seconds:
            break
        spent += timed(lambda step=step: run_step(step), device)[0]
        step += 1
    times: list[float] = []
    while len(times) < repeats and (not times or spent <= max_seconds):
        seconds = timed(lambda step=step: run_step(step), device)[0]
        times.append(seconds)
        spent += seconds
        step += 1
    return statistics.median(times), float(counter.get_total_flops()), len(times), first_output


def peak_resident_mib() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_configuration(config: Config) -> Measurement:
    """Build the model of ``config``, time inference then training, and read the peak memory.

    Inference runs first, so that the two memory formats are compared on identical (initial) weights. Every
    training step reseeds the global generator with ``seed + step``, so that both formats draw the same latent
    samples.
    """
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline_memory = peak_resident_mib()
    memory_format = MEMORY_FORMATS[config.memory_format]
    model, frozen_part = build_model(config.model, config.vae, config.seed)
    if not config.memory_savings:
        turn_off_memory_savings(model)
    model = model.to(device, memory_format=memory_format)
    batch = synthetic_batch(config.batch, config.size, config.seed, device, memory_format)
    schedule = {"device": device, "repeats": config.repeats, "warmup": config.warmup, "max_seconds": config.max_seconds}
    half = config.precision == HALF_PRECISION

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=half)

    def infer(step: int) -> torch.Tensor:
        with torch.inference_mode(), autocast():
            return model.predict(batch["image"]).probability

    model.eval()
    infer_s, infer_flops, infer_repeats, probabilities = measure(infer, **schedule)

    defaults = TrainConfig()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=defaults.lr, weight_decay=defaults.weight_decay)

    def train(step: int) -> torch.Tensor:
        torch.manual_seed(config.seed + step)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = model.training_loss(batch)["loss"]
        loss.backward()
        optimizer.step()
        return loss.detach()

    model.train()
    train_s, train_flops, train_repeats, first_loss = measure(train, **schedule)

    if device.type == "cuda":
        peak_memory = torch.cuda.max_memory_allocated(device) / 2**20
        baseline_memory = 0.0
    else:
        peak_memory = peak_resident_mib()
    cut_short = [
        f"{name} {done} of {config.repeats} repeats"
        for name, done in (("train", train_repeats), ("infer", infer_repeats))
        if done < config.repeats
    ]
    note = f"{', '.join(cut_short)} (time limit {config.max_seconds:g} s)" if cut_short else ""
    return Measurement(
        model=config.model,
        frozen_part=frozen_part,
        size=config.size,
        batch=config.batch,
        memory_format=config.memory_format,
        precision=config.precision,
        train_step_s=train_s,
        train_flops=train_flops,
        train_repeats=train_repeats,
        first_loss=float(first_loss),
        infer_call_s=infer_s,
        infer_flops=infer_flops,
        infer_repeats=infer_repeats,
        mean_probability=float(probabilities.double().mean()),
        peak_memory_mib=peak_memory,
        baseline_memory_mib=baseline_memory,
        note=note,
    )


def run_in_fresh_process(config: Config) -> Measurement | str:
    """Run one configuration in a new Python process, so that its peak memory is its own.

    Returns the measurement, or a line saying why the process failed (out of memory, an exception), so that one
    failing configuration does not end a long benchmark.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(asdict(config))]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return Measurement(**json.loads(line[len(RESULT_PREFIX) :]))
    if process.returncode < 0:
        return f"failed: killed by signal {-process.returncode} (out of memory?)"
    last_lines = [line for line in process.stderr.splitlines() if line.strip()][-1:]
    sys.stderr.write(process.stderr)
    return f"failed: exit {process.returncode}: {' '.join(last_lines)}"


def matmul_peak_gflops(size: int, device: torch.device, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Best GFLOP/s of a ``size x size`` matmul in ``dtype`` (after one warm-up), with the current thread settings."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device, dtype)
    right = torch.randn(size, size, generator=generator).to(device, dtype)
    timed(lambda: left @ right, device)
    best = min(timed(lambda: left @ right, device)[0] for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device, threads: int) -> dict[str, str]:
    """What the numbers depend on: CPU, cores, memory, torch build and threads; GPU and its float32 modes."""
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    machine = {
        "CPU": f"{cpu_model_name()}, {usable_cores} usable of {os.cpu_count()} logical cores, {memory_gib:.0f} GiB",
        "system": platform.platform(),
        "Python / torch": f"{platform.python_version()} / {torch.__version__}",
        "oneDNN available": str(torch.backends.mkldnn.is_available()),
        "torch threads": str(threads),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        machine["GPU"] = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        # Left as training finds them; torch's defaults let convolutions (not matmuls) use TF32, so a model can
        # pass 100 % of the float32 matmul peak.
        tf32 = f"{torch.backends.cudnn.allow_tf32} / {torch.backends.cuda.matmul.allow_tf32}"
        machine["TF32 allowed (cuDNN convolutions / matmuls)"] = tf32
    return machine


def format_load_average() -> str:
    """The 1, 5 and 15-minute load averages, comma-separated."""
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def busy_machine_warning(max_idle_load: float = 0.5) -> str:
    """A warning when the 1-minute load average says other processes are running ("" when the machine is idle).

    Two processes with a full set of OpenMP threads each on the same cores slow each other down far more than
    twofold, so such timings say little about the code.
    """
    load = os.getloadavg()[0]
    if load <= max_idle_load:
        return ""
    return f"the machine was busy at the start (1-minute load average {load:.2f}): timings are unreliable"


def baseline_of(config: Config, run: set[tuple]) -> tuple[str, tuple] | None:
    """What a configuration is compared with, and that configuration's key: a bfloat16 run against float32 in the
    engine's format; the engine's float32 run against the one without memory savings where that ran, else against
    NCHW."""
    same = (config.model, config.size, config.batch)
    if config.precision == HALF_PRECISION:
        return "precision", (*same, ENGINE_FORMAT, FULL_PRECISION, True)
    unsaved = (*same, ENGINE_FORMAT, FULL_PRECISION, False)
    if unsaved in run:
        return "memory savings", unsaved
    return "memory format", (*same, BASELINE_FORMAT, FULL_PRECISION, True)


def table_rows(results: list[tuple[Config, Measurement | str]], peak_gflops: dict[str, float]) -> list[dict[str, Any]]:
    """One row per configuration in the engine's format: rates, % of peak and, where run, the comparison with its
    baseline (NCHW for float32, float32 for bfloat16).

    A configuration whose process failed gets a row with the reason in its note.
    """
    measured = {config.key(): result for config, result in results if isinstance(result, Measurement)}
    run = {config.key() for config, _ in results}
    rows = []
    for config, result in results:
        if config.memory_format != ENGINE_FORMAT or not config.memory_savings:
            continue
        if not isinstance(result, Measurement):
            rows.append(
                {"model": config.model, "size": config.size, "batch": config.batch, "precision": config.precision}
                | {"note": result}
            )
            continue
        peak = peak_gflops[result.precision]
        row: dict[str, Any] = {
            "model": result.model,
            "frozen_part": result.frozen_part,
            "size": result.size,
            "batch": result.batch,
            "precision": result.precision,
            "train_step_s": result.train_step_s,
            "train_img_s": result.batch / result.train_step_s,
            "train_gflop_step": result.train_flops / 1e9,
            "train_pct_peak": 100 * result.train_flops / 1e9 / result.train_step_s / peak,
            "infer_img_s": result.batch / result.infer_call_s,
            "infer_gflop_image": result.infer_flops / 1e9 / result.batch,
            "infer_pct_peak": 100 * result.infer_flops / 1e9 / result.infer_call_s / peak,
            "peak_memory_mib": result.peak_memory_mib,
            "baseline_memory_mib": result.baseline_memory_mib,
            "first_loss": result.first_loss,
            "note": result.note,
        }
        compared, key = baseline_of(config, run)
        baseline = measured.get(key)
        if isinstance(baseline, Measurement):
            row["compared_with"] = COMPARED_WITH[compared]
            row["train_speedup"] = baseline.train_step_s / result.train_step_s
            row["infer_speedup"] = baseline.infer_call_s / result.infer_call_s
            row["memory_ratio"] = result.peak_memory_mib / baseline.peak_memory_mib
            row["loss_rel_diff"] = relative_difference(result.first_loss, baseline.first_loss)
            row["proba_rel_diff"] = relative_difference(result.mean_probability, baseline.mean_probability)
            largest = max(row["loss_rel_diff"], row["proba_rel_diff"])
            row["agree"] = largest <= AGREEMENT_TOLERANCE[compared]
            if baseline.note:
                row["note"] = "; ".join(filter(None, [result.note, f"baseline: {baseline.note}"]))
        elif key in run:
            row["note"] = "; ".join(filter(None, [result.note, "baseline run failed"]))
        rows.append(row)
    return rows


def relative_difference(value: float, reference: float) -> float:
    """``|value - reference| / |reference|`` (0 when both are 0)."""
    if value == reference:
        return 0.0
    return abs(value - reference) / max(abs(reference), sys.float_info.min)


CSV_COLUMNS = (
    "model",
    "frozen_part",
    "size",
    "batch",
    "precision",
    "train_step_s",
    "train_img_s",
    "train_gflop_step",
    "train_pct_peak",
    "infer_img_s",
    "infer_gflop_image",
    "infer_pct_peak",
    "peak_memory_mib",
    "baseline_memory_mib",
    "first_loss",
    "compared_with",
    "train_speedup",
    "infer_speedup",
    "memory_ratio",
    "loss_rel_diff",
    "proba_rel_diff",
    "agree",
    "note",
)
# Markdown columns: header, row key, significant digits (0: as text).
MARKDOWN_COLUMNS = (
    ("model", "model", 0),
    ("frozen part", "frozen_part", 0),
    ("size", "size", 0),
    ("batch", "batch", 0),
    ("precision", "precision", 0),
    ("train s/step", "train_step_s", 3),
    ("train img/s", "train_img_s", 3),
    ("train GFLOP/step", "train_gflop_step", 3),
    ("train % of peak", "train_pct_peak", 2),
    ("infer img/s", "infer_img_s", 3),
    ("infer % of peak", "infer_pct_peak", 2),
)
COMPARISON_COLUMNS = (
    ("compared with", "compared_with", 0),
    ("train speed-up", "train_speedup", 3),
    ("infer speed-up", "infer_speedup", 3),
    ("memory ratio", "memory_ratio", 3),
    ("loss rel. diff", "loss_rel_diff", 2),
    ("agree", "agree", 0),
)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The table as CSV, full precision, empty cells where a value does not apply."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def format_cell(value: Any, digits: int) -> str:
    """A float with ``digits`` significant digits (whole numbers above that); booleans as yes/NO; text as it is."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def markdown_report(
    rows: list[dict[str, Any]],
    machine: dict[str, str],
    peaks: dict[str, list[float]],
    device: torch.device,
    compared: bool,
    command: str,
    warning: str = "",
) -> str:
    """The machine description, the matmul peak and the table, as Markdown (``warning`` in bold above them)."""
    memory_column = ("peak RSS MiB" if device.type == "cpu" else "peak CUDA MiB", "peak_memory_mib", 4)
    columns = [*MARKDOWN_COLUMNS, memory_column, *(COMPARISON_COLUMNS if compared else ()), ("note", "note", 0)]
    lines = [
        f"# Speed benchmark ({device.type})",
        "",
        f"Measured {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}`.",
        "",
        *([f"**Warning: {warning}.**", ""] if warning else []),
        *[f"- {key}: {value}" for key, value in machine.items()],
        *[
            f"- {PEAK_DTYPES[precision][0]} matmul peak: {max(runs):.1f} GFLOP/s (best of the runs at start and end:"
            f" {', '.join(f'{peak:.1f}' for peak in runs)})"
            for precision, runs in peaks.items()
        ],
        "",
        "| " + " | ".join(header for header, _, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *["| " + " | ".join(format_cell(row.get(key), digits) for _, key, digits in columns) + " |" for row in rows],
        "",
        "Training step: `training_loss` + backward + AdamW step; inference: `predict` under "
        f"`torch.inference_mode()` at the same batch size. Median of the timed repeats, in {ENGINE_FORMAT} format "
        "(the engine's). FLOPs count convolutions, matmuls and attention only (`FlopCounterMode`); "
        "% of peak = counted FLOPs / time / the matmul peak of the row's precision.",
    ]
    baselines = [row["baseline_memory_mib"] for row in rows if row.get("baseline_memory_mib")]
    if device.type == "cpu" and baselines:
        lines.append(
            "Peak RSS: the whole process of one configuration (inference and training), Python and torch included "
            f"(about {statistics.median(baselines):.0f} MiB before the model is built)."
        )
    if compared:
        lines.append(
            "Speed-up: the baseline's time / this row's, measured in the same run; the baseline of a float32 row is the"
            " same row without memory savings (plain nn.Conv2d / nn.ReLU frozen layers, no gradient checkpointing)"
            " where that ran, else the"
            f" contiguous (NCHW) format; that of a {HALF_PRECISION} row (bfloat16 autocast) is float32 in"
            f" {ENGINE_FORMAT}. Memory ratio: this row's peak / the baseline's. Agree: the first training loss and the"
            " mean inference probability (same initial weights and seeds) differ by at most"
            f" {AGREEMENT_TOLERANCE['memory format']:g} relative from an NCHW or no-savings baseline,"
            f" {AGREEMENT_TOLERANCE['precision']:g} from the float32 one."
        )
    return "\n".join(lines) + "\n"


def run_configurations(
    configs: list[Config], memory_floors: dict[tuple[str, int, int], int], device: torch.device
) -> list[tuple[Config, Measurement | str]]:
    """Run each configuration in a fresh process, skipping those whose training cannot fit in the free memory.

    Returns each configuration with its measurement or the reason it has none; prints progress to stderr.
    """
    results: list[tuple[Config, Measurement | str]] = []
    for index, config in enumerate(configs, 1):
        begin = time.perf_counter()
        floor_gib = memory_floors[config.model, config.size, config.batch] / 2**30
        available_gib = available_memory_bytes(device) / 2**30
        result = (
            run_in_fresh_process(config)
            if floor_gib < available_gib
            else f"skipped: a training step keeps {floor_gib:.1f} GiB for backward, {available_gib:.1f} GiB free"
        )
        results.append((config, result))
        summary = (
            f"train {result.train_step_s:.3f} s/step, infer {config.batch / result.infer_call_s:.1f} img/s, "
            f"peak {result.peak_memory_mib:.0f} MiB"
            if isinstance(result, Measurement)
            else result
        )
        name = (
            f"{config.model} {config.size}x{config.size} batch {config.batch} {config.memory_format} {config.precision}"
            f"{'' if config.memory_savings else ' without memory savings'}"
        )
        print(f"[{index}/{len(configs)}] {name}: {summary} ({time.perf_counter() - begin:.0f} s)", file=sys.stderr)
    return results


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring and benchmarks/README.md)."""
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated model names (default: every registered method; variants like wave-gms[sft] on request)",
    )
    parser.add_argument("--sizes", default="128,224", help="square image sides, comma-separated")
    parser.add_argument("--batches", default="1,12", help="batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls after the FLOP-counting first call")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--compare-memory-format", action="store_true", help="also run contiguous (NCHW)")
    parser.add_argument("--compare-precision", action="store_true", help="also run under bfloat16 autocast")
    parser.add_argument(
        "--compare-memory-savings",
        action="store_true",
        help="also run with plain nn.Conv2d / nn.ReLU frozen layers and without gradient checkpointing",
    )
    parser.add_argument(
        "--max-seconds-per-config",
        type=float,
        default=300.0,
        dest="max_seconds",
        help="no further call starts once a measurement (training or inference) has used this long; one always runs",
    )
    parser.add_argument("--matmul-size", type=int, default=None, help="matmul side (default 4096 CPU, 8192 GPU)")
    parser.add_argument(
        "--vae",
        default=os.environ.get(TINY_VAE_ENV, ""),
        help=f"tiny-VAE weights for Wave-GMS (default ${TINY_VAE_ENV}; empty: random TAESD-size weights)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="writes OUT.csv and OUT.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every configuration in its own process and write the CSV and Markdown tables."""
    args = parse_arguments(argv)
    if args.one is not None:
        measurement = run_configuration(Config(**json.loads(args.one)))
        print(RESULT_PREFIX + json.dumps(asdict(measurement)), flush=True)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device here; use --device cpu")
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError(f"--repeats {args.repeats} --warmup {args.warmup}: need 1 repeat or more, warm-up 0 or more")
    labels = parse_model_list(args.models)
    sizes = parse_int_list(args.sizes, "--sizes")
    batches = parse_int_list(args.batches, "--batches")
    for label in labels:
        multiple = resolve_model(label)[0].size_multiple
        if any(size % multiple for size in sizes):
            raise ConfigError(f"--sizes {args.sizes}: {label} needs sides divisible by {multiple}")
    out = args.out or Path(__file__).resolve().parent / "results" / f"speed-{args.device}"
    csv_path, markdown_path = Path(f"{out}.csv"), Path(f"{out}.md")
    csv_path.parent.mkdir(parents=True, exist_ok=True)

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    machine = describe_machine(device, args.threads)
    machine["--vae (Wave-GMS tiny-VAE weights)"] = args.vae or "none: random weights"
    load_at_start = format_load_average()
    warning = busy_machine_warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    matmul_size = args.matmul_size or (8192 if device.type == "cuda" else 4096)
    modes = [(ENGINE_FORMAT, FULL_PRECISION, True)]
    if args.compare_memory_format:
        modes.append((BASELINE_FORMAT, FULL_PRECISION, True))
    if args.compare_precision:
        modes.append((ENGINE_FORMAT, HALF_PRECISION, True))
    if args.compare_memory_savings:
        modes.append((ENGINE_FORMAT, FULL_PRECISION, False))
    precisions = dict.fromkeys(precision for _, precision, _ in modes)
    peaks = {
        precision: [matmul_peak_gflops(matmul_size, device, dtype=PEAK_DTYPES[precision][1])]
        for precision in precisions
    }
    for precision, runs in peaks.items():
        print(f"{PEAK_DTYPES[precision][0]} matmul {matmul_size}x{matmul_size}: {runs[0]:.1f} GFLOP/s", file=sys.stderr)

    settings = {
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "max_seconds": args.max_seconds,
        "seed": args.seed,
        "vae": args.vae,
    }
    configs = [
        Config(
            model=label,
            size=size,
            batch=batch,
            memory_format=memory_format,
            precision=precision,
            memory_savings=memory_savings,
            **settings,
        )
        for label in labels
        for size in sizes
        for batch in batches
        for memory_format, precision, memory_savings in modes
    ]
    started = time.perf_counter()
    results = run_configurations(configs, training_memory_floors(labels, sizes, batches), device)
    for precision, runs in peaks.items():
        runs.append(matmul_peak_gflops(matmul_size, device, dtype=PEAK_DTYPES[precision][1]))
    machine["load average (1, 5, 15 min) at start / end"] = f"{load_at_start} / {format_load_average()}"
    machine["benchmark wall time"] = f"{time.perf_counter() - started:.0f} s"

    rows = table_rows(results, {precision: max(runs) for precision, runs in peaks.items()})
    command = shlex.join(["python", "benchmarks/speed.py", *(sys.argv[1:] if argv is None else argv)])
    write_csv(csv_path, rows)
    compared = args.compare_memory_format or args.compare_precision or args.compare_memory_savings
    report = markdown_report(rows, machine, peaks, device, compared, command, warning)
    markdown_path.write_text(report)
    print(f"wrote {csv_path} and {markdown_path}", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except GenMedSegError as error:
        sys.exit(f"error: {error}")
