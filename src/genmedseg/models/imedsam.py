"""I-MedSAM (Wei et al., ECCV 2024): a frozen SAM-family model with gated LoRA and frequency adapters in its image
encoder and an implicit (per-pixel MLP) decoder that answers at any output resolution.

- Image encoder (frozen LiteMedSAM TinyViT or SAM ViT): every attention block gets a **gated LoRA** (rank 4) on its
  queries and values, scaled by a gate computed from the mean of the attention input, and a **frequency adapter**:
  the image's 2-D Fourier magnitude goes through the frozen patch embedding into a token stream that each block's
  bottleneck adapter updates and that is added to the block's output (weight 0.5).
- Box prompt -> the **trainable** prompt encoder; SAM's two-way transformer stays frozen; the **trainable** output
  upscaling turns the attended image embedding into a 32-channel map at 4x the embedding's resolution.
- **Implicit decoder** (:class:`SegField`), per output pixel: the upscaled map and SAM's dense position encoding
  (both sampled bilinearly at the pixel) and Fourier features of the pixel's coordinates (raw + 10 frequencies, a
  progressive mask opens them over the first ``progressive_epochs`` epochs) -> coarse MLP -> a logit and a 256-d
  feature. MC-dropout variance picks the 12.5 % most uncertain pixels of each image, whose logits a fine MLP replaces.

Loss: 0.8 squared Dice + 0.2 BCE on the coarse and the fine logits, moving from coarse to fine over the first
``fine_warmup_epochs`` epochs. Learning rates: the decoder MLPs at the configured rate (1e-3), the rest at 0.05x.

Example (random weights, LiteMedSAM's shapes):
    >>> from genmedseg.sam import FrozenSAM
    >>> model = IMedSAM(FrozenSAM.from_config(FrozenSAM.litemedsam_config())).eval()
    >>> model.predict(torch.rand(2, 3, 256, 256), size=(64, 64)).probability.shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from genmedseg.models.base import Boxes, Generators, Prediction, SegmentationMethod
from genmedseg.prompts import boxes_from_masks
from genmedseg.sam.model import SAM, FrozenSAM


def fourier_magnitude(images: torch.Tensor) -> torch.Tensor:
    """The centred 2-D Fourier magnitude of each image's grey level, min-max scaled to [0, 1] per image and repeated
    on 3 channels: the frequency adapters' input ``(B, 3, H, W)``."""
    grey = images.mean(dim=1) * 255.0
    magnitude = torch.fft.fftshift(torch.fft.fft2(grey.float()), dim=(-2, -1)).abs()
    low = magnitude.flatten(1).min(1).values[:, None, None]
    high = magnitude.flatten(1).max(1).values[:, None, None]
    scaled = (magnitude - low) / (high - low).clamp_min(1e-12)
    return scaled[:, None].expand(-1, 3, -1, -1).to(images.dtype)


class GatedLoRA(nn.Module):
    """Low-rank updates of an attention layer's queries and values, ``gate(mean of x) * up(down(x))``.

    ``down`` starts Kaiming-uniform and ``up`` at zero, so a new adapter leaves the frozen layer unchanged; the gate
    (a bias-free linear map of the tokens' mean) lets each input decide how much of the update to use.
    """

    def __init__(self, dim: int, q_dim: int, v_dim: int, rank: int) -> None:
        super().__init__()
        self.q_down, self.q_up = nn.Linear(dim, rank, bias=False), nn.Linear(rank, q_dim, bias=False)
        self.v_down, self.v_up = nn.Linear(dim, rank, bias=False), nn.Linear(rank, v_dim, bias=False)
        self.gate = nn.Linear(dim, 1, bias=False)
        nn.init.zeros_(self.q_up.weight)
        nn.init.zeros_(self.v_up.weight)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = self.gate(tokens.mean(dim=1, keepdim=True))
        return gate * self.q_up(self.q_down(tokens)), gate * self.v_up(self.v_down(tokens))


