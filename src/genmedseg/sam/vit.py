"""SAM's ViT image encoder (ViT-B of ``sam_vit_b_01ec64.pth``), in its state-dict layout (keys ``patch_embed.proj``,
``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2,mlp.lin1,mlp.lin2}``,
``neck``).

16 x 16 patches, 12 pre-norm blocks with windowed attention (window 14) except the global blocks 2, 5, 8 and 11,
decomposed relative position tables, an absolute position embedding for a 64 x 64 grid, and a neck to 256 channels.
Other input sizes (I-MedSAM runs it at 384) resize the position embedding (bilinear) and the relative tables
(linear) to the token grid.

``forward`` runs I-MedSAM's adapters when given (see :mod:`genmedseg.sam.tiny_vit`): a low-rank update of the
queries and values, and a frequency stream (the Fourier magnitude image through the frozen patch embedding and
position embedding, updated by each block's adapter and added to the block's output with ``frequency_weight``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genmedseg.sam.layers import LayerNorm2d, QVDelta
from genmedseg.sam.tiny_vit import window_partition, window_unpartition

SAM_VIT_B: dict[str, Any] = {
    "kind": "vit",
    "embed_dim": 768,
    "depth": 12,
    "num_heads": 12,
    "patch_size": 16,
    "pos_grid": 64,
    "window_size": 14,
    "global_blocks": [2, 5, 8, 11],
    "mlp_ratio": 4.0,
    "out_channels": 256,
}
"""SAM ViT-B (``sam_vit_b_01ec64.pth``), trained at 1024 x 1024."""


def relative_table(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """``(q_size, k_size, C)`` relative position entries from a table of ``2 * size - 1`` rows (resized linearly when
    the token grid differs from the one it was trained for)."""
    length = 2 * max(q_size, k_size) - 1
    if table.shape[0] != length:
        table = F.interpolate(table.T[None], size=length, mode="linear")[0].T
    q = torch.arange(q_size, device=table.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=table.device)[None] * max(q_size / k_size, 1.0)
    return table[(q - k + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


class ViTAttention(nn.Module):
    """Multi-head attention with decomposed relative positions; ``qkv`` produces all queries, then keys, then values."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))

    def forward(self, x: torch.Tensor, lora: QVDelta | None = None) -> torch.Tensor:
        batch, height, width, dim = x.shape
        tokens = x.reshape(batch, height * width, dim)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        if lora is not None:
            delta_q, delta_v = lora(tokens)
            q, v = q + delta_q, v + delta_v
        q, k, v = (part.view(batch, height * width, self.num_heads, -1).transpose(1, 2) for part in (q, k, v))
        rows, columns = relative_table(self.rel_pos_h, height, height), relative_table(self.rel_pos_w, width, width)
        grid_q = q.reshape(batch, self.num_heads, height, width, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, rows)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, columns)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(batch, self.num_heads, height * width, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, dim))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class ViTBlock(nn.Module):
    """Pre-norm block on tokens ``(B, H, W, C)``; ``window`` 0 means global attention."""

    def __init__(self, dim: int, num_heads: int, window: int, grid: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads, window or grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, lora: QVDelta | None = None) -> torch.Tensor:
        y = self.norm1(x)
        if self.window:
            size = y.shape[1:3]
            windows, padded = window_partition(y, self.window)
            windows = self.attn(windows.view(-1, self.window, self.window, y.shape[-1]), lora)
            y = window_unpartition(windows.flatten(1, 2), self.window, padded, size)
        else:
            y = self.attn(y, lora)
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ViTEncoder(nn.Module):
    """SAM's ViT image encoder: images ``(B, 3, H, W)`` -> ``(B, out_channels, H / patch, W / patch)``.

    Example (random weights of ViT-B's shapes):
        >>> encoder = ViTEncoder(**{k: v for k, v in SAM_VIT_B.items() if k != "kind"})
        >>> encoder(torch.rand(1, 3, 384, 384)).shape
        torch.Size([1, 256, 24, 24])
    """

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int = 16,
        pos_grid: int = 64,
        window_size: int = 14,
        global_blocks: Sequence[int] = (2, 5, 8, 11),
        mlp_ratio: float = 4.0,
        out_channels: int = 256,
    ) -> None:
        super().__init__()
        self.downsampling = patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_grid, pos_grid, embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(embed_dim, num_heads, 0 if index in global_blocks else window_size, pos_grid, mlp_ratio)
            for index in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    @property
    def block_dims(self) -> list[int]:
        return [block.norm1.normalized_shape[0] for block in self.blocks]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus the position embedding (resized bilinearly to the token grid): ``(B, h, w, C)``."""
        x = self.patch_embed(images)
        position = self.pos_embed
        if position.shape[1:3] != x.shape[1:3]:
            position = F.interpolate(position.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bilinear")
            position = position.permute(0, 2, 3, 1)
        return x + position

    def forward(
        self, images: torch.Tensor, adapters: Sequence[Any] | None = None, frequency_image: torch.Tensor | None = None
    ) -> torch.Tensor:
        use_frequency = adapters is not None and frequency_image is not None
        x = self.embed(images)
        x_freq = self.embed(frequency_image) if use_frequency else None
        for index, block in enumerate(self.blocks):
            adapter = adapters[index] if adapters is not None else None
            x = block(x, adapter.qv_delta if adapter is not None else None)
            if use_frequency:
                x_freq = adapter.frequency(x_freq)
                x = x + adapter.frequency_weight * x_freq
        return self.neck(x.permute(0, 3, 1, 2))
