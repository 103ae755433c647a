"""Every registered method, through one generic tester per role: a few lines per model (tiny random-weight variants)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from conftest import TINY_OPTIONS
from genmedseg.engine.inference import Segmenter
from genmedseg.errors import ConfigError
from genmedseg.models.base import image_generators
from genmedseg.models.registry import MODELS, check_options, create_model, get_model_class, load_pretrained


class BaseModelTester:
    """Checks the surface the trainer relies on, for any role. Subclasses name the model and its parts."""

    model_name: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    pretrained_fixtures: ClassVar[dict[str, str]] = {}
    size: ClassVar[int] = 32

    @pytest.fixture
    def model(self, request: pytest.FixtureRequest):
        return self.make_model(request)

    def make_model(self, request: pytest.FixtureRequest):
        pretrained = {role: str(request.getfixturevalue(name)) for role, name in self.pretrained_fixtures.items()}
        torch.manual_seed(0)
        options = {**TINY_OPTIONS.get(self.model_name, {}), **self.options}
        return create_model(self.model_name, pretrained=pretrained, image_size=self.size, **options)

    def batch(self, height: int | None = None, width: int | None = None, seed: int = 0) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)
        height, width = height or self.size, width or self.size
        mask = (torch.rand(2, 1, height, width, generator=generator) > 0.7).float()
        return {
            "image": torch.rand(2, 3, height, width, generator=generator),
            "mask": mask,
            "labels": mask.long(),
            "name": ["a", "b"],
        }

    def test_loss_backward_reaches_every_trainable_parameter(self, model) -> None:
        """Every trainable parameter gets a gradient (so plain DDP works) and no frozen one does."""
        losses = model.training_loss(self.batch())
        assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"])
        losses["loss"].backward()
        missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"no gradient reached {missing[:5]}"
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)

    def test_validation_metrics_are_per_image_and_name_the_monitor(self, model) -> None:
        batch = self.batch()
        metrics = model.eval().validation_metrics(batch, generator=image_generators(0, batch["name"]))
        assert model.monitor[0] in metrics and model.monitor[1] in ("max", "min")
        assert all(values.shape == (2,) and torch.isfinite(values).all() for values in metrics.values())

    def test_preview_panels_are_images_in_the_unit_range(self, model) -> None:
        batch = self.batch()
        panels = model.eval().preview(batch, generator=image_generators(0, batch["name"]))
        for name, values in panels.items():
            assert values.ndim == 4 and values.shape[0] == 2 and values.shape[1] in (1, 3), name
            assert values.min() >= 0 and values.max() <= 1, name

    def test_config_round_trip_and_input_size(self, model) -> None:
        rebuilt = type(model).from_config(model.get_config())
        assert rebuilt.image_size == model.image_size == self.size
        assert rebuilt.state_dict().keys() == model.state_dict().keys()
        with pytest.raises(ConfigError, match="not a multiple"):
            type(model).from_config({**model.get_config(), "image_size": self.size + 1})

    def test_save_and_load_round_trip(self, model, tmp_path: Path) -> None:
        model.eval()
        model.save_pretrained(tmp_path / "model", card="# card\n")
        loaded = load_pretrained(tmp_path / "model")
        assert type(loaded) is type(model) and loaded.image_size == self.size
        pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
        assert (tmp_path / "model" / "README.md").read_text() == "# card\n"

    def test_loss_is_deterministic_under_a_seed(self, request: pytest.FixtureRequest) -> None:
        losses = []
        for _ in range(2):
            model = self.make_model(request)
            torch.manual_seed(1)
            losses.append({k: v.item() for k, v in model.training_loss(self.batch()).items()})
        assert losses[0] == losses[1]


class SegmenterTester(BaseModelTester):
    """What evaluation and prediction rely on."""

    sampling: ClassVar[dict[str, Any]] = {}

    def predict(self, model, images: torch.Tensor, **kwargs: Any):
        seeds = image_generators(0, map(str, range(images.shape[0])))
        return model.eval().predict(images, generator=seeds, **{**self.sampling, **kwargs})

    def test_probabilities_keep_the_input_size_and_range(self, model) -> None:
        prediction = self.predict(model, self.batch()["image"])
        assert prediction.probability.shape == (2, 1, self.size, self.size)
        for values in (prediction.probability, *prediction.maps.values()):
            assert values.shape == (2, 1, self.size, self.size) and values.min() >= 0 and values.max() <= 1

    def test_any_output_size(self, model) -> None:
        prediction = self.predict(model, self.batch()["image"], size=(17, 45))
        assert prediction.probability.shape == (2, 1, 17, 45)
        assert all(values.shape == (2, 1, 17, 45) for values in prediction.maps.values())

    def test_non_square_inputs(self, model) -> None:
        multiple = model.size_multiple
        batch = self.batch(height=2 * multiple * 2, width=3 * multiple * 2)
        assert self.predict(model, batch["image"]).probability.shape == batch["mask"].shape

    def test_same_seed_same_answer(self, model) -> None:
        images = self.batch()["image"]
        first, second = self.predict(model, images), self.predict(model, images)
        assert torch.equal(first.probability, second.probability)

    def test_any_image_array_through_the_python_api(self, model) -> None:
        """Grayscale, RGBA, 16-bit and odd-sized arrays all come back as masks of their own size."""
        segmenter = Segmenter(model, folder=Path("."), device="cpu")
        rng = np.random.default_rng(0)
        for image in (
            rng.integers(0, 256, (37, 53), dtype=np.uint8),
            rng.integers(0, 256, (41, 29, 4), dtype=np.uint8),
            rng.integers(0, 65536, (30, 30), dtype=np.uint16),
            rng.random((19, 64, 3), dtype=np.float32),
        ):
            mask = segmenter.predict(image, sampling=self.sampling)
            assert mask.shape == image.shape[:2] and mask.dtype == bool


class GeneratorTester(BaseModelTester):
    """What ``generate`` relies on."""

    sampling: ClassVar[dict[str, Any]] = {}

    def test_generates_images_for_label_masks(self, model) -> None:
        labels = self.batch()["labels"]
        images = model.eval().generate(labels, generator=image_generators(0, ["a", "b"]), **self.sampling)
        assert images.shape == (2, model.image_channels, self.size, self.size)
        assert images.min() >= 0 and images.max() <= 1


class TestWaveGMS(SegmenterTester):
    model_name = "wave-gms"
    pretrained_fixtures = {"vae": "tiny_vae_dir"}


class TestWaveGMSWithSFT(SegmenterTester):
    model_name = "wave-gms"
    options = {"mapping": "sft"}
    pretrained_fixtures = {"vae": "tiny_vae_dir"}


class TestWaveGMSWithTinyVAEEncoder(SegmenterTester):
    model_name = "wave-gms"
    options = {"image_encoder": "tiny-vae", "mapping": "sft"}
    pretrained_fixtures = {"vae": "tiny_vae_dir"}


class TestWaveGMSWithZeroHeads(SegmenterTester):
    model_name = "wave-gms"
    options = {"image_encoder": "tiny-vae", "mapping": "sft", "head_init": "zeros"}
    pretrained_fixtures = {"vae": "tiny_vae_dir"}

    def test_untrained_heads_predict_the_zero_latent(self, model) -> None:
        images = self.batch()["image"]
        heads = model.map_latent(model.image_latent(images, sample=False), images)
        assert set(heads) == {"level2", "level1", "out"} and all(not head.any() for head in heads.values())
        expected = model.decode_proba(torch.zeros_like(heads["out"]))
        assert torch.equal(model.predict_proba(images), expected)


class TestGMS(SegmenterTester):
    model_name = "gms"
    pretrained_fixtures = {"vae": "tiny_sd_vae_dir"}


class TestGMSWithZeroHeads(SegmenterTester):
    model_name = "gms"
    options = {"head_init": "zeros"}
    pretrained_fixtures = {"vae": "tiny_sd_vae_dir"}


class TestUNet(SegmenterTester):
    model_name = "unet"


class TestMedSegDiff(SegmenterTester):
    model_name = "medsegdiff"
    sampling = {"sampler": "ddim", "steps": 2, "ensemble": 2}


class TestMedSegDiffV1(SegmenterTester):
    model_name = "medsegdiff"
    options = {"version": "v1", "learned_variance": True}
    sampling = {"sampler": "ddpm", "steps": 2, "ensemble": 2}


class TestSegGuidedDiffusion(GeneratorTester):
    model_name = "seg-guided-diffusion"
    sampling = {"steps": 2}


class TestSegGuidedDiffusionGrayscaleAblated(GeneratorTester):
    model_name = "seg-guided-diffusion"
    options = {"image_channels": 1, "conditioning": "single-channel", "mask_ablation": True}
    sampling = {"sampler": "ddpm", "steps": 2}


class TestIMedSAM(SegmenterTester):
    model_name = "i-medsam"
    pretrained_fixtures = {"sam": "tiny_sam_file"}


class TestIMedSAMOnSAMViT(SegmenterTester):
    model_name = "i-medsam"
    pretrained_fixtures = {"sam": "tiny_vit_sam_file"}


class TestLiteMedSAM(SegmenterTester):
    model_name = "litemedsam"
    pretrained_fixtures = {"sam": "tiny_sam_file"}

    def test_loss_backward_reaches_every_trainable_parameter(self, model) -> None:
        """Zero-shot: nothing is trainable; the loss is the zero-shot answer's, without a graph."""
        losses = model.training_loss(self.batch())
        assert model.num_trainable_parameters() == 0
        assert losses["loss"].ndim == 0 and torch.isfinite(losses["loss"]) and not losses["loss"].requires_grad


