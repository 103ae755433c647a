"""Every registered method, through one generic tester: a few lines per model (tiny random-weight variants)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import TINY_OPTIONS

from genmedseg.engine.inference import Segmenter
from genmedseg.errors import ConfigError
from genmedseg.models.base import load_pretrained
from genmedseg.models.registry import MODELS, create_model


class BaseModelTester:
    """Checks the surface the trainer, evaluator and predictor rely on. Subclasses name the model and its parts."""

    model_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    vae_fixture: ClassVar[str | None] = None
    size: ClassVar[int] = 32

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest):
        return self.make_model(request)

    def make_model(self, request: pytest.FixtureRequest):
        vae = str(request.getfixturevalue(self.vae_fixture)) if self.vae_fixture else None
        torch.manual_seed(0)
        return create_model(self.model_name, vae=vae, **{**TINY_OPTIONS[self.model_name], **self.options})

    def batch(self, height: int | None = None, width: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        height, width = height or self.size, width or self.size
        return {
            "image": torch.rand(2, 3, height, width, generator=generator),
            "mask": (torch.rand(2, 1, height, width, generator=generator) > 0.7).float(),
        }

    def test_loss_backward_reaches_every_trainable_parameter(self, model) -> None:
        losses = model.training_loss(self.batch())
        assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
        losses["loss"].backward()
        unused = {"mapping.heads.level3"} if "level3" not in getattr(model, "supervised_heads", ("level3",)) else set()
        missing = [
            name
            for name, p in model.named_parameters()
            if p.requires_grad and p.grad is None and not any(name.startswith(u) for u in unused)
        ]
        assert not missing, f"no gradient reached {missing[:5]}"
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    def test_probabilities_keep_the_input_size_and_range(self, model) -> None:
        proba = model.eval().predict_proba(self.batch()["image"])
        assert proba.shape == (2, 1, self.size, self.size)
        assert proba.min() >= 0 and proba.max() <= 1

    def test_non_square_inputs(self, model) -> None:
        multiple = model.size_multiple
        batch = self.batch(height=2 * multiple * 2, width=3 * multiple * 2)
        assert model.eval().predict_proba(batch["image"]).shape == batch["mask"].shape

    def test_any_image_array_through_the_python_api(self, model) -> None:
        """Grayscale, RGBA, 16-bit and odd-sized arrays all come back as masks of their own size."""
        segmenter = Segmenter(model, image_size=self.size, folder=Path("."), device="cpu")
        rng = np.random.default_rng(0)
        for image in (
            rng.integers(0, 256, (37, 53), dtype=np.uint8),
            rng.integers(0, 256, (41, 29, 4), dtype=np.uint8),
            rng.integers(0, 65536, (30, 30), dtype=np.uint16),
            rng.random((19, 64, 3), dtype=np.float32),
        ):
            mask = segmenter.predict(image)
            assert mask.shape == image.shape[:2] and mask.dtype == bool

    def test_save_and_load_round_trip(self, model, tmp_path: Path) -> None:
        images = self.batch()["image"]
        model.eval()
        model.save_pretrained(tmp_path / "model", card="# card\n", training={"image_size": self.size})
        loaded = load_pretrained(tmp_path / "model")
        assert type(loaded) is type(model)
        assert torch.equal(loaded.predict_proba(images), model.predict_proba(images))
        assert (tmp_path / "model" / "README.md").read_text() == "# card\n"

    def test_loss_is_deterministic_under_a_seed(self, request: pytest.FixtureRequest) -> None:
        losses = []
        for _ in range(2):
            model = self.make_model(request)
            torch.manual_seed(1)
            losses.append({k: v.item() for k, v in model.training_loss(self.batch()).items()})
        assert losses[0] == losses[1]


class TestWaveGMS(BaseModelTester):
    model_name = "wave-gms"
    vae_fixture = "tiny_vae_dir"


class TestWaveGMSWithSFT(BaseModelTester):
    model_name = "wave-gms"
    options = {"mapping": "sft"}
    vae_fixture = "tiny_vae_dir"


class TestWaveGMSWithTinyVAEEncoder(BaseModelTester):
    model_name = "wave-gms"
    options = {"image_encoder": "tiny-vae", "mapping": "sft"}
    vae_fixture = "tiny_vae_dir"


class TestGMS(BaseModelTester):
    model_name = "gms"
    vae_fixture = "tiny_sd_vae_dir"


class TestUNet(BaseModelTester):
    model_name = "unet"
    size = 32


def test_every_registered_model_has_a_tester() -> None:
    tested = {cls.model_name for cls in BaseModelTester.__subclasses__()}
    assert tested == set(MODELS)


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid models are: gms, unet, wave-gms"):
        create_model("wavegms")


def test_unknown_option_is_a_config_error(tiny_vae_dir: Path) -> None:
    with pytest.raises(ConfigError, match="wave-gms.*bad option"):
        create_model("wave-gms", vae=str(tiny_vae_dir), mapping_width=3)


def test_paper_parameter_counts() -> None:
    """Wave-GMS with a 4-channel TAESD: 1,035,692 (wavelet encoder) + 1,564,976 (ResAttnUNet_DS) = 2,600,668."""
    from genmedseg.models.gms import GMS
    from genmedseg.models.wave_gms import WaveGMS
    from genmedseg.vae import FrozenTinyVAE

    vae = FrozenTinyVAE(latent_channels=4, channels=8)
    assert WaveGMS(vae).num_trainable_parameters() == 2_600_668
    # Table 3 of the paper: frozen tiny-VAE image latent + SFT_UNet_DS + SKFF (2,995,712 + 13).
    assert WaveGMS(vae, image_encoder="tiny-vae", mapping="sft").num_trainable_parameters() == 2_995_725
    assert WaveGMS(vae, mapping="sft").num_trainable_parameters() == 1_035_692 + 2_995_725

    class FourChannelVAE(torch.nn.Module):
        latent_channels = 4

    assert GMS(FourChannelVAE()).num_trainable_parameters() == 1_564_976
