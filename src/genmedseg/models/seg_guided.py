"""Segmentation-guided diffusion (Konz et al., MICCAI 2024, arXiv 2402.05210): images synthesised from masks.

A diffusers ``UNet2DModel`` denoises the noisy image concatenated with the mask's conditioning channels, at every
step of training and of sampling; training is the DDPM epsilon objective (:class:`GaussianDiffusion`, linear betas
over 1000 steps), sampling is DDPM, DDIM or DPM-Solver++ from the same schedule.

Conditioning (``conditioning``):

- ``class-channels`` (default): one binary channel per non-background class (``num_classes - 1`` channels);
- ``single-channel``: the original's one channel holding ``k / 255`` for class ``k`` (what ``ToTensor`` makes of a
  PNG of class ids);
- ``none``: an unconditional image model of the same architecture.

Mask-ablated training (``mask_ablation=True``) removes each non-background class from a training mask with
probability ``ablation_probability`` (its pixels become background), drawn independently **per sample**; the
released code draws once per batch, so all images of a batch lose the same classes. Masks with classes missing are
then in the training distribution, so the model still follows them.

Example::

    >>> model = SegGuidedDiffusion(image_size=64, num_classes=3)
    >>> labels = torch.randint(0, 3, (2, 1, 64, 64))
    >>> model.generate(labels, steps=2).shape
    torch.Size([2, 3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from genmedseg.errors import ConfigError, DataError, check_choice
from genmedseg.models.base import GenerationMethod, Generators, SamplingOption, per_image_randn
from genmedseg.models.diffusion import SAMPLERS, GaussianDiffusion

CONDITIONINGS = ("class-channels", "single-channel", "none")
SINGLE_CHANNEL_SCALE = 255.0
"""Class ``k`` is ``k / 255`` in the original's single conditioning channel (``ToTensor`` of an 8-bit PNG of ids)."""

PAPER_UNET: dict[str, Any] = {
    "block_channels": [128, 128, 256, 256, 512, 512],
    "attention_levels": [4],
    "layers_per_block": 2,
    "norm_groups": 32,
    "attention_head_dim": 8,
}
"""The released network at 256 x 256: six levels, self-attention at the fifth (16 x 16), diffusers' defaults else."""


