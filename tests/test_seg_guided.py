"""Segmentation-guided diffusion: seeded generation, masks with classes missing, the two conditionings, per-sample
mask ablation, grayscale and RGB images, and the CLI from training to a generated dataset (tiny networks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_OPTIONS
from genmedseg.cli import main
from genmedseg.errors import ConfigError, DataError
from genmedseg.models.base import image_generators
from genmedseg.models.seg_guided import PAPER_UNET, SegGuidedDiffusion

TINY = TINY_OPTIONS["seg-guided-diffusion"]
SIZE = 16


def tiny_model(**options) -> SegGuidedDiffusion:
    torch.manual_seed(0)
    return SegGuidedDiffusion(image_size=SIZE, **{**TINY, **options}).eval()


def three_class_masks(batch: int = 2) -> torch.Tensor:
    labels = torch.zeros(batch, 1, SIZE, SIZE, dtype=torch.long)
    labels[:, :, 2:8, 2:8] = 1
    labels[:, :, 9:14, 6:15] = 2
    return labels


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_generation_is_deterministic_under_a_seed_and_independent_of_the_batch(sampler: str) -> None:
    model = tiny_model(num_classes=3)
    masks = three_class_masks(3)
    sampling = {"sampler": sampler, "steps": 3}
    first = model.generate(masks, generator=image_generators(7, ["a", "b", "c"]), **sampling)
    again = model.generate(masks, generator=image_generators(7, ["a", "b", "c"]), **sampling)
    assert torch.equal(first, again)
    alone = model.generate(masks[1:2], generator=image_generators(7, ["b"]), **sampling)
    torch.testing.assert_close(alone[0], first[1])
    other_seed = model.generate(masks, generator=image_generators(8, ["a", "b", "c"]), **sampling)
    assert not torch.equal(first, other_seed)


def test_a_mask_with_a_class_removed_still_generates() -> None:
    model = tiny_model(num_classes=3, mask_ablation=True)
    masks = three_class_masks()
    masks[masks == 2] = 0  # class 2 absent; blank masks too
    for labels in (masks, torch.zeros_like(masks)):
        images = model.generate(labels, generator=image_generators(0, ["a", "b"]), steps=2)
        assert images.shape == (2, 3, SIZE, SIZE) and torch.isfinite(images).all()
        assert images.min() >= 0 and images.max() <= 1


def test_class_channels_and_the_original_single_channel() -> None:
    labels = three_class_masks(1)
    channels = tiny_model(num_classes=3).condition(labels)
    assert channels.shape == (1, 2, SIZE, SIZE)  # one per non-background class
    assert torch.equal(channels[0, 0], (labels[0, 0] == 1).float())
    assert torch.equal(channels[0, 1], (labels[0, 0] == 2).float())
    single = tiny_model(num_classes=3, conditioning="single-channel")
    assert single.condition(labels).shape == (1, 1, SIZE, SIZE)
    assert torch.equal(single.condition(labels)[0, 0], labels[0, 0].float() / 255)  # k / 255, as ToTensor gives
    assert single.unet.config.in_channels == 3 + 1
    unconditional = tiny_model(conditioning="none")
    assert unconditional.unet.config.in_channels == 3 and unconditional.condition(labels).shape[1] == 0
    assert unconditional.generate(labels.clamp(max=1), steps=2).shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ConfigError, match="conditioning=none"):
        tiny_model(conditioning="none", mask_ablation=True)


def test_the_conditioning_reaches_the_network() -> None:
    """Different masks, same noise: different images (the mask channels are an input of every step)."""
    model = tiny_model(num_classes=3)
    masks = three_class_masks()
    masks[1] = 0
    images = model.generate(masks, generator=image_generators(0, ["same", "same"]), steps=2)
    assert not torch.allclose(images[0], images[1])


def test_mask_ablation_is_drawn_per_sample() -> None:
    model = tiny_model(num_classes=3, mask_ablation=True)
    labels = three_class_masks(400)
    torch.manual_seed(0)
    ablated = model.ablate(labels)
    kept = torch.stack([(ablated == k).flatten(1).any(1) for k in (1, 2)], dim=1).float()  # (400, 2)
    # A class is kept or dropped whole; background stays background; nothing else changes.
    assert ((ablated == labels) | (ablated == 0)).all()
    for k, column in ((1, 0), (2, 1)):
        whole = (ablated == k).flatten(1).sum(1)
        assert set(whole[kept[:, column] > 0].tolist()) == {int((labels[0] == k).sum())}
    # Each class independently with probability 0.5, and different samples of one batch lose different classes.
    assert kept.mean(0).min() > 0.4 and kept.mean(0).max() < 0.6
    assert len({tuple(row) for row in kept.tolist()}) == 4
    assert torch.equal(tiny_model(num_classes=3, mask_ablation=True, ablation_probability=0.0).ablate(labels), labels)
    assert tiny_model(num_classes=3, mask_ablation=True, ablation_probability=1.0).ablate(labels).max() == 0


@pytest.mark.parametrize("image_channels", [1, 3])
def test_grayscale_and_rgb_images(image_channels: int) -> None:
    model = tiny_model(image_channels=image_channels)
    assert model.unet.config.out_channels == image_channels  # the original's RGB bug: one output channel
    labels = three_class_masks().clamp(max=1)
    images = model.generate(labels, generator=image_generators(0, ["a", "b"]), steps=2)
    assert images.shape == (2, image_channels, SIZE, SIZE)
    grey = torch.rand(2, 1, SIZE, SIZE)
    modelled = model.model_images(grey.expand(-1, 3, -1, -1))
    assert modelled.shape[1] == image_channels and torch.allclose(modelled[:, :1], grey * 2 - 1, atol=1e-6)
    loss = model.train().training_loss({"image": grey.expand(-1, 3, -1, -1), "labels": labels})["loss"]
    assert torch.isfinite(loss)


def test_sizes_and_class_ids_are_checked_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"not a multiple of 32, the stride of a UNet with 6 levels.*use e.g. 224"):
        SegGuidedDiffusion(image_size=250, **PAPER_UNET)
    with pytest.raises(ConfigError, match="norm_groups=32 must divide"):
        SegGuidedDiffusion(image_size=64, block_channels=[16, 32], norm_groups=32)
    model = tiny_model(num_classes=2)
    with pytest.raises(DataError, match=r"class id 2, outside 0\.\.1.*num_classes=3"):
        model.generate(three_class_masks(), steps=1)
    with pytest.raises(ConfigError, match="multiples of 2"):
        model.generate(torch.zeros(1, 1, 15, 16, dtype=torch.long), steps=1)


def test_a_short_training_learns_to_follow_the_mask() -> None:
    """150 Adam steps on bright squares (mask) on a dark ground: DDIM samples are bright inside the mask, dark out."""
    side = 8

    def squares(n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        labels = torch.zeros(n, 1, side, side, dtype=torch.long)
        for i in range(n):
            x, y = torch.randint(0, side // 2 + 1, (2,), generator=generator).tolist()
            labels[i, :, y : y + side // 2, x : x + side // 2] = 1
        return {"image": torch.where(labels.bool(), 0.9, 0.1).float().expand(-1, 3, -1, -1), "labels": labels}

    torch.manual_seed(0)
    model = SegGuidedDiffusion(
        image_size=side,
        block_channels=[16, 32],
        attention_levels=[],
        layers_per_block=1,
        norm_groups=8,
        train_steps=100,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.training_loss(squares(8))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = squares(8, torch.Generator().manual_seed(5))
    images = model.eval().generate(test["labels"], generator=image_generators(0, list("abcdefgh")), steps=10)
    inside = test["labels"].bool().expand_as(images)
    assert images[inside].mean() > images[~inside].mean() + 0.25


def test_paper_network() -> None:
    """The released UNet2DModel: six levels of (128, 128, 256, 256, 512, 512), attention at the fifth level."""
    model = SegGuidedDiffusion(image_size=256, image_channels=1, **PAPER_UNET)
    config = model.unet.config
    assert config.down_block_types == ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D")
    assert config.up_block_types == ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4
    assert config.in_channels == 2 and config.out_channels == 1 and model.size_multiple == 32
    assert model.num_trainable_parameters() == 113_669_761


def test_train_then_generate_through_the_cli(synthetic_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    options = [f"--option={key}={json.dumps(value)}" for key, value in TINY.items()]
    args = ["train", "--model", "seg-guided-diffusion", "--data", str(synthetic_data), "--image-size", "32"]
    args += ["--epochs", "1", "--batch-size", "4", "--accelerator", "cpu", "--preview-every", "1", "--out", str(run)]
    assert main([*args, *options]) == 0
    config = (run / "config.yaml").read_text()
    assert "grad_clip: 1.0" in config and "lr: 0.0001" in config  # the released optimisation, by default
    assert (run / "previews" / "epoch_0001.png").is_file()
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name
        sampling = ["--sample", "sampler=ddim", "--sample", "steps=2", "--sample", "seed=3"]
        assert main(["generate", str(run), "--masks", str(synthetic_data), "--out", str(out), *sampling]) == 0
        outputs.append(out)
    provenance = json.loads((outputs[0] / "provenance.json").read_text())
    assert provenance["method"] == "seg-guided-diffusion" and provenance["sampling"]["seed"] == 3
    for path in sorted((outputs[0] / "images").iterdir()):
        assert (outputs[1] / "images" / path.name).read_bytes() == path.read_bytes()
