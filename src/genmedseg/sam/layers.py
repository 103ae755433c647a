"""Small building blocks shared by the SAM-family encoders and decoders."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

QVDelta = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""A low-rank update of an attention layer: its (normalised) input tokens ``(B, N, C)`` -> ``(delta_q, delta_v)``."""


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (SAM's necks and upscaling use eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (TinyViT's ``Conv2d_BN``; state-dict keys ``c.*``, ``bn.*``)."""

    def __init__(self, channels_in: int, channels_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        padding = kernel // 2
        self.add_module("c", nn.Conv2d(channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(channels_out))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (SAM's hypernetwork and IoU heads; keys ``layers.i``)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, num_layers: int) -> None:
        super().__init__()
        dims = [dim_in] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, [*dims[1:], dim_out], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = torch.relu(x)
        return x