def _all_testers(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_all_testers(direct))]


def test_every_registered_model_has_a_tester() -> None:
    tested = {cls.model_name for cls in _all_testers(BaseModelTester) if hasattr(cls, "model_name")}
    assert tested == set(MODELS)


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(
        ConfigError,
        match="valid models are: gms, i-medsam, litemedsam, medsegdiff, seg-guided-diffusion, unet, wave-gms",
    ):
        create_model("wavegms")


def test_unknown_option_lists_the_valid_ones_with_defaults(tiny_vae_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"no option mapping_width; its options: image_size=224, .*mapping='resattn'"):
        create_model("wave-gms", pretrained={"vae": str(tiny_vae_dir)}, mapping_width=3)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"gradient_checkpointing": "flase"}, "gradient_checkpointing='flase': expected true or false"),
        ({"latent_weight": "one"}, "latent_weight='one': expected a number such as 1.0"),
        ({"image_size": 224.5}, "image_size=224.5: expected an integer such as 224"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_before_any_weights_load(option: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_model("wave-gms", pretrained={"vae": "/nonexistent/weights"}, **option)


def test_an_integer_fits_a_float_option() -> None:
    check_options(get_model_class("wave-gms"), {"latent_weight": 2, "gradient_checkpointing": False})


def test_a_bug_inside_a_constructor_is_not_reported_as_a_bad_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only unknown option names are configuration errors; a TypeError from inside a constructor stays a TypeError."""
    from genmedseg.models import unet

    def broken(*args: Any, **kwargs: Any) -> None:
        raise TypeError("an internal bug")

    monkeypatch.setattr(unet, "BasicUNet", broken)
    with pytest.raises(TypeError, match="an internal bug"):
        create_model("unet", image_size=32)


@pytest.mark.parametrize("model_name", ["wave-gms", "gms"])
def test_unknown_head_init_names_the_valid_ones(model_name: str) -> None:
    with pytest.raises(ConfigError, match="head_init='zero': choose one of published, zeros"):
        get_model_class(model_name).with_random_weights(tiny=True, head_init="zero")


@pytest.mark.parametrize("checkpointing", [True, False])
def test_wave_gms_gradient_checkpointing_option_reaches_every_wavelet_unet(checkpointing: bool) -> None:
    model = get_model_class("wave-gms").with_random_weights(tiny=True, gradient_checkpointing=checkpointing)
    unets = [*model.encoder.extractors, model.encoder.aggregator]
    assert [unet.gradient_checkpointing for unet in unets] == [checkpointing] * 4
    assert model.options["gradient_checkpointing"] is checkpointing


def test_sampling_keys_are_checked_against_the_method() -> None:
    from genmedseg.models.unet import UNet

    with pytest.raises(ConfigError, match="unet takes no sampling options"):
        UNet.resolve_sampling({"steps": "10"})


def test_paper_parameter_counts() -> None:
    """Wave-GMS with a 4-channel TAESD: 1,035,692 (wavelet encoder) + 1,564,976 (ResAttnUNet_DS) = 2,600,668, of which
    4,864 are the level3 head that the paper never trains and genmedseg does not build."""
    from genmedseg.models.gms import GMS
    from genmedseg.models.wave_gms import WaveGMS
    from genmedseg.vae import FrozenTinyVAE

    level3_head = 128 * 2 + 128 * 4 * 9  # GroupNorm(128) + conv3x3 128 -> 4 without bias
    vae = FrozenTinyVAE(latent_channels=4, channels=8)
    assert WaveGMS(vae).num_trainable_parameters() == 2_600_668 - level3_head
    assert WaveGMS(vae, supervised_heads=("level3", "level2", "level1", "out")).num_trainable_parameters() == 2_600_668
    # Table 3 of the paper: frozen tiny-VAE image latent + SFT_UNet_DS + SKFF (2,995,712 + 13); its heads have a bias.
    assert (
        WaveGMS(vae, image_encoder="tiny-vae", mapping="sft").num_trainable_parameters() == 2_995_725 - level3_head - 4
    )
    assert WaveGMS(vae, mapping="sft").num_trainable_parameters() == 1_035_692 + 2_995_725 - level3_head - 4

    class FourChannelVAE(torch.nn.Module):
        latent_channels = 4

    assert GMS(FourChannelVAE()).num_trainable_parameters() == 1_564_976 - level3_head


def test_wave_gms_trains_under_bf16_autocast() -> None:
    """``--precision bf16-mixed`` runs the whole step (Haar pyramid included) in bf16; the loss stays within 3 % of
    float32 and every trainable weight gets a finite gradient."""
    from genmedseg.models.wave_gms import WaveGMS
    from genmedseg.vae import FrozenTinyVAE

    torch.manual_seed(0)
    model = WaveGMS(FrozenTinyVAE(latent_channels=4, channels=8), image_size=32, **TINY_OPTIONS["wave-gms"])
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": (torch.rand(2, 1, 32, 32) > 0.5).float()}
    torch.manual_seed(1)
    full = model.training_loss(batch)["loss"]
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model.training_loss(batch)["loss"]
    half.backward()
    assert float(half.detach()) == pytest.approx(float(full.detach()), rel=0.03)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
