"""Latent mapping models (LMMs): image latent -> mask latent, at the latent's own resolution.

``ResAttnUNetDS`` is the GMS / Wave-GMS network: a UNet-shaped stack of residual + full spatial
self-attention blocks with no down-sampling, and four deep-supervision heads. ``SFTUNetDS`` is the same
topology with every block modulated by a wavelet guidance map (spatial feature transform); ``SKFF`` fuses
the level-3 Haar detail bands of the image into that 3-channel guidance map.

Both networks accept any latent size and channel count, e.g. 4 x 28 x 28 for TAESD at 224 x 224 or
32 x H/8 x W/8 for a 32-channel tiny VAE::

    lmm = ResAttnUNetDS()
    outputs = lmm(torch.randn(2, 4, 28, 28))  # {"level3", "level2", "level1", "out"}, each (2, 4, 28, 28)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genmedseg.errors import ConfigError
from genmedseg.models.wavelet import ResBlock, group_norm

HEAD_NAMES = ("level3", "level2", "level1", "out")
"""Deep-supervision outputs, from the deepest decoder block (``level3``) to the final one (``out``)."""


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all spatial positions, added to the input.

    ``GroupNorm -> 1x1 q, k, v -> softmax(q^T k / sqrt(C)) v -> 1x1 projection``, computed with
    :func:`torch.nn.functional.scaled_dot_product_attention` (same result as the explicit softmax, without
    materialising the ``HW x HW`` matrix where a fused kernel exists).
    """

    def __init__(self, channels: int, norm_groups: int = 16, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups, norm_eps)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x + proj(attention(norm(x)))`` with the shape of ``x``."""
        normed = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head, positions are the sequence, channels the embedding (the 4-D form
        # is what fused kernels and the ONNX exporter take).
        query, key, value = (
            layer(normed).flatten(2).transpose(1, 2).unsqueeze(1) for layer in (self.query, self.key, self.value)
        )
        attended = F.scaled_dot_product_attention(query, key, value).squeeze(1)
        return x + self.proj(attended.transpose(1, 2).reshape(x.shape))


class SFTLayer(nn.Module):
    """Spatial feature transform: ``x * gamma(g) + beta(g)`` with per-pixel gamma, beta predicted from a guidance map.

    ``shared = LeakyReLU(conv3x3(g -> hidden))``; ``gamma``, ``beta`` = ``conv3x3(hidden -> channels)``.
    As in Wave-GMS the modulation is ``x * gamma`` (not ``x * (1 + gamma)``).
    """

    def __init__(
        self, channels: int, guidance_channels: int = 3, hidden: int = 128, negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(guidance_channels, hidden, 3, padding=1), nn.LeakyReLU(negative_slope))
        self.gamma = nn.Conv2d(hidden, channels, 3, padding=1)
        self.beta = nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x: Tensor, guidance: Tensor) -> Tensor:
        """Modulate ``(B, channels, H, W)`` features with a ``(B, guidance_channels, H, W)`` guidance map."""
        features = self.shared(guidance)
        return x * self.gamma(features) + self.beta(features)


class SKFF(nn.Module):
    """Selective-kernel fusion of Haar detail bands into one guidance map (13 parameters at the defaults).

    Input: the detail bands of one Haar level, band-major ``[H(C), V(C), D(C)]``, i.e.
    ``haar_pyramid(images, levels=(3,))[0][:, C:]`` for ``C``-channel images. A global descriptor
    ``s = GAP(H + V + D)`` is squeezed (1x1 conv, PReLU) and expanded once per band (1x1 convs); a softmax
    across the bands gives per-channel weights, and the output is the weighted sum of the bands (``C`` channels).
    """

    def __init__(self, band_channels: int = 3, num_bands: int = 3, squeeze_channels: int = 1) -> None:
        super().__init__()
        self.band_channels = band_channels
        self.num_bands = num_bands
        self.squeeze = nn.Sequential(nn.Conv2d(band_channels, squeeze_channels, 1, bias=False), nn.PReLU())
        self.expand = nn.ModuleList(nn.Conv2d(squeeze_channels, band_channels, 1, bias=False) for _ in range(num_bands))

    def forward(self, detail_bands: Tensor) -> Tensor:
        """Fuse ``(B, num_bands * band_channels, H, W)`` bands into ``(B, band_channels, H, W)``."""
        expected = self.num_bands * self.band_channels
        if detail_bands.ndim != 4 or detail_bands.shape[1] != expected:
            raise ValueError(f"SKFF expects (B, {expected}, H, W) detail bands, got shape {tuple(detail_bands.shape)}")
        bands = detail_bands.unflatten(1, (self.num_bands, self.band_channels))
        descriptor = self.squeeze(bands.sum(dim=1).mean(dim=(-2, -1), keepdim=True))
        weights = torch.stack([expand(descriptor) for expand in self.expand], dim=1).softmax(dim=1)
        return (bands * weights).sum(dim=1)


class ResAttnBlock(nn.Module):
    """Residual block (GroupNorm -> PReLU -> conv3x3, twice), optional SFT modulation, then self-attention."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_groups: int = 16,
        norm_eps: float = 1e-6,
        guidance_channels: int | None = None,
        sft_hidden: int = 128,
    ) -> None:
        super().__init__()
        self.residual = ResBlock(
            in_channels, out_channels, norm_groups=norm_groups, norm_eps=norm_eps, activation=nn.PReLU, skip_bias=False
        )
        self.sft = None if guidance_channels is None else SFTLayer(out_channels, guidance_channels, sft_hidden)
        self.attention = SpatialSelfAttention(out_channels, norm_groups, norm_eps)

    def forward(self, x: Tensor, guidance: Tensor | None = None) -> Tensor:
        """Map ``(B, in, H, W)`` to ``(B, out, H, W)``; ``guidance`` is required iff the block has an SFT layer."""
        h = self.residual(x)
        if self.sft is not None:
            h = self.sft(h, guidance)
        return self.attention(h)


