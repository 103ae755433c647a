"""Haar-wavelet image pyramid and the LiteVAE-style multi-resolution encoder of Wave-GMS.

The encoder replaces a large pretrained image encoder with ~1 M trainable parameters: each Haar level is
processed at its own resolution by a small channel-only UNet, the features are pooled to the coarsest level,
and an aggregator UNet turns them into a diagonal Gaussian over latents at 1/8 of the image size.

Example::

    encoder = WaveletEncoder()
    mean, logvar = encoder(torch.rand(2, 3, 224, 224))  # each (2, 4, 28, 28)
    latent = encoder.sample(mean, logvar)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from genmedseg.errors import ConfigError

HAAR_BANDS = ("LL", "H", "V", "D")
"""Band order inside every pyramid level; levels are band-major: [LL(C), H(C), V(C), D(C)]."""


def _check_levels(levels: Sequence[int], error: type[Exception]) -> None:
    if not levels or any(level < 1 for level in levels) or list(levels) != sorted(set(levels)):
        raise error(f"Haar levels must be strictly increasing positive integers such as (1, 2, 3), got {tuple(levels)}")


def haar_pyramid(images: Tensor, levels: Sequence[int] = (1, 2, 3)) -> list[Tensor]:
    """Coarsest Haar coefficients of each requested decomposition level, scaled to the input's range.

    For level ``L`` the result holds the approximation and the three detail bands of an ``L``-level 2D Haar
    DWT (PyWavelets' ``wavedec2(x, 'haar', level=L)[0]`` and ``[1]``), band-major: channels
    ``[LL(c0..cC-1), H(c0..), V(c0..), D(c0..)]``, i.e. ``4*C`` channels at ``H/2^L x W/2^L``. Each level is
    divided by ``2^L`` to undo the orthonormal Haar gain, so LL is the mean intensity of each ``2^L`` block.
    Computed without gradient (the encoder's input is data, never a parameter).

    Args:
        images: ``(B, C, H, W)`` tensor; ``H`` and ``W`` must be divisible by ``2**max(levels)``.
        levels: strictly increasing positive decomposition levels.

    Returns:
        One ``(B, 4*C, H/2^L, W/2^L)`` tensor per level, in the order of ``levels``.
    """
    if images.ndim != 4:
        raise ValueError(f"haar_pyramid expects a (B, C, H, W) tensor, got shape {tuple(images.shape)}")
    _check_levels(levels, ValueError)
    factor = 2 ** max(levels)
    height, width = images.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"haar_pyramid with {max(levels)} levels needs image sides divisible by {factor}, got {height}x{width}: "
            f"resize or pad the images to a multiple of {factor} "
            f"(e.g. {math.ceil(height / factor) * factor}x{math.ceil(width / factor) * factor})"
        )
    pyramid = []
    with torch.no_grad():
        approximation = images
        # Cascading single-level transforms on LL equals a multi-level DWT and costs 4/3 of one level,
        # instead of one full wavedec2 per requested level.
        for level in range(1, max(levels) + 1):
            approximation, *details = haar_step(approximation)
            if level in levels:
                pyramid.append(torch.cat([approximation, *details], dim=1) / 2**level)
    return pyramid


def haar_step(images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One level of the orthonormal 2D Haar DWT of even-sized ``(B, C, H, W)`` images: ``(LL, H, V, D)``.

    The same coefficients (signs included) as PyWavelets' ``dwt2(x, "haar")``, computed from the four pixels of each
    2 x 2 block by additions only. Haar filters are two taps long, so on even sides no boundary mode is involved.
    Written out rather than taken from ptwt because this form runs in any dtype (bfloat16 included), exports to ONNX
    with a dynamic batch, and is what the (tested) definition says.
    """
    top_left, top_right = images[..., 0::2, 0::2], images[..., 0::2, 1::2]
    bottom_left, bottom_right = images[..., 1::2, 0::2], images[..., 1::2, 1::2]
    top, bottom = top_left + top_right, bottom_left + bottom_right
    left, right = top_left + bottom_left, top_right + bottom_right
    diagonal = top_left - top_right - bottom_left + bottom_right
    return (top + bottom) / 2, (top - bottom) / 2, (left - right) / 2, diagonal / 2


def group_norm(channels: int, max_groups: int, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with ``gcd(max_groups, channels)`` groups.

    This is exactly ``max_groups`` at every width of the published models (all multiples of 16), and still
    divides the channel count of narrow test variants (e.g. 8 or 12 channels), where a fixed group count
    would fail and ``min(max_groups, channels)`` may not divide ``channels``.
    """
    return nn.GroupNorm(math.gcd(max_groups, channels), channels, eps=eps)


class ResBlock(nn.Module):
    """Pre-activation residual block: norm -> act -> conv3x3 -> norm -> act -> dropout -> conv3x3, plus skip.

    The skip is the identity, or a 1x1 convolution when the channel count changes. Defaults are the LiteVAE
    block (GroupNorm(8), SiLU); the latent mapping models reuse it with GroupNorm(16, eps 1e-6), PReLU and a
    bias-free skip.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_groups: int = 8,
        norm_eps: float = 1e-5,
        activation: Callable[[], nn.Module] = nn.SiLU,
        dropout: float = 0.0,
        skip_bias: bool = True,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(in_channels, norm_groups, norm_eps),
            activation(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            group_norm(out_channels, norm_groups, norm_eps),
            activation(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1, bias=skip_bias)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``skip(x) + body(x)``."""
        return self.skip(x) + self.body(x)


class ChannelUNet(nn.Module):
    """A UNet with no spatial resampling: only the channel width goes down and up (LiteVAE feature block).

    ``conv3x3(in -> mc)``; encoder of ``num_res_blocks`` ResBlocks per multiplier whose every output is kept
    as a skip; ``num_res_blocks`` middle ResBlocks; decoder over the reversed multipliers, each ResBlock
    taking ``concat(h, last unused skip)``; ``conv3x3(mc -> out)``. Output has the input's spatial size.

    With ``gradient_checkpointing``, a training forward keeps only each ResBlock's input and recomputes the block in
    the backward pass: the same gradients, for one more forward pass of the blocks (a third more of their FLOPs).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int = 16,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        norm_groups: int = 8,
        dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing

        def block(block_in: int, block_out: int) -> ResBlock:
            return ResBlock(block_in, block_out, norm_groups=norm_groups, dropout=dropout)

        self.in_conv = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        width = model_channels
        skip_widths = []
        self.encoder = nn.ModuleList()
        for mult in ch_mult:
            for _ in range(num_res_blocks):
                self.encoder.append(block(width, model_channels * mult))
                width = model_channels * mult
                skip_widths.append(width)
        self.mid = nn.Sequential(*(block(width, width) for _ in range(num_res_blocks)))
        self.decoder = nn.ModuleList()
        for mult in reversed(ch_mult):
            for _ in range(num_res_blocks):
                self.decoder.append(block(width + skip_widths.pop(), model_channels * mult))
                width = model_channels * mult
        self.out_conv = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in, H, W)`` to ``(B, out, H, W)``."""
        h = self.in_conv(x)
        skips = []
        for block in self.encoder:
            h = self._run(block, h)
            skips.append(h)
        for block in self.mid:
            h = self._run(block, h)
        for block in self.decoder:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1))
        return self.out_conv(h)

    def _run(self, block: ResBlock, x: Tensor) -> Tensor:
        """``block(x)``, recomputed in the backward pass instead of keeping its activations when checkpointing."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)


class WaveletEncoder(nn.Module):
    """Trainable multi-resolution Haar encoder (LiteVAE-S scale): images in [0, 1] -> Gaussian latent moments.

    One separate :class:`ChannelUNet` extractor per Haar level (``4*C -> 4*C`` channels at that level's
    resolution), average pooling of every level to the coarsest one, concatenation, and an aggregator
    ChannelUNet to ``2 * latent_channels`` channels = ``[mean | logvar]``. The latent is
    ``2**max(levels)`` (8 by default) times smaller than the image. With the defaults it has 1,035,692
    parameters.

    Args:
        latent_channels: channels of the latent (4 for TAESD).
        model_channels: base width of every ChannelUNet.
        ch_mult: width multipliers of every ChannelUNet.
        num_res_blocks: ResBlocks per multiplier (and in the middle) of every ChannelUNet.
        in_channels: image channels.
        levels: Haar levels to analyse; the coarsest sets the latent resolution.
        logvar_range: clamp of the log-variance, keeping ``exp`` finite.
        gradient_checkpointing: recompute every ChannelUNet's ResBlocks in the backward pass instead of keeping
            their activations (see :class:`ChannelUNet`).
    """

    def __init__(
        self,
        latent_channels: int = 4,
        model_channels: int = 16,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        in_channels: int = 3,
        levels: Sequence[int] = (1, 2, 3),
        logvar_range: tuple[float, float] = (-30.0, 20.0),
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        _check_levels(levels, ConfigError)
        for name, value in (("latent_channels", latent_channels), ("in_channels", in_channels)):
            if value < 1:
                raise ConfigError(f"WaveletEncoder {name} must be a positive integer, got {value}")
        self.in_channels = in_channels
        self.levels = tuple(levels)
        self.logvar_range = logvar_range
        band_channels = len(HAAR_BANDS) * in_channels

        def unet(unet_in: int, unet_out: int) -> ChannelUNet:
            return ChannelUNet(
                unet_in,
                unet_out,
                model_channels,
                ch_mult,
                num_res_blocks,
                gradient_checkpointing=gradient_checkpointing,
            )

        self.extractors = nn.ModuleList(unet(band_channels, band_channels) for _ in self.levels)
        self.aggregator = unet(band_channels * len(self.levels), 2 * latent_channels)

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side; image sides must be divisible by it."""
        return 2 ** max(self.levels)

    def forward(self, images01: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``(B, in_channels, H, W)`` images in [0, 1] to ``(mean, logvar)``, each ``(B, latent, H/8, W/8)``."""
        if images01.ndim != 4 or images01.shape[1] != self.in_channels:
            raise ValueError(
                f"WaveletEncoder expects (B, {self.in_channels}, H, W) images, got shape {tuple(images01.shape)}"
            )
        coarsest = max(self.levels)
        features = [
            F.avg_pool2d(extractor(bands), 2 ** (coarsest - level))
            for extractor, bands, level in zip(
                self.extractors, haar_pyramid(images01, self.levels), self.levels, strict=True
            )
        ]
        mean, logvar = self.aggregator(torch.cat(features, dim=1)).chunk(2, dim=1)
        return mean, logvar.clamp(*self.logvar_range)

    @staticmethod
    def sample(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draw ``mean + exp(logvar / 2) * noise``; gradients flow to both moments."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise
