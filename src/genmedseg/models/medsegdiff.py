"""MedSegDiff: a conditional DDPM on the mask, with the image as condition, as the released code trains it.

The mask (target in [-1, 1]) is diffused; a guided-diffusion style U-Net (diffusers ``ResnetBlock2D`` with the
timestep embedding, ``Attention``, ``Downsample2D`` / ``Upsample2D``) sees the image concatenated to the noisy mask
and predicts the noise (and, with ``learned_variance``, the variance interpolation of improved DDPM: the hybrid
loss). A second, image-only network (the released code's nnU-Net style "highway" net, :class:`ConditionNetwork`)
conditions it and gives its own sigmoid segmentation ``calibration``, trained with ``10 x MSE`` as released:

* ``version="anchor"`` (the released default, ``--version new``): decoder features of the condition network
  ("anchors", 32 + 32 + 64 channels for MedSegDiff-B) are added, detached, after the U-Net's first convolution;
* ``version="v1"`` (MedSegDiff-V1): at every down-sampled level the U-Net's features pass an FF-Parser (a learnable
  complex filter in the ``rfft2`` domain) and are fused with the condition encoder's features of that level by the
  paper's attentive "dynamic conditional encoding"; the condition bottleneck is added before the middle block; the
  answer combines the sample with ``calibration`` as the released V1 sampler does.

In both versions the condition network sees only the image, so inference computes it once per image and reuses it
for every step and every ensemble member; the K members of an ensemble run as one batch through the sampler of
:class:`~genmedseg.models.diffusion.GaussianDiffusion` (DDPM, DDIM or DPM-Solver++), without a graph.

Example::

    >>> model = MedSegDiff(image_size=32, model_channels=16, channel_mult=(1, 2), highway_pools=2)
    >>> prediction = model.eval().predict(torch.rand(2, 3, 32, 32), sampler="ddim", steps=2, ensemble=3)
    >>> prediction.probability.shape, sorted(prediction.maps)
    (torch.Size([2, 1, 32, 32]), ['calibration', 'uncertainty'])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from genmedseg.errors import ConfigError, check_choice
from genmedseg.models.base import Generators, Prediction, SamplingOption, SegmentationMethod, image_generators
from genmedseg.models.diffusion import SAMPLERS, GaussianDiffusion

VERSIONS = ("anchor", "v1")
FUSIONS = ("mean", "vote", "released")
CALIBRATION_WEIGHT = 10.0
"""Weight of the condition network's MSE loss in the released training loss."""

MEDSEGDIFF_B: dict[str, Any] = {
    "image_size": 256,
    "model_channels": 128,
    "channel_mult": [1, 1, 2, 2, 4, 4],
    "num_res_blocks": 2,
    "attention_resolutions": [16],
    "num_heads": 1,
    "learned_variance": True,
    "highway_channels": 32,
    "highway_pools": 5,
}
"""The README's MedSegDiff-B command (``--num_channels 128 --num_res_blocks 2 --attention_resolutions 16
--learn_sigma True``, ``channel_mult`` chosen for 256 by guided-diffusion) with the Generic_UNet highway net."""


def _groups(channels: int, groups: int) -> int:
    """GroupNorm groups for ``channels``: ``groups`` (32, as guided-diffusion) or the largest divisor below it."""
    return math.gcd(channels, groups)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialised (guided-diffusion zero-initialises the last layer of every residual branch)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


# ----------------------------------------------------------------------------------------------- condition network


