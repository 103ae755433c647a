"""SAM's prompt encoder and mask decoder (two-way transformer, output upscaling, hypernetwork heads), in the state-dict
layout that SAM and LiteMedSAM checkpoints share (keys ``prompt_encoder.*`` and ``mask_decoder.*``).

Only box prompts are used in genmedseg: a box becomes two tokens, the random-Fourier position encoding of its two
corners plus a learned corner embedding. Point and mask prompts are built (their weights are in the checkpoints) but
never called.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genmedseg.sam.layers import MLP, LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of coordinates in [0, 1]: ``[sin, cos](2π (2c - 1) G)`` with a fixed Gaussian G."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, features))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised ``(x, y)`` -> ``(..., 2 * features)``."""
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Encoding of the centres of a ``height`` x ``width`` grid: ``(2 * features, height, width)``."""
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)
        return self.encode(coords).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Box prompts -> sparse tokens ``(N, 2, dim)``; the "no mask" dense embedding; the dense position encoding."""

    def __init__(self, dim: int = 256, mask_channels: int = 16) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        # 0 / 1: negative / positive point, 2 / 3: top-left / bottom-right box corner.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_channels // 4, 2, stride=2),
            LayerNorm2d(mask_channels // 4),
            nn.GELU(),
            nn.Conv2d(mask_channels // 4, mask_channels, 2, stride=2),
            LayerNorm2d(mask_channels),
            nn.GELU(),
            nn.Conv2d(mask_channels, dim, 1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def box_parameters(self) -> list[nn.Parameter]:
        """The parameters a box prompt uses (the two corner embeddings and the no-mask embedding)."""
        return [self.point_embeddings[2].weight, self.point_embeddings[3].weight, self.no_mask_embed.weight]

    def embed_boxes(self, boxes: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        """Boxes ``(N, 4)`` ``(x_min, y_min, x_max, y_max)`` in pixels of an ``input_size`` (H, W) image -> tokens
        ``(N, 2, dim)`` (the corners taken at pixel centres, as SAM does)."""
        corners = (boxes.reshape(-1, 2, 2) + 0.5) / boxes.new_tensor([input_size[1], input_size[0]])
        tokens = self.pe_layer.encode(corners)
        return torch.stack(
            [tokens[:, 0] + self.point_embeddings[2].weight[0], tokens[:, 1] + self.point_embeddings[3].weight[0]], 1
        )

    def dense_embedding(self, count: int, grid: tuple[int, int]) -> torch.Tensor:
        """The "no mask" dense prompt ``(count, dim, h, w)``."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(count, -1, *grid)

    def dense_pe(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position encoding of the image embedding's grid ``(1, dim, h, w)``."""
        return self.pe_layer.grid(*grid)[None]


class Attention(nn.Module):
    """Multi-head attention with projections to ``dim / downsample_rate`` channels."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        inner = dim // downsample_rate
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

        q, k, v = heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v))
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(torch.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention (post-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, 2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, 2)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Prompt tokens and image tokens attend to each other ``depth`` times, then the tokens attend to the image."""

    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, skip_first_layer_pe=index == 0) for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, 2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(N, C, h, w)``, ``image_pe`` ``(N, C, h, w)``, ``tokens`` ``(N, T, C)`` -> (tokens, image
        tokens ``(N, h * w, C)``)."""
        keys = image.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class MaskDecoder(nn.Module):
    """SAM's mask decoder: two-way transformer over [IoU token, mask tokens, prompt tokens] and the image embedding,
    output upscaling (x4) and one hypernetwork MLP per mask token."""

    def __init__(
        self, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_dim: int = 2048, num_multimask_outputs: int = 3
    ) -> None:
        super().__init__()
        self.num_mask_tokens = num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, self.num_mask_tokens, 3)

    def attend(
        self, embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer for ``N`` prompts on their images' ``embedding`` ``(N, C, h, w)``: the output tokens
        ``(N, T, C)`` and the attended image embedding ``(N, C, h, w)``."""
        fixed = torch.cat([self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([fixed[None].expand(sparse.shape[0], -1, -1), sparse], dim=1)
        tokens_out, image = self.transformer(embedding + dense, image_pe.expand_as(embedding), tokens)
        return tokens_out, image.transpose(1, 2).reshape(embedding.shape)

    def forward(
        self, embedding: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits of the first (single-mask) token ``(N, 1, 4h, 4w)`` and the predicted IoU of all tokens."""
        tokens, image = self.attend(embedding, image_pe, sparse, dense)
        upscaled = self.output_upscaling(image)
        weights = self.output_hypernetworks_mlps[0](tokens[:, 1])
        logits = torch.einsum("nc,nchw->nhw", weights, upscaled)[:, None]
        return logits, self.iou_prediction_head(tokens[:, 0])