class FrequencyAdapter(nn.Module):
    """``n + fc2(GELU(fc1(n)))`` with ``n`` the (parameter-free) LayerNorm of the frequency tokens."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.fc1 = nn.Linear(dim, rank)
        self.fc2 = nn.Linear(rank, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm(tokens)
        return normed + self.fc2(F.gelu(self.fc1(normed)))


class BlockAdapter(nn.Module):
    """What one frozen attention block receives: ``qv_delta`` (gated LoRA) and ``frequency`` (frequency adapter)."""

    def __init__(self, dim: int, lora_rank: int, adapter_rank: int | None, frequency_weight: float) -> None:
        super().__init__()
        self.lora = GatedLoRA(dim, dim, dim, lora_rank)
        self.frequency_adapter = FrequencyAdapter(dim, adapter_rank) if adapter_rank else None
        self.frequency_weight = frequency_weight

    def qv_delta(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora(tokens)

    def frequency(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.frequency_adapter(tokens)


def coordinate_features(points: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Fourier features of 3-D coordinates ``(..., 3)``: the raw coordinates, then ``sin`` and ``cos`` at
    ``2π 2^linspace(0, 10, frequencies)``, lowest first (so a progressive mask opens them in order)."""
    bands = 2.0 * math.pi * 2.0 ** torch.linspace(0.0, 10.0, frequencies, device=points.device)
    angles = points[..., None, :] * bands[:, None]  # (..., F, 3)
    waves = torch.stack([angles.sin(), angles.cos()], dim=-2).flatten(-3)  # (..., F * 2 * 3)
    return torch.cat([points, waves], dim=-1)


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear, BatchNorm1d, ReLU for each consecutive pair of ``dims``."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class SegField(nn.Module):
    """The implicit decoder: per-pixel logits of instance feature maps on any output grid.

    ``forward(features, position, size)`` takes the upscaled maps ``(N, C, h, w)`` and the dense position encoding
    ``(1, P, h', w')`` and returns the coarse and the refined logits and the MC-dropout variance, ``(N, 1, *size)``
    each. In training the head output goes through ``mc_passes`` dropout masks (the paper's two passes; the network
    before the dropout is deterministic, so it runs once) and the last pass gives the coarse answer. At inference the
    coarse answer is the dropout's expectation (no dropout) and the variance is its expected value over the dropout
    masks, ``p / (1 - p) h²`` per channel, so that the selection of the refined pixels means the same as in training
    (the paper's inference, without dropout, gives zero variance everywhere and an arbitrary selection).
    """

    def __init__(
        self,
        feature_channels: int,
        position_channels: int,
        frequencies: int = 10,
        coarse_hidden: Sequence[int] = (1024, 512),
        fine_hidden: Sequence[int] = (256, 256, 128),
        feature_dim: int = 256,
        dropout: float = 0.5,
        mc_passes: int = 2,
        top_k_ratio: float = 0.125,
        chunk_pixels: int = 65536,
    ) -> None:
        super().__init__()
        self.frequencies, self.dropout, self.mc_passes = frequencies, dropout, mc_passes
        self.top_k_ratio, self.chunk_pixels = top_k_ratio, chunk_pixels
        self.coordinate_dims = 3 + 6 * frequencies
        inputs = feature_channels + position_channels + self.coordinate_dims
        self.coarse = mlp([inputs, *coarse_hidden])
        self.coarse_head = nn.Linear(coarse_hidden[-1], 1 + feature_dim)
        self.fine = nn.Sequential(mlp([inputs + feature_dim, *fine_hidden]), nn.Linear(fine_hidden[-1], 1))
        self.register_buffer("open_dims", torch.tensor(self.coordinate_dims))

    def set_progress(self, progress: float) -> None:
        """Progressive frequency mask: keep the first ``min(int(progress * D) + 3, D)`` coordinate features."""
        self.open_dims.fill_(min(int(progress * self.coordinate_dims) + 3, self.coordinate_dims))

    def inputs_at(
        self, features: torch.Tensor, position: torch.Tensor, size: tuple[int, int], index: torch.Tensor
    ) -> torch.Tensor:
        """Per-pixel inputs ``(N, M, D)`` at the flat pixel indices ``index`` ``(N, M)`` of a ``size`` grid."""
        height, width = size
        rows = (index // width).float()
        columns = (index % width).float()
        y, x = (2 * rows + 1) / height - 1, (2 * columns + 1) / width - 1
        grid = torch.stack([x, y], dim=-1)[:, None]  # (N, 1, M, 2)

        def sample(maps: torch.Tensor) -> torch.Tensor:
            points = grid.to(maps.dtype)
            values = F.grid_sample(maps, points, mode="bilinear", padding_mode="border", align_corners=False)
            return values[:, :, 0].transpose(1, 2)

        coords = coordinate_features(torch.stack([torch.full_like(y, -1.0), y, x], dim=-1), self.frequencies)
        mask = torch.arange(self.coordinate_dims, device=coords.device) < self.open_dims
        coords = coords * mask.to(coords.dtype)
        count = features.shape[0]
        return torch.cat([sample(features), sample(position.expand(count, -1, -1, -1)), coords.to(features.dtype)], -1)

    def _rows(self, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """``module`` on ``(N, M, D)`` as ``(N * M, D)`` rows (BatchNorm1d over all pixels of the batch)."""
        return module(inputs.flatten(0, 1)).view(*inputs.shape[:2], -1)

    def forward(
        self, features: torch.Tensor, position: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.training:
            return self._train_forward(features, position, size)
        return self._inference_forward(features, position, size)

    def _select(self, variance: torch.Tensor) -> torch.Tensor:
        count = max(1, int(self.top_k_ratio * variance.shape[1]))
        return variance.topk(count, dim=1).indices

    def _train_forward(
        self, features: torch.Tensor, position: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        count, pixels = features.shape[0], size[0] * size[1]
        index = torch.arange(pixels, device=features.device).expand(count, -1)
        inputs = self.inputs_at(features, position, size, index)
        head = self._rows(nn.Sequential(self.coarse, self.coarse_head), inputs)
        passes = torch.stack([F.dropout(head, self.dropout, training=True) for _ in range(self.mc_passes)])
        variance = passes.var(dim=0).mean(dim=-1)  # (N, P)
        coarse = passes[-1]
        chosen = self._select(variance.detach())
        gathered = torch.cat([inputs, coarse[..., 1:]], dim=-1).gather(
            1, chosen[..., None].expand(-1, -1, inputs.shape[-1] + coarse.shape[-1] - 1)
        )
        refined = coarse[..., 0].scatter(1, chosen, self._rows(self.fine, gathered)[..., 0])
        return tuple(values.view(count, 1, *size) for values in (coarse[..., 0], refined, variance.detach()))

    @torch.no_grad()
    def _inference_forward(
        self, features: torch.Tensor, position: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        count, pixels = features.shape[0], size[0] * size[1]
        rows_per_chunk = max(1, self.chunk_pixels // max(1, count))
        scale = self.dropout / (1.0 - self.dropout)
        logits, variances = [], []
        coarse_net = nn.Sequential(self.coarse, self.coarse_head)
        for start in range(0, pixels, rows_per_chunk):
            index = torch.arange(start, min(pixels, start + rows_per_chunk), device=features.device).expand(count, -1)
            head = self._rows(coarse_net, self.inputs_at(features, position, size, index))
            logits.append(head[..., 0])
            variances.append(scale * head.pow(2).mean(dim=-1))
        coarse, variance = torch.cat(logits, 1), torch.cat(variances, 1)
        chosen = self._select(variance)
        refined = coarse.clone()
        for start in range(0, chosen.shape[1], rows_per_chunk):
            index = chosen[:, start : start + rows_per_chunk]
            inputs = self.inputs_at(features, position, size, index)
            head = self._rows(coarse_net, inputs)
            fine = self._rows(self.fine, torch.cat([inputs, head[..., 1:]], dim=-1))[..., 0]
            refined.scatter_(1, index, fine)
        return tuple(values.view(count, 1, *size) for values in (coarse, refined, variance))


def squared_dice_bce(
    logits: torch.Tensor, target: torch.Tensor, dice: DiceLoss, dice_weight: float, bce_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dice_weight`` squared soft Dice + ``bce_weight`` BCE of logits against a {0, 1} target, and the two parts."""
    dice_part = dice(logits, target)
    bce_part = F.binary_cross_entropy_with_logits(logits, target)
    return dice_weight * dice_part + bce_weight * bce_part, dice_part, bce_part


def prompt_instances(
    prompts: Boxes, batch: int, input_size: tuple[int, int], model_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """All boxes of a batch in the model's input pixels ``(N, 4)`` and the image each belongs to ``(N,)``; an image
    with no box (K = 0, or ``prompts`` None) gets the whole image as its box."""
    height, width = input_size
    whole = torch.tensor([[0.0, 0.0, width - 1.0, height - 1.0]], device=device)
    if prompts is not None and len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompt tensors for a batch of {batch} images")
    boxes, owners = [], []
    for index in range(batch):
        given = whole if prompts is None or len(prompts[index]) == 0 else prompts[index].to(device).float().view(-1, 4)
        boxes.append(given)
        owners += [index] * given.shape[0]
    scale = torch.tensor([model_size / width, model_size / height] * 2, device=device)
    return torch.cat(boxes) * scale, torch.tensor(owners, device=device)


def per_image_max(values: torch.Tensor, owners: torch.Tensor, batch: int) -> torch.Tensor:
    """Maximum over the instances of each image: ``(N, 1, H, W)`` -> ``(batch, 1, H, W)``."""
    if values.shape[0] == batch and torch.equal(owners, torch.arange(batch, device=owners.device)):
        return values
    return torch.stack([values[owners == index].amax(0) for index in range(batch)])


class IMedSAM(SegmentationMethod):
    """I-MedSAM: frozen SAM-family model + gated LoRA + frequency adapters + implicit decoder, box-prompted.

    Args:
        sam: the frozen SAM-family model (``--pretrained sam=...``; default: the installed LiteMedSAM).
        image_size: square input size of the encoder (256 for LiteMedSAM, the paper's 384 for SAM ViT-B).
        lora_rank: rank of the gated LoRA on queries and values (4).
        adapter_rank: bottleneck of the frequency adapters (4); 0 disables them (the paper's ``--wo_fa``).
        frequency_weight: weight of the frequency stream added to each block's output (0.5).
        frequencies: coordinate Fourier frequencies (10).
        progressive_epochs: the frequency mask opens fully after this many epochs (the paper's ``epoch_T``: 20).
        coarse_hidden, fine_hidden: widths of the coarse and the fine MLP.
        feature_dim: width of the coarse MLP's feature output for the fine MLP (256).
        dropout, mc_passes, top_k_ratio: MC-dropout probability (0.5), passes (2) and share of refined pixels (1/8).
        dice_weight, bce_weight: loss weights (0.8 squared Dice, 0.2 BCE).
        fine_warmup_epochs: the loss moves from the coarse to the fine logits over this many epochs (5).
        box_jitter: training boxes: each side of the ground-truth box moves out by U{0..box_jitter} pixels (19) of
            the input.
        train_grid: side of the grid the decoder is queried on in training (masks resized nearest); None: the
            input size.
        chunk_pixels: pixels per decoder call at inference (memory bound for large output grids).
    """

    name = "i-medsam"
    size_multiple = 16
    prompt_kind = "box"
    pretrained_parts = {"sam": SAM}
    training_defaults = {"lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 0}
    decoder_lr_scale = 1.0
    encoder_lr_scale = 0.05  # the paper: 5e-5 for everything but the decoder MLPs (1e-3)

    def __init__(
        self,
        sam: FrozenSAM,
        image_size: int = 256,
        lora_rank: int = 4,
        adapter_rank: int = 4,
        frequency_weight: float = 0.5,
        frequencies: int = 10,
        progressive_epochs: int = 20,
        coarse_hidden: Sequence[int] = (1024, 512),
        fine_hidden: Sequence[int] = (256, 256, 128),
        feature_dim: int = 256,
        dropout: float = 0.5,
        mc_passes: int = 2,
        top_k_ratio: float = 0.125,
        dice_weight: float = 0.8,
        bce_weight: float = 0.2,
        fine_warmup_epochs: int = 5,
        box_jitter: int = 19,
        train_grid: int | None = None,
        chunk_pixels: int = 65536,
    ) -> None:
        super().__init__(image_size)
        self.options = {
            "image_size": image_size,
            "lora_rank": lora_rank,
            "adapter_rank": adapter_rank,
            "frequency_weight": frequency_weight,
            "frequencies": frequencies,
            "progressive_epochs": progressive_epochs,
            "coarse_hidden": list(coarse_hidden),
            "fine_hidden": list(fine_hidden),
            "feature_dim": feature_dim,
            "dropout": dropout,
            "mc_passes": mc_passes,
            "top_k_ratio": top_k_ratio,
            "dice_weight": dice_weight,
            "bce_weight": bce_weight,
            "fine_warmup_epochs": fine_warmup_epochs,
            "box_jitter": box_jitter,
            "train_grid": train_grid,
            "chunk_pixels": chunk_pixels,
        }
        self.sam = sam
        self.adapters = nn.ModuleList(
            BlockAdapter(dim, lora_rank, adapter_rank, frequency_weight) for dim in sam.image_encoder.block_dims
        )
        # Trainable copies, initialised from the pretrained parts; only what a box prompt uses is trained.
        self.prompt_encoder = copy.deepcopy(sam.prompt_encoder)
        for parameter in self.prompt_encoder.box_parameters():
            parameter.requires_grad_(True)
        self.output_upscaling = copy.deepcopy(sam.mask_decoder.output_upscaling).requires_grad_(True)
        dim = sam.embedding_channels
        self.decoder = SegField(
            feature_channels=dim // 8,
            position_channels=dim,
            frequencies=frequencies,
            coarse_hidden=coarse_hidden,
            fine_hidden=fine_hidden,
            feature_dim=feature_dim,
            dropout=dropout,
            mc_passes=mc_passes,
            top_k_ratio=top_k_ratio,
            chunk_pixels=chunk_pixels,
        )
        self.decoder.set_progress(1.0 / progressive_epochs)
        self.dice = DiceLoss(sigmoid=True, squared_pred=True)
        self.epoch = 0

    @classmethod
    def with_random_weights(cls, tiny: bool = False, **options: Any) -> IMedSAM:
        return cls(FrozenSAM.from_config(FrozenSAM.litemedsam_config()), **options)

    # ------------------------------------------------------------------------------------------------- training

    def begin_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch
        self.decoder.set_progress((epoch + 1) / self.options["progressive_epochs"])

    def parameter_groups(self) -> list[dict[str, Any]]:
        decoder = [p for p in self.decoder.parameters() if p.requires_grad]
        chosen = {id(p) for p in decoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in chosen]
        return [
            {"params": decoder, "lr_scale": self.decoder_lr_scale},
            {"params": rest, "lr_scale": self.encoder_lr_scale},
        ]

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        # Jittered ground-truth boxes, drawn from the global RNG (which the trainer seeds and restores).
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        prompts = boxes_from_masks(masks, jitter=self.options["box_jitter"], rng=rng)
        grid = self.options["train_grid"]
        size = (grid, grid) if grid else tuple(masks.shape[-2:])
        target = F.interpolate(masks.float(), size=size, mode="nearest") if tuple(masks.shape[-2:]) != size else masks
        coarse, fine, _, owners = self.instance_logits(images, prompts, size)
        target = target[owners].float()
        coarse_loss, _, _ = squared_dice_bce(coarse, target, self.dice, *self._weights())
        fine_loss, fine_dice, fine_bce = squared_dice_bce(fine, target, self.dice, *self._weights())
        share = min((self.epoch + 1) / self.options["fine_warmup_epochs"], 1.0)
        loss = (1.0 - share) * coarse_loss + share * fine_loss
        return {"loss": loss, "coarse": coarse_loss, "fine": fine_loss, "dice": fine_dice, "bce": fine_bce}

    def _weights(self) -> tuple[float, float]:
        return self.options["dice_weight"], self.options["bce_weight"]

    # ------------------------------------------------------------------------------------------------- inference

    def instance_logits(
        self, images: torch.Tensor, prompts: Boxes, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Coarse logits, refined logits and MC-dropout variance ``(N, 1, *size)`` of every box of the batch (an
        image without a box gets the whole image), and the image each box belongs to ``(N,)``."""
        batch = images.shape[0]
        boxes, owners = prompt_instances(prompts, batch, tuple(images.shape[-2:]), self.image_size, images.device)
        model_input = images
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            model_input = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        frequency = fourier_magnitude(model_input) if self.options["adapter_rank"] else None
        embedding = self.sam.image_encoder(model_input, adapters=self.adapters, frequency_image=frequency)
        grid = tuple(embedding.shape[-2:])
        position = self.prompt_encoder.dense_pe(grid)
        sparse = self.prompt_encoder.embed_boxes(boxes, (self.image_size, self.image_size))
        dense = self.prompt_encoder.dense_embedding(boxes.shape[0], grid)
        _, attended = self.sam.mask_decoder.attend(embedding[owners], position, sparse, dense)
        coarse, fine, variance = self.decoder(self.output_upscaling(attended), position, size)
        return coarse, fine, variance, owners

    def predict(
        self,
        images: torch.Tensor,
        *,
        size: tuple[int, int] | None = None,
        prompts: Boxes = None,
        generator: Generators = None,
        **sampling: Any,
    ) -> Prediction:
        """Foreground probability at ``size`` (any grid: the implicit decoder is queried there) for the given boxes
        (the union over an image's boxes; the whole image where there are none), with the relative MC-dropout
        variance (1: the image's most uncertain pixel) as the ``uncertainty`` map."""
        self.resolve_sampling(sampling)
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        _, fine, variance, owners = self.instance_logits(images, prompts, size)
        variance = variance / variance.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
        batch = images.shape[0]
        probability = per_image_max(torch.sigmoid(fine), owners, batch)
        return Prediction(probability, {"uncertainty": per_image_max(variance, owners, batch).clamp(0.0, 1.0)})