def _conv_block(in_channels: int, out_channels: int, negative_slope: float) -> nn.Sequential:
    """Two nnU-Net conv units: conv 3x3 - batch norm - leaky ReLU (0.01)."""
    layers: list[nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [
            nn.Conv2d(channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(negative_slope),
        ]
    return nn.Sequential(*layers)


@dataclass
class Condition:
    """What the image-only condition network gives, once per image: its encoder features per level (full resolution
    first; what V1 fuses), the released "anchor" ``cat(d0, d0, up(d1))`` of its two finest decoder levels at full
    resolution (what version ``anchor`` adds) and its sigmoid ``calibration`` map."""

    encoder: list[torch.Tensor]
    anchor: torch.Tensor | None
    calibration: torch.Tensor

    def for_sampling(self, version: str, times: int) -> Condition:
        """What the U-Net of ``version`` reads, each image's ``times`` times in a row (image-major), for an ensemble
        run as one batch; the rest is left out so that it is not copied ``times`` times."""

        def rep(values: torch.Tensor) -> torch.Tensor:
            return values if times == 1 else values.repeat_interleave(times, dim=0)

        if version == "v1":
            return Condition([rep(f) for f in self.encoder], None, self.calibration)
        return Condition([], rep(self.anchor), self.calibration)


class ConditionNetwork(nn.Module):
    """The image-only "highway" net: an nnU-Net ``Generic_UNet``-style 2-D U-Net (conv-BN-LeakyReLU pairs, max
    pooling, bilinear up-sampling with skip concatenation), widths ``base * 2**level`` capped at ``max_channels``,
    a 1x1 convolution and a sigmoid for its own segmentation.

    Args:
        in_channels: image channels.
        base: width of the first level (32 as released).
        pools: number of 2x poolings (5 as released at 256).
        max_channels: width cap (nnU-Net's 480).
    """

    def __init__(self, in_channels: int, base: int = 32, pools: int = 5, max_channels: int = 480) -> None:
        super().__init__()
        self.widths = [min(base * 2**level, max_channels) for level in range(pools + 1)]
        slope = 0.01
        self.encoder = nn.ModuleList(
            _conv_block(in_channels if level == 0 else self.widths[level - 1], width, slope)
            for level, width in enumerate(self.widths)
        )
        self.decoder = nn.ModuleList(
            _conv_block(self.widths[level + 1] + self.widths[level], self.widths[level], slope)
            for level in reversed(range(pools))
        )
        self.head = nn.Conv2d(self.widths[0], 1, 1)

    def forward(self, images: torch.Tensor) -> Condition:
        encoder = []
        h = images
        for level, block in enumerate(self.encoder):
            h = block(h if level == 0 else F.max_pool2d(h, 2))
            encoder.append(h)
        decoder = []
        for block, skip in zip(self.decoder, reversed(encoder[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], dim=1))
            decoder.append(h)
        anchor = None
        if len(decoder) > 1:
            second = F.interpolate(decoder[-2], size=h.shape[-2:], mode="bilinear", align_corners=False)
            anchor = torch.cat([h, h, second], dim=1)
        return Condition(encoder, anchor, torch.sigmoid(self.head(h)))


# ---------------------------------------------------------------------------------------------------- MedSegDiff-V1


class FFParser(nn.Module):
    """A learnable complex filter on the ``rfft2`` spectrum of a feature map (MedSegDiff-V1's FF-Parser).

    The filter is defined on the spectrum of a ``height x width`` map and starts as the identity (1 + 0j). On another
    size (a non-square input, another resolution) it is resampled bilinearly on the centred frequency grid, so that
    each weight keeps acting on the same relative frequency (the released code fixes the size at 256).
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        weight = torch.zeros(channels, height, width // 2 + 1, 2)
        weight[..., 0] = 1.0
        self.weight = nn.Parameter(weight)

    def spectrum_filter(self, height: int, width: int) -> torch.Tensor:
        weight = self.weight
        if weight.shape[1:3] != (height, width // 2 + 1):
            centred = torch.fft.fftshift(weight, dim=1).permute(0, 3, 1, 2)  # (C, 2, H, W/2+1)
            centred = F.interpolate(centred, size=(height, width // 2 + 1), mode="bilinear", align_corners=True)
            weight = torch.fft.ifftshift(centred.permute(0, 2, 3, 1), dim=1)
        return torch.view_as_complex(weight.contiguous())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        height, width = features.shape[-2:]
        spectrum = torch.fft.rfft2(features.float(), norm="ortho")
        filtered = spectrum * self.spectrum_filter(height, width)
        return torch.fft.irfft2(filtered, s=(height, width), norm="ortho").to(features.dtype)


class DynamicConditionalEncoding(nn.Module):
    """MedSegDiff-V1's fusion of one level: ``A = (GN(c) * GN(g)) * c`` with ``c`` the condition encoder's features
    and ``g`` a 1x1 projection of the FF-Parsed U-Net features; ``A`` (projected back, zero-initialised) is added to
    the U-Net features."""

    def __init__(self, channels: int, condition_channels: int, height: int, width: int, groups: int) -> None:
        super().__init__()
        self.parser = FFParser(channels, height, width)
        self.gate = nn.Conv2d(channels, condition_channels, 1)
        self.gate_norm = nn.GroupNorm(_groups(condition_channels, groups), condition_channels)
        self.condition_norm = nn.GroupNorm(_groups(condition_channels, groups), condition_channels)
        self.out = _zero(nn.Conv2d(condition_channels, channels, 1))

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        gate = self.gate_norm(self.gate(self.parser(features)))
        attended = self.condition_norm(condition) * gate * condition
        return features + self.out(attended)


# ------------------------------------------------------------------------------------------------ diffusion U-Net


class EmbeddedSequential(nn.ModuleList):
    """Layers applied in turn; residual blocks also get the timestep embedding."""

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        for layer in self:
            h = layer(h, embedding) if isinstance(layer, ResnetBlock2D) else layer(h)
        return h


class DiffusionUNet(nn.Module):
    """The guided-diffusion U-Net of MedSegDiff from diffusers blocks: input ``cat(image, x_t)``, ``num_res_blocks``
    timestep-conditioned residual blocks per level (plus self-attention at the down-sampling factors in
    ``attention_resolutions``), a middle residual-attention-residual block, a symmetric decoder with skip
    concatenation and a zero-initialised output convolution. The condition enters as described in the module
    docstring (``version``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_heads: int,
        use_scale_shift_norm: bool,
        dropout: float,
        norm_groups: int,
        version: str,
        condition_widths: Sequence[int],
    ) -> None:
        super().__init__()
        self.version = version
        embed = 4 * model_channels
        self.time_proj = Timesteps(model_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(model_channels, embed)
        norm = "scale_shift" if use_scale_shift_norm else "default"

        def resblock(cin: int, cout: int) -> ResnetBlock2D:
            block = ResnetBlock2D(
                in_channels=cin,
                out_channels=cout,
                temb_channels=embed,
                dropout=dropout,
                groups=_groups(cin, norm_groups),
                groups_out=_groups(cout, norm_groups),
                eps=1e-5,
                time_embedding_norm=norm,
            )
            _zero(block.conv2)
            return block

        def attention(channels: int) -> Attention:
            layer = Attention(
                channels,
                heads=num_heads,
                dim_head=channels // num_heads,
                eps=1e-5,
                norm_num_groups=_groups(channels, norm_groups),
                residual_connection=True,
                bias=True,
                upcast_softmax=True,
                _from_deprecated_attn_block=True,
            )
            _zero(layer.to_out[0])
            return layer

        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.fusions = nn.ModuleDict()  # v1: level -> dynamic conditional encoding after its down-sampling
        skips = [model_channels]
        channels, factor = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [resblock(channels, mult * model_channels)]
                channels = mult * model_channels
                if factor in attention_resolutions:
                    layers.append(attention(channels))
                self.down.append(EmbeddedSequential(layers))
                skips.append(channels)
            if level != len(channel_mult) - 1:
                self.down.append(EmbeddedSequential([Downsample2D(channels, use_conv=True, padding=1, name="op")]))
                factor *= 2
                skips.append(channels)
                if version == "v1" and level + 1 < len(condition_widths):
                    side = image_size // factor
                    self.fusions[str(len(self.down) - 1)] = DynamicConditionalEncoding(
                        channels, condition_widths[level + 1], side, side, norm_groups
                    )
        self.bottleneck = (
            _zero(nn.Conv2d(condition_widths[-1], channels, 1)) if version == "v1" else None
        )  # v1: the condition bottleneck, added before the middle block
        self.middle = EmbeddedSequential(
            [resblock(channels, channels), attention(channels), resblock(channels, channels)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for index in range(num_res_blocks + 1):
                layers = [resblock(channels + skips.pop(), mult * model_channels)]
                channels = mult * model_channels
                if factor in attention_resolutions:
                    layers.append(attention(channels))
                if level and index == num_res_blocks:
                    layers.append(Upsample2D(channels, use_conv=True))
                    factor //= 2
                self.up.append(EmbeddedSequential(layers))
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(channels, norm_groups), channels),
            nn.SiLU(),
            _zero(nn.Conv2d(channels, out_channels, 3, padding=1)),
        )

    def forward(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, images: torch.Tensor, condition: Condition
    ) -> torch.Tensor:
        embedding = self.time_embedding(self.time_proj(timesteps).to(noisy.dtype))
        h = self.conv_in(torch.cat([images, noisy], dim=1))
        if self.version == "anchor":
            h = h + condition.anchor.detach()  # the highway net learns from its own loss only, as released
        skips = [h]
        for index, block in enumerate(self.down):
            h = block(h, embedding)
            if str(index) in self.fusions:
                fusion = self.fusions[str(index)]
                level = round(math.log2(images.shape[-1] / h.shape[-1]))
                h = fusion(h, condition.encoder[level])
            skips.append(h)
        if self.bottleneck is not None:
            deepest = condition.encoder[-1]
            if deepest.shape[-2:] != h.shape[-2:]:
                deepest = F.interpolate(deepest, size=h.shape[-2:], mode="bilinear", align_corners=False)
            h = h + self.bottleneck(deepest)
        h = self.middle(h, embedding)
        for block in self.up:
            h = block(torch.cat([h, skips.pop()], dim=1), embedding)
        return self.out(h)


# --------------------------------------------------------------------------------------------------- hybrid loss


def _normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), element-wise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] on 256 bins (improved DDPM's decoder term at t = 0), element-wise."""

    def cdf(values: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf(values / math.sqrt(2.0)))

    centred = x - mean
    inverse_std = torch.exp(-log_scale)
    cdf_plus = cdf(inverse_std * (centred + 1.0 / 255.0))
    cdf_min = cdf(inverse_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# ---------------------------------------------------------------------------------------------------------- method


class MedSegDiff(SegmentationMethod):
    """MedSegDiff: conditional DDPM on the mask, image-only anchor/highway net, fast samplers, batched ensembles.

    The defaults are a CPU-size model (4.2 M parameters); :data:`MEDSEGDIFF_B` holds the paper's
    MedSegDiff-B settings (``configs/medsegdiff/isic2017-b256.yaml``).

    Args:
        image_size: side of the square training input; input sides must be multiples of the larger of the U-Net's
            stride ``2 ** (len(channel_mult) - 1)`` and the condition network's ``2 ** highway_pools``.
        version: ``"anchor"`` (released default) or ``"v1"`` (FF-Parser and dynamic conditional encoding).
        image_channels: 3 (RGB) or 1 (the mean of the three channels the loader gives, for grayscale data).
        model_channels, channel_mult, num_res_blocks: width, per-level multipliers and residual blocks per level of
            the diffusion U-Net.
        attention_resolutions: down-sampling factors with self-attention (16: 16 x 16 maps at 256).
        num_heads: attention heads.
        use_scale_shift_norm: FiLM-style timestep conditioning (off in MedSegDiff-B).
        dropout: dropout in the residual blocks.
        norm_groups: GroupNorm groups (32; fewer where a width is not divisible).
        learned_variance: also predict the variance interpolation and train it with the variational bound (the
            hybrid loss, ``learn_sigma`` of the release); epsilon prediction either way.
        train_steps: diffusion steps T (1000); betas linear from 1e-4 to 0.02.
        highway_channels: first width of the condition network (default ``model_channels // 4``: its anchor
            ``cat(d0, d0, d1)`` then has exactly ``model_channels`` channels, 32 for MedSegDiff-B).
        highway_pools: poolings of the condition network.
        highway_max_channels: width cap of the condition network.
        calibration_weight: weight of the condition network's MSE loss (10 as released).
    """

    name = "medsegdiff"
    sampling_options = {
        "sampler": SamplingOption("dpm-solver", "reverse-chain solver", choices=SAMPLERS),
        "steps": SamplingOption(20, "solver steps (the released DDPM uses 1000)", minimum=1),
        "ensemble": SamplingOption(5, "samples per image, run as one batch (5 as released)", minimum=1),
        "fusion": SamplingOption(
            "mean",
            "ensemble fusion: mean probability, majority vote, or `released` (the squared mean, which is what the "
            "original's `staple` computes)",
            choices=FUSIONS,
        ),
        "seed": SamplingOption(0, "seed of each image's noise (with the image's name)"),
    }
    validation_sampling = {"sampler": "ddim", "steps": 10, "ensemble": 1}
    training_defaults = {
        "lr": 1e-4,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0,
        "ema_decay": 0.9999,
        "batch_size": 8,
    }

    def __init__(
        self,
        image_size: int = 128,
        version: str = "anchor",
        image_channels: int = 3,
        model_channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2, 3, 4),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (8,),
        num_heads: int = 1,
        use_scale_shift_norm: bool = False,
        dropout: float = 0.0,
        norm_groups: int = 32,
        learned_variance: bool = False,
        train_steps: int = 1000,
        highway_channels: int | None = None,
        highway_pools: int = 4,
        highway_max_channels: int = 480,
        calibration_weight: float = CALIBRATION_WEIGHT,
    ) -> None:
        check_choice("version", version, VERSIONS)
        if image_channels not in (1, 3):
            raise ConfigError(f"image_channels={image_channels}: choose 1 (grayscale) or 3 (RGB)")
        if not channel_mult or num_res_blocks < 1 or model_channels % num_heads:
            raise ConfigError(
                f"channel_mult={list(channel_mult)}, num_res_blocks={num_res_blocks}, num_heads={num_heads}: give at "
                "least one level and one residual block, and a model_channels divisible by num_heads"
            )
        if highway_channels is None:
            highway_channels = model_channels // 4
        if version == "anchor" and (
            4 * highway_channels != model_channels or highway_max_channels < 2 * highway_channels
        ):
            raise ConfigError(
                f"version=anchor adds cat(d0, d0, d1) of the condition network ({4 * highway_channels} channels with "
                f"highway_channels={highway_channels}) to the U-Net's first features ({model_channels}); set "
                f"highway_channels={model_channels // 4} and model_channels a multiple of 4"
            )
        if highway_pools < 2:
            raise ConfigError(
                f"highway_pools={highway_pools}: the condition network needs at least two poolings (the anchor reads "
                "its two finest decoder levels)"
            )
        # Instance attribute: the check in Method.__init__ and the generic tests read it from the instance.
        self.size_multiple = max(2 ** (len(channel_mult) - 1), 2**highway_pools)
        super().__init__(image_size)
        self.options = {
            "image_size": image_size,
            "version": version,
            "image_channels": image_channels,
            "model_channels": model_channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attention_resolutions": list(attention_resolutions),
            "num_heads": num_heads,
            "use_scale_shift_norm": use_scale_shift_norm,
            "dropout": dropout,
            "norm_groups": norm_groups,
            "learned_variance": learned_variance,
            "train_steps": train_steps,
            "highway_channels": highway_channels,
            "highway_pools": highway_pools,
            "highway_max_channels": highway_max_channels,
            "calibration_weight": calibration_weight,
        }
        self.image_channels = image_channels
        self.diffusion = GaussianDiffusion(train_steps=train_steps, learned_variance=learned_variance)
        self.condition = ConditionNetwork(image_channels, highway_channels, highway_pools, highway_max_channels)
        self.unet = DiffusionUNet(
            in_channels=image_channels + 1,
            out_channels=2 if learned_variance else 1,
            image_size=image_size,
            model_channels=model_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            attention_resolutions=tuple(attention_resolutions),
            num_heads=num_heads,
            use_scale_shift_norm=use_scale_shift_norm,
            dropout=dropout,
            norm_groups=norm_groups,
            version=version,
            condition_widths=self.condition.widths,
        )

    # ------------------------------------------------------------------------------------------------- inputs

    def condition_images(self, images: torch.Tensor) -> torch.Tensor:
        """The image channels the networks see: RGB, or their mean for ``image_channels=1``."""
        return images.mean(1, keepdim=True) if self.image_channels == 1 else images

    def check_input_size(self, images: torch.Tensor) -> None:
        height, width = images.shape[-2:]
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            fit = tuple(max(multiple, side - side % multiple) for side in (height, width))
            raise ConfigError(
                f"{self.name}: input {height}x{width} is not a multiple of {multiple} on each side (the U-Net and "
                f"condition network down-sample {multiple}x); resize to e.g. {fit[0]}x{fit[1]}"
            )

    # ------------------------------------------------------------------------------------------------- training

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = self.condition_images(batch["image"])
        self.check_input_size(images)
        masks = batch["mask"].float()
        clean = masks * 2.0 - 1.0
        noise = torch.randn_like(clean)
        timesteps = self.diffusion.random_timesteps(clean.shape[0], clean.device)
        noisy = self.diffusion.add_noise(clean, noise, timesteps)
        condition = self.condition(images)
        output = self.unet(noisy, timesteps, images, condition)
        epsilon = output[:, :1]
        diffusion = ((epsilon - noise) ** 2).flatten(1).mean(1)
        calibration = ((condition.calibration - masks) ** 2).mean()
        parts = {"diffusion": diffusion.mean(), "calibration": calibration}
        per_sample = diffusion
        if self.options["learned_variance"]:
            vb = self.variational_bound(output, clean, noisy, timesteps)
            parts["vb"] = vb.mean()
            per_sample = per_sample + vb
        loss = per_sample.mean() + self.options["calibration_weight"] * calibration
        return {"loss": loss, **parts}

    def variational_bound(
        self, output: torch.Tensor, clean: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample variational-bound term (bits per pixel) of improved DDPM's hybrid loss: the KL between the
        true posterior ``q(x_{t-1} | x_t, x_0)`` and the model's, whose mean is frozen (so that only the variance
        channel learns from it), or the decoder's negative log-likelihood at ``t = 0``."""
        scheduler = self.diffusion.scheduler
        betas = scheduler.betas.to(noisy.device, torch.float64)
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - previous) / (1.0 - alphas_cumprod)
        posterior_log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))

        def at(values: torch.Tensor) -> torch.Tensor:
            return values[timesteps].float().view(-1, 1, 1, 1)

        bar, beta = at(alphas_cumprod), at(betas)
        clean_coef = at(betas * previous.sqrt() / (1.0 - alphas_cumprod))
        noisy_coef = at((1.0 - previous) * (1.0 - betas).sqrt() / (1.0 - alphas_cumprod))
        true_mean = clean_coef * clean + noisy_coef * noisy
        true_log_variance = at(posterior_log_variance)

        epsilon, v = output[:, :1].detach(), output[:, 1:2]
        predicted_clean = (noisy - (1.0 - bar).sqrt() * epsilon) / bar.sqrt()
        model_mean = clean_coef * predicted_clean + noisy_coef * noisy
        fraction = (v + 1.0) / 2.0
        model_log_variance = fraction * torch.log(beta) + (1.0 - fraction) * true_log_variance

        kl = _normal_kl(true_mean, true_log_variance, model_mean, model_log_variance).flatten(1).mean(1)
        nll = -_discretized_gaussian_log_likelihood(clean, model_mean, 0.5 * model_log_variance).flatten(1).mean(1)
        return torch.where(timesteps == 0, nll, kl) / math.log(2.0)

    # ------------------------------------------------------------------------------------------------- inference

    def predict(
        self,
        images: torch.Tensor,
        *,
        size: tuple[int, int] | None = None,
        prompts: Any = None,
        generator: Generators = None,
        **sampling: Any,
    ) -> Prediction:
        """Sample ``ensemble`` masks per image (one batch of ``B * ensemble`` through the sampler), fuse them.

        Maps: ``uncertainty`` (per-pixel standard deviation of the members' probabilities) and ``calibration`` (the
        condition network's own segmentation).
        """
        self.check_prompts(prompts)
        options = self.resolve_sampling(sampling)
        images = self.condition_images(images)
        self.check_input_size(images)
        batch, members = images.shape[0], options["ensemble"]
        if generator is None:
            generator = image_generators(options["seed"], map(str, range(batch)))
        with torch.inference_mode():
            condition = self.condition(images)  # once per image: it sees only the image
            samples = self.sample_members(
                images, condition, generator, options["sampler"], options["steps"], members
            )  # (B, K, 1, H, W) in [0, 1]
            if self.options["version"] == "v1":
                samples = self.released_v1_output(samples, condition.calibration)
            probability = fuse(samples, options["fusion"])
            uncertainty = samples.std(1, unbiased=False) if members > 1 else torch.zeros_like(probability)
        maps = {"uncertainty": uncertainty.clamp(0, 1), "calibration": condition.calibration}
        return Prediction(probability.clamp(0, 1), maps).resized(size)

    def sample_members(
        self,
        images: torch.Tensor,
        condition: Condition,
        generator: Sequence[torch.Generator],
        sampler: str,
        steps: int,
        members: int,
    ) -> torch.Tensor:
        """``members`` samples per image as one batch, each with its own generator drawn from its image's, so that an
        image's samples depend neither on its batch nor on which solver step is running. ``(B, K, 1, H, W)``."""
        batch = images.shape[0]
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for a batch of {batch} images")
        member_generators = member_generators_of(generator, members)
        height, width = images.shape[-2:]
        noise = torch.stack([torch.randn(1, height, width, generator=g) for g in member_generators])
        noise = noise.to(device=images.device, dtype=images.dtype)
        repeated_images = images.repeat_interleave(members, dim=0)
        repeated = condition.for_sampling(self.options["version"], members)
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda x, t: self.unet(  # noqa: E731
            x, t, repeated_images, repeated
        )
        clean = self.diffusion.sample(denoise, noise, member_generators, sampler=sampler, steps=steps)
        return ((clean.clamp(-1, 1) + 1.0) / 2.0).view(batch, members, 1, height, width)

    @staticmethod
    def released_v1_output(samples: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
        """The released V1 answer per member: ``(cal + sample) / 2`` where the soft Dice of the two is at least 0.65,
        else ``clamp(cal + 0.25 * sample, 0, 1)``."""
        cal = calibration[:, None]
        dice = 2 * (samples * cal).flatten(2).sum(2) / (samples.flatten(2).sum(2) + cal.flatten(2).sum(2) + 1e-6)
        agree = (dice >= 0.65).view(*dice.shape, 1, 1, 1)
        return torch.where(agree, 0.5 * cal + 0.5 * samples, (cal + 0.25 * samples).clamp(0, 1))


def member_generators_of(generators: Sequence[torch.Generator], members: int) -> list[torch.Generator]:
    """``members`` generators per image, seeded from the image's generator (image-major order)."""
    derived = []
    for generator in generators:
        seeds = torch.randint(0, 2**62, (members,), generator=generator).tolist()
        derived += [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    return derived


def fuse(samples: torch.Tensor, fusion: str) -> torch.Tensor:
    """Fuse ensemble members ``(B, K, 1, H, W)`` in [0, 1] into one probability map ``(B, 1, H, W)``.

    ``mean``: the mean probability; ``vote``: the share of members above 0.5 (so > 0.5 is a strict majority);
    ``released``: the squared mean, which is what the original's ``staple`` returns (one pass of its weighting loop,
    not the STAPLE EM algorithm).
    """
    if fusion == "mean":
        return samples.mean(1)
    if fusion == "vote":
        return (samples > 0.5).float().mean(1)
    if fusion == "released":
        return samples.mean(1) ** 2
    raise ConfigError(f"fusion={fusion!r}: choose one of {', '.join(FUSIONS)}")
