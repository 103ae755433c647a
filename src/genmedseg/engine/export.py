"""``genmedseg export RUN --onnx FILE``: the model's inference graph as ONNX, checked against PyTorch.

What is exported is the method's :meth:`~genmedseg.models.base.Method.export_graph`: for a single-pass segmenter its
whole ``predict_proba`` (images in, probabilities out); for a sampling method one step of its denoiser; a method
with neither says why. The batch axis is dynamic. The input contract (size, normalisation, meaning of the outputs)
is stored in the ONNX file's metadata (``genmedseg.contract``) and printed. After writing, the file is run with
onnxruntime on real images (those of the run's own dataset when it is at hand, else the example inputs) and must give
the PyTorch outputs to within ``tolerance`` (1e-4), or the file is removed and the difference reported.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genmedseg.atomic import atomic_write
from genmedseg.data import discover, read_image, resize_image
from genmedseg.errors import ConfigError, DataError, ExportError
from genmedseg.folders import RunFolder
from genmedseg.models.registry import load_pretrained

TOLERANCE = 1e-4
CHECK_IMAGES = 4


@dataclass(frozen=True)
class ExportReport:
    """What was exported and how closely onnxruntime reproduces PyTorch."""

    path: Path
    contract: str
    max_abs_difference: float
    checked_on: str

    def summary(self) -> str:
        return (
            f"exported {self.path}\n  {self.contract}\n  onnxruntime vs PyTorch on {self.checked_on}: max abs "
            f"difference {self.max_abs_difference:.2e} (tolerance {TOLERANCE:g})"
        )


def export_onnx(
    model_path: str | os.PathLike, out: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> ExportReport:
    """Write the model's export graph to ``out`` (ONNX) and check it with onnxruntime (see the module docstring)."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ConfigError(f"ONNX export needs the export extra: pip install 'genmedseg[export]' ({error})") from None
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"{out}: give an output file ending in .onnx")
    method = load_pretrained(model_path)
    graph = method.export_graph()
    graph.module.eval()
    names = list(graph.inputs)
    batch = torch.export.Dim("batch", min=1, max=1024)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own progress and deprecation notes
        program = torch.onnx.export(
            graph.module,
            tuple(graph.inputs.values()),
            dynamo=True,
            input_names=names,
            output_names=list(graph.outputs),
            dynamic_shapes={name: {0: batch} for name in names},
            verbose=False,
        )
    model = program.model_proto
    metadata = {
        "genmedseg.model": method.name,
        "genmedseg.contract": graph.contract,
        "genmedseg.config": json.dumps(method.get_config()),
        "genmedseg.inputs": json.dumps(names),
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write(out, lambda path: onnx.save_model(model, str(path)))

    inputs, checked_on = _check_inputs(graph.inputs, method.image_size, model_path, data_root)
    with torch.no_grad():
        expected = graph.module(*inputs.values())
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    produced = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    difference = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(produced, expected, strict=True))
    if not difference <= TOLERANCE:
        out.unlink()
        raise ExportError(
            f"the ONNX graph of {method.name} differs from PyTorch by {difference:.2e} (> {TOLERANCE:g}) on "
            f"{checked_on}; the file was not kept. Report this with `genmedseg env` output"
        )
    return ExportReport(out, graph.contract, difference, checked_on)


def _check_inputs(
    examples: dict[str, torch.Tensor], image_size: int, model_path: str | os.PathLike, data_root: Any
) -> tuple[dict[str, torch.Tensor], str]:
    """Real images for the check when the graph takes images and a dataset is at hand, else the examples.

    A batch of ``CHECK_IMAGES`` (another size than the examples', so that the dynamic batch is exercised).
    """
    root = data_root or _run_data(Path(model_path))
    # The examples with one more in the batch: another batch size than at export, as a runtime would give.
    grown = {name: torch.cat([value, value[:1]]) for name, value in examples.items()}
    if list(examples) != ["images"] or root is None:
        return grown, f"{len(next(iter(grown.values())))} example inputs"
    try:
        index = discover(root)
    except DataError:
        return grown, f"{len(grown['images'])} example inputs (the run's dataset {root} is not at hand)"
    names = (index.splits.get("test") or index.splits.get("val") or list(index.pairs))[:CHECK_IMAGES]
    size = (image_size, image_size)
    images = [resize_image(torch.from_numpy(read_image(index.pairs[name][0])).permute(2, 0, 1), size) for name in names]
    return {"images": torch.stack(images)}, f"{len(names)} images of {Path(root).name} ({', '.join(names)})"


def _run_data(model_path: Path) -> str | None:
    """The dataset recorded by the run the model belongs to, if any."""
    for run in (RunFolder(model_path), RunFolder(model_path.parent)):
        if run.record.is_file():
            return json.loads(run.record.read_text()).get("data")
    return None
