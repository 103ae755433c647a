"""``genmedseg export``: ONNX graphs that onnxruntime runs like PyTorch, with a dynamic batch and a stated contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from conftest import TINY_OPTIONS
from genmedseg.cli import main
from genmedseg.engine.export import export_onnx
from genmedseg.errors import ExportError
from genmedseg.models.base import Prediction, SegmentationMethod
from genmedseg.models.registry import create_model, load_pretrained


def tiny_model_folder(tmp_path: Path, name: str, pretrained: dict[str, str]) -> Path:
    torch.manual_seed(0)
    model = create_model(name, pretrained=pretrained, image_size=32, **TINY_OPTIONS[name]).eval()
    return model.save_pretrained(tmp_path / name)


@pytest.mark.parametrize("name", ["unet", pytest.param("wave-gms", marks=pytest.mark.slow)])
def test_a_single_pass_segmenter_exports_its_whole_inference(
    name: str, tiny_vae_dir: Path, synthetic_data: Path, tmp_path: Path
) -> None:
    folder = tiny_model_folder(tmp_path, name, {"vae": str(tiny_vae_dir)} if name == "wave-gms" else {})
    report = export_onnx(folder, tmp_path / f"{name}.onnx", data_root=synthetic_data)
    assert report.max_abs_difference <= 1e-4 and "images of data" in report.checked_on
    metadata = {entry.key: entry.value for entry in onnx.load(str(report.path)).metadata_props}
    assert metadata["genmedseg.model"] == name and "RGB in [0, 1]" in metadata["genmedseg.contract"]
    # Any batch size: five images at once, none of them seen at export.
    session = onnxruntime.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    images = torch.rand(5, 3, 32, 32)
    (probability,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = load_pretrained(folder).predict_proba(images).numpy()
    np.testing.assert_allclose(probability, expected, atol=1e-4)


class Sampler(SegmentationMethod):
    """A segmenter whose ``predict`` is not one graph (it would sample): no default export."""

    name = "sampler"

    def predict(self, images, *, size=None, prompts=None, generator=None, **sampling) -> Prediction:
        return Prediction(torch.rand_like(images[:, :1]))


def test_export_through_the_cli_and_a_method_that_says_why_not(synthetic_data: Path, tmp_path: Path, capsys) -> None:
    folder = tiny_model_folder(tmp_path, "unet", {})
    assert main(["export", str(folder), "--onnx", str(tmp_path / "unet.onnx"), "--data", str(synthetic_data)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    with pytest.raises(ExportError, match="sampler samples, takes prompts or answers at any resolution"):
        Sampler(32).export_graph()