class SegGuidedDiffusion(GenerationMethod):
    """Segmentation-guided diffusion: a DDPM whose UNet sees the mask beside the noisy image (mask -> image).

    Args:
        image_size: side of the square training input; a multiple of the UNet's stride ``2 ** (levels - 1)``.
        image_channels: 1 (grayscale: the mean of the RGB channels is modelled) or 3 (RGB).
        num_classes: class ids of the masks, background 0 included (2 for a binary mask).
        conditioning: ``class-channels``, ``single-channel`` (the original's ``k / 255``) or ``none``.
        mask_ablation: drop each class from a training mask with ``ablation_probability``, per sample.
        ablation_probability: the chance that a class is dropped (the paper's 0.5).
        block_channels: channels of the UNet's levels (their count sets the stride); the default is a CPU-size
            network, :data:`PAPER_UNET` the paper's.
        attention_levels: levels (0 = full resolution) whose blocks have self-attention, on both paths.
        layers_per_block: residual blocks per level.
        norm_groups: GroupNorm groups (must divide every entry of ``block_channels``).
        attention_head_dim: channels per attention head.
        train_steps: diffusion steps T of the training schedule.
    """

    name = "seg-guided-diffusion"
    sampling_options = {
        "sampler": SamplingOption(
            "ddim", "reverse process: ddpm (ancestral, the original's 1000 steps), ddim (eta 0) or dpm-solver", SAMPLERS
        ),
        "steps": SamplingOption(50, "denoising steps (the original: 1000 with ddpm, 50 with ddim)", minimum=1),
        "seed": SamplingOption(0, "seeds every image's noise (keyed by the mask's name)"),
    }
    validation_sampling = {"sampler": "ddim", "steps": 10}
    # The released optimisation: AdamW at 1e-4 (torch's weight decay 0.01), gradients clipped to norm 1.0, a linear
    # warm-up then cosine decay stepped per iteration, 200 epochs, batch 16 (README, 256 x 256 on 48 GB), no EMA.
    # The warm-up is 500 iterations there; genmedseg counts it in epochs: the configs convert it per dataset.
    training_defaults = {
        "lr": 1e-4,
        "weight_decay": 0.01,
        "schedule": "warmup-cosine",
        "warmup_epochs": 5,
        "grad_clip": 1.0,
        "epochs": 200,
        "batch_size": 16,
    }

    def __init__(
        self,
        image_size: int = 64,
        image_channels: int = 3,
        num_classes: int = 2,
        conditioning: str = "class-channels",
        mask_ablation: bool = False,
        ablation_probability: float = 0.5,
        block_channels: Sequence[int] = (32, 64, 64, 128),
        attention_levels: Sequence[int] = (2,),
        layers_per_block: int = 1,
        norm_groups: int = 16,
        attention_head_dim: int = 8,
        train_steps: int = 1000,
    ) -> None:
        block_channels, attention_levels = [int(c) for c in block_channels], [int(a) for a in attention_levels]
        _check_architecture(image_size, block_channels, attention_levels, norm_groups)
        # The stride of this network, not of the class: the base constructor checks image_size against it.
        self.size_multiple = 2 ** (len(block_channels) - 1)
        super().__init__(image_size)
        if image_channels not in (1, 3):
            raise ConfigError(f"image_channels={image_channels}: choose 1 (grayscale) or 3 (RGB)")
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}: at least 2 (background 0 and one class)")
        check_choice("conditioning", conditioning, CONDITIONINGS)
        if conditioning == "single-channel" and num_classes > SINGLE_CHANNEL_SCALE + 1:
            raise ConfigError(f"conditioning=single-channel holds at most 256 classes (k/255), not {num_classes}")
        if mask_ablation and conditioning == "none":
            raise ConfigError(
                "mask_ablation needs a mask to ablate; an unconditional model (conditioning=none) has none"
            )
        if not 0.0 <= ablation_probability <= 1.0:
            raise ConfigError(f"ablation_probability={ablation_probability}: a probability in [0, 1]")
        self.options = {
            "image_size": image_size,
            "image_channels": image_channels,
            "num_classes": num_classes,
            "conditioning": conditioning,
            "mask_ablation": mask_ablation,
            "ablation_probability": ablation_probability,
            "block_channels": block_channels,
            "attention_levels": attention_levels,
            "layers_per_block": layers_per_block,
            "norm_groups": norm_groups,
            "attention_head_dim": attention_head_dim,
            "train_steps": train_steps,
        }
        self.image_channels, self.num_classes, self.conditioning = image_channels, num_classes, conditioning
        self.mask_ablation, self.ablation_probability = mask_ablation, ablation_probability
        from diffusers import UNet2DModel

        levels = range(len(block_channels))
        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=image_channels + self.conditioning_channels,
            # The image's own channel count: the original's RGB bug was an output sized for one channel.
            out_channels=image_channels,
            layers_per_block=layers_per_block,
            block_out_channels=tuple(block_channels),
            down_block_types=tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in levels),
            up_block_types=tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(levels)),
            norm_num_groups=norm_groups,
            attention_head_dim=attention_head_dim,
        )
        self.diffusion = GaussianDiffusion(train_steps=train_steps)

    @property
    def conditioning_channels(self) -> int:
        """Channels the mask adds to the UNet's input."""
        return {"class-channels": self.num_classes - 1, "single-channel": 1, "none": 0}[self.conditioning]

    # ------------------------------------------------------------------------------------------------- the model

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """Conditioning channels ``(B, conditioning_channels, H, W)`` of class ids ``(B, 1, H, W)``."""
        if self.conditioning == "class-channels":
            classes = torch.arange(1, self.num_classes, device=labels.device).view(1, -1, 1, 1)
            return (labels == classes).float()
        if self.conditioning == "single-channel":
            return labels.float() / SINGLE_CHANNEL_SCALE
        return labels.new_zeros((labels.shape[0], 0, *labels.shape[-2:]), dtype=torch.float32)

    def ablate(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids with each non-background class set to background with ``ablation_probability``, drawn
        independently for every sample (the global RNG, which the trainer seeds)."""
        batch = labels.shape[0]
        dropped = torch.rand(batch, self.num_classes - 1, device=labels.device) < self.ablation_probability
        keep = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=labels.device), ~dropped], dim=1)
        kept = keep.gather(1, labels.flatten(1)).view_as(labels)
        return labels * kept

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``noisy`` images ``(B, image_channels, H, W)`` at ``timesteps``, given the mask."""
        inputs = torch.cat([noisy, conditioning.to(noisy.dtype)], dim=1)
        return self.unet(inputs, timesteps).sample

    def model_images(self, images: torch.Tensor) -> torch.Tensor:
        """Batch images ``(B, 3, H, W)`` in [0, 1] as the modelled ``(B, image_channels, H, W)`` in [-1, 1]."""
        if self.image_channels == 1:
            images = images.mean(dim=1, keepdim=True)
        return images * 2.0 - 1.0

    def check_labels(self, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.long()
        if labels.ndim != 4 or labels.shape[1] != 1:
            raise ValueError(f"label masks must be (B, 1, H, W) class ids, got shape {tuple(labels.shape)}")
        high, low = int(labels.max()), int(labels.min())
        if low < 0 or high >= self.num_classes:
            bad = high if high >= self.num_classes else low
            raise DataError(
                f"a mask holds class id {bad}, outside 0..{self.num_classes - 1}; "
                f"train with --option num_classes={max(high + 1, 2)} (ids 0..K-1, background 0)"
            )
        stride = self.size_multiple
        if labels.shape[-1] % stride or labels.shape[-2] % stride:
            raise ConfigError(
                f"masks of {labels.shape[-2]}x{labels.shape[-1]}: both sides must be multiples of {stride}, the "
                "UNet's stride"
            )
        return labels

    # ------------------------------------------------------------------------------------------------- training

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = self.model_images(batch["image"])
        labels = self.check_labels(batch["labels"])
        if self.mask_ablation:
            labels = self.ablate(labels)
        noise = torch.randn_like(images)
        timesteps = self.diffusion.random_timesteps(images.shape[0], images.device)
        predicted = self.denoise(self.diffusion.add_noise(images, noise, timesteps), timesteps, self.condition(labels))
        return {"loss": F.mse_loss(predicted, noise)}

    # ------------------------------------------------------------------------------------------------- inference

    @torch.no_grad()
    def generate(self, masks: torch.Tensor, *, generator: Generators = None, **sampling: Any) -> torch.Tensor:
        """Images ``(B, image_channels, H, W)`` in [0, 1] for class-id masks ``(B, 1, H, W)`` (sides: multiples of the
        stride); image ``i``'s noise comes from ``generator[i]``."""
        options = self.resolve_sampling(sampling)
        labels = self.check_labels(masks)
        conditioning = self.condition(labels)
        reference = next(self.unet.parameters())
        noise = per_image_randn(generator, labels.shape[0], (self.image_channels, *labels.shape[-2:]), reference)
        sample = self.diffusion.sample(
            lambda noisy, timesteps: self.denoise(noisy, timesteps, conditioning),
            noise,
            generator,
            sampler=options["sampler"],
            steps=options["steps"],
        )
        return ((sample.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _check_architecture(
    image_size: int, block_channels: list[int], attention_levels: list[int], norm_groups: int
) -> None:
    """Refuse an architecture diffusers would fail on later, with the fix."""
    if not block_channels:
        raise ConfigError("block_channels: give the channels of at least one level")
    stride = 2 ** (len(block_channels) - 1)
    if image_size < stride or image_size % stride:
        fitting = max(stride, image_size - image_size % stride)
        raise ConfigError(
            f"image_size {image_size} is not a multiple of {stride}, the stride of a UNet with {len(block_channels)} "
            f"levels (each but the last halves the image); use e.g. {fitting}, or fewer levels in block_channels"
        )
    bad = [channels for channels in block_channels if channels % norm_groups]
    if bad:
        raise ConfigError(f"norm_groups={norm_groups} must divide every entry of block_channels; {bad} are not")
    outside = [level for level in attention_levels if not 0 <= level < len(block_channels)]
    if outside:
        raise ConfigError(f"attention_levels {outside}: levels are 0..{len(block_channels) - 1}")