class _DeepSupervisedUNet(nn.Module):
    """Topology shared by both LMMs: stem, 4 encoder blocks, 4 decoder blocks on concatenated skips, 4 heads.

    Widths at ``channels=32, ch_mult=(1, 2, 4, 4)``: stem 32; encoder 32 -> 32 -> 64 -> 128 -> 128; decoder
    (128+128) -> 128, (128+64) -> 64, (64+32) -> 32, (32+32) -> 32. Nothing changes the spatial size.
    Heads: GroupNorm -> SiLU -> conv3x3 to ``out_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int,
        ch_mult: Sequence[int],
        head_bias: bool,
        norm_groups: int,
        norm_eps: float,
        guidance_channels: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if len(ch_mult) != 4:
            raise ConfigError(f"{name} has exactly 4 encoder levels: ch_mult needs 4 entries, got {tuple(ch_mult)}")
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("channels", channels)):
            if value < 1:
                raise ConfigError(f"{name} {arg} must be a positive integer, got {value}")
        widths = [channels * mult for mult in ch_mult]

        def block(block_in: int, block_out: int) -> ResAttnBlock:
            return ResAttnBlock(block_in, block_out, norm_groups, norm_eps, guidance_channels)

        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.encoder = nn.ModuleList(
            block(block_in, block_out) for block_in, block_out in zip([channels, *widths[:-1]], widths, strict=True)
        )
        # Decoder i joins the previous decoder output with the skip one level up; the last skip is the stem.
        skip_widths = [channels, *widths[:-1]][::-1]
        self.decoder = nn.ModuleList()
        width = widths[-1]
        for skip_width in skip_widths:
            self.decoder.append(block(width + skip_width, skip_width))
            width = skip_width
        self.heads = nn.ModuleDict(
            {
                head: nn.Sequential(
                    group_norm(head_width, norm_groups, norm_eps),
                    nn.SiLU(),
                    nn.Conv2d(head_width, out_channels, 3, padding=1, bias=head_bias),
                )
                for head, head_width in zip(HEAD_NAMES, skip_widths, strict=True)
            }
        )

    def keep_heads(self, names: Sequence[str]) -> None:
        """Drop the heads not in ``names`` (e.g. the ``level3`` head that Wave-GMS never trains, which would stop plain
        DDP). All four are built first, so the initialisation of the kept ones does not depend on the choice."""
        unknown = sorted(set(names) - set(HEAD_NAMES))
        if unknown:
            raise ConfigError(f"unknown head(s) {unknown}; heads are {', '.join(HEAD_NAMES)}")
        for name in [name for name in self.heads if name not in names]:
            del self.heads[name]

    def zero_heads(self) -> None:
        """Zero the last convolution of every head: each head then predicts the zero latent until trained."""
        for head in self.heads.values():
            nn.init.zeros_(head[-1].weight)
            if head[-1].bias is not None:
                nn.init.zeros_(head[-1].bias)

    def _forward(self, x: Tensor, guidance: Tensor | None) -> dict[str, Tensor]:
        h = self.stem(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, guidance)
            skips.append(h)
        skips.pop()  # the deepest encoder output is the decoder's input, not a skip
        decoded = []
        for block in self.decoder:
            h = block(torch.cat([h, skips.pop()], dim=1), guidance)
            decoded.append(h)
        pairs = zip(HEAD_NAMES, decoded, strict=True)
        return {name: self.heads[name](features) for name, features in pairs if name in self.heads}


class ResAttnUNetDS(_DeepSupervisedUNet):
    """GMS latent mapping model: residual self-attention UNet at constant resolution, with deep supervision.

    Returns a dict of four ``(B, out_channels, H, W)`` predictions: ``level3`` (from the 128-channel decoder
    block), ``level2`` (64), ``level1`` (32) and ``out`` (32, the final prediction). Wave-GMS trains on
    ``level2``, ``level1`` and ``out``. 1,564,976 parameters at the defaults.

    GroupNorm uses ``gcd(16, C)`` groups (16 at every default width; see :func:`group_norm`). Convolutions are
    initialised Kaiming-normal (fan_out, leaky_relu) with zero biases.

    Args:
        in_channels: image-latent channels.
        out_channels: mask-latent channels.
        channels: stem width.
        ch_mult: width multipliers of the four encoder blocks.
        norm_groups: largest GroupNorm group count.
        norm_eps: GroupNorm epsilon.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        channels: int = 32,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        norm_groups: int = 16,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(in_channels, out_channels, channels, ch_mult, False, norm_groups, norm_eps)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Map an image latent ``(B, in_channels, H, W)`` to the four mask-latent predictions."""
        return self._forward(x, None)


class SFTUNetDS(_DeepSupervisedUNet):
    """Wave-GMS's guided LMM: the ResAttnUNetDS topology with an SFT layer in every block.

    Each block is ResBlock -> SFT(guidance) -> self-attention; heads have a bias; PyTorch's default init.
    The guidance (e.g. :class:`SKFF` of the level-3 Haar detail bands) must have the latent's spatial size.
    2,995,712 parameters at the defaults.

    Args:
        in_channels: image-latent channels.
        out_channels: mask-latent channels.
        channels: stem width.
        ch_mult: width multipliers of the four encoder blocks.
        guidance_channels: channels of the guidance map.
        norm_groups: largest GroupNorm group count.
        norm_eps: GroupNorm epsilon.
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        channels: int = 32,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        guidance_channels: int = 3,
        norm_groups: int = 16,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__(in_channels, out_channels, channels, ch_mult, True, norm_groups, norm_eps, guidance_channels)
        self.guidance_channels = guidance_channels

    def forward(self, x: Tensor, guidance: Tensor) -> dict[str, Tensor]:
        """Map ``(B, in_channels, H, W)`` latents, guided by ``(B, guidance_channels, H, W)``, to four predictions."""
        expected = (x.shape[0], self.guidance_channels, *x.shape[-2:])
        if tuple(guidance.shape) != expected:
            raise ValueError(
                f"SFTUNetDS guidance must have shape {expected} to match latents {tuple(x.shape)}, got "
                f"{tuple(guidance.shape)}: compute it at the latent resolution (Haar level log2(image side / "
                "latent side), i.e. level 3 for a VAE that downsamples by 8)"
            )
        return self._forward(x, guidance)
