"""TinyViT image encoder of LiteMedSAM (MedSAM distilled into MobileSAM's TinyViT-5M), in its state-dict layout.

Structure (keys ``patch_embed.seq``, ``layers.{0..3}``, ``neck``): a 1x1-convolution stem (no downsampling in
LiteMedSAM), one stage of MBConv blocks, three stages of TinyViT blocks (windowed attention with a learned bias per
relative offset, a depthwise 3x3 "local" convolution and an MLP), patch merging between stages (stride 2, stride 1
into the 320-wide last stage) and SAM's neck to 256 channels. A 256 x 256 image gives a 256 x 64 x 64 embedding.

``forward`` also runs I-MedSAM's adapters when given: per attention block a low-rank update of the queries and values
and a frequency stream (the Fourier magnitude image, carried through the frozen stem, first stage and merges, updated
by each block's adapter and added to the block's output with weight ``frequency_weight``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmedseg.sam.layers import Conv2dBN, LayerNorm2d, QVDelta

LITEMEDSAM_TINY_VIT: dict[str, Any] = {
    "kind": "tiny-vit",
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 4.0,
    "out_channels": 256,
}
"""The TinyViT of LiteMedSAM (5,736,623 parameters and buffers in its checkpoint)."""


class PatchEmbed(nn.Module):
    """Stem: 1x1 Conv-BN, GELU, 1x1 Conv-BN (LiteMedSAM keeps the full resolution here)."""

    def __init__(self, channels_in: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(channels_in, dim // 2), nn.GELU(), Conv2dBN(dim // 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Between stages: 1x1 Conv-BN, depthwise 3x3 Conv-BN (stride 2, or 1 into a 320/448/576-wide stage), 1x1."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride=self.stride, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


def offset_index(window: int) -> torch.Tensor:
    """``(N, N)`` index of the learned bias of each query-key pair of a ``window`` x ``window`` window, N = window².

    The bias table has one entry per offset ``(|dy|, |dx|)``, numbered in the order the offsets first occur when the
    pairs are visited row by row: from the first position all offsets occur, in row-major order, so the entry of
    ``(|dy|, |dx|)`` is ``|dy| * window + |dx|``.
    """
    rows, columns = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, columns = rows.flatten(), columns.flatten()
    return (rows[:, None] - rows[None]).abs() * window + (columns[:, None] - columns[None]).abs()


class TinyViTAttention(nn.Module):
    """Multi-head attention with pre-LayerNorm and a learned bias per relative offset inside the window.

    ``qkv`` produces, per head, its query, key and value next to each other (``(N, heads, 3 * head_dim)``).
    """

    def __init__(self, dim: int, num_heads: int, window: int, key_dim: int = 32) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * key_dim * num_heads)
        self.proj = nn.Linear(key_dim * num_heads, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor, lora: QVDelta | None = None) -> torch.Tensor:
        batch, tokens, _ = x.shape
        x = self.norm(x)
        q, k, v = self.qkv(x).view(batch, tokens, self.num_heads, -1).split(self.key_dim, dim=3)
        if lora is not None:
            delta_q, delta_v = lora(x)
            q = q + delta_q.view_as(q)
            v = v + delta_v.view_as(v)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTMlp(nn.Module):
    """LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * windows, window², C)``, zero-padding H and W to multiples of ``window``."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded = (height + pad_h, width + pad_w)
    x = x.view(batch, padded[0] // window, window, padded[1] // window, window, channels)
    return x.transpose(2, 3).reshape(-1, window * window, channels), padded


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B, H, W, C)`` with the padding cut off."""
    rows, columns = padded[0] // window, padded[1] // window
    channels = windows.shape[-1]
    x = windows.view(-1, rows, columns, window, window, channels).transpose(2, 3).reshape(-1, *padded, channels)
    return x[:, : size[0], : size[1]]


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), depthwise 3x3 Conv-BN, MLP (residual) on tokens ``(B, H, W, C)``."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.attn = TinyViTAttention(dim, num_heads, window, key_dim=dim // num_heads)
        self.local_conv = Conv2dBN(dim, dim, 3, groups=dim)
        self.mlp = TinyViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, lora: QVDelta | None = None) -> torch.Tensor:
        size = x.shape[1:3]
        windows, padded = window_partition(x, self.window)
        x = x + window_unpartition(self.attn(windows, lora), self.window, padded, size)
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks, then patch merging."""

    def __init__(self, dim: int, out_dim: int, depth: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks, then patch merging unless it is the last stage."""

    def __init__(
        self, dim: int, out_dim: int | None, depth: int, num_heads: int, window: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None


class TinyViT(nn.Module):
    """LiteMedSAM's image encoder: images ``(B, 3, H, W)`` -> embedding ``(B, out_channels, H / 4, W / 4)``.

    Any ``H`` and ``W`` divisible by 4 work (windows are zero-padded), so inputs need not be 256 x 256; the real
    weights were distilled at 256.

    Example:
        >>> encoder = TinyViT(**{k: v for k, v in LITEMEDSAM_TINY_VIT.items() if k != "kind"})
        >>> encoder(torch.rand(2, 3, 256, 256)).shape
        torch.Size([2, 256, 64, 64])
    """

    def __init__(
        self,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_sizes: Sequence[int],
        mlp_ratio: float = 4.0,
        out_channels: int = 256,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(3, embed_dims[0])
        stages: list[nn.Module] = [ConvStage(embed_dims[0], embed_dims[1], depths[0])]
        for index in range(1, len(embed_dims)):
            out_dim = embed_dims[index + 1] if index + 1 < len(embed_dims) else None
            stages.append(
                AttentionStage(
                    embed_dims[index], out_dim, depths[index], num_heads[index], window_sizes[index], mlp_ratio
                )
            )
        self.layers = nn.ModuleList(stages)
        # Two in LiteMedSAM: the merge into a 320-wide stage keeps the resolution.
        self.downsampling = math.prod(stage.downsample.stride for stage in stages if stage.downsample is not None)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    @property
    def block_dims(self) -> list[int]:
        """Width of each attention block, in order (what per-block adapters are built for)."""
        return [block.attn.norm.normalized_shape[0] for stage in self.layers[1:] for block in stage.blocks]

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """Stem and convolution stage: ``(B, C1, H / 2, W / 2)``, the input of the first attention stage."""
        return self.layers[0](self.patch_embed(images))

    def forward(
        self, images: torch.Tensor, adapters: Sequence[Any] | None = None, frequency_image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The embedding; ``adapters`` (one per attention block, with ``qv_delta(tokens)`` and ``frequency(tokens)``)
        and ``frequency_image`` (``(B, 3, H, W)``) add I-MedSAM's updates (see the module docstring)."""
        use_frequency = adapters is not None and frequency_image is not None
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            # Nothing trainable comes before the first attention block: no graph through the full-resolution stem.
            stem_input = torch.cat([images, frequency_image]) if use_frequency else images
            stem = self.stem(stem_input).permute(0, 2, 3, 1)
        x, x_freq = stem.chunk(2) if use_frequency else (stem, None)
        index = 0
        for stage in self.layers[1:]:
            for block in stage.blocks:
                adapter = adapters[index] if adapters is not None else None
                x = block(x, adapter.qv_delta if adapter is not None else None)
                if use_frequency:
                    x_freq = adapter.frequency(x_freq)
                    x = x + adapter.frequency_weight * x_freq
                index += 1
            if stage.downsample is not None:
                both = torch.cat([x, x_freq]) if use_frequency else x
                both = stage.downsample(both.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
                x, x_freq = both.chunk(2) if use_frequency else (both, None)
        return self.neck(x.permute(0, 3, 1, 2))
