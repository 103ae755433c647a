"""What GMS and Wave-GMS share: a frozen autoencoder, deep-supervised latent mapping and its two losses.

The latent mapping model predicts the mask's latent at several depths (``level3`` ... ``out``); the supervised heads
are trained with a latent MSE against the autoencoder's latent of the mask and with a soft Dice between the mask and
the heads decoded by the frozen decoder (the gradient goes through the decoder, whose weights stay fixed).

``head_init="zeros"`` (a genmedseg option, not in the papers) zero-initialises the last convolution of every head, so
training starts from the zero latent instead of the random latents of the published initialisation. With the frozen
VAE's image latent as input and no SFT guidance, it let GlaS runs leave the all-foreground start that the published
initialisation kept; elsewhere it changed nothing measurable (docs/wave-gms-learning.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from genmedseg.errors import check_choice
from genmedseg.models.base import SegmentationMethod

HEAD_INITS = ("published", "zeros")


class LatentSegmentationMethod(SegmentationMethod):
    """Base of the latent generative segmenters: decoding, mask latents and the latent + Dice losses.

    Subclasses declare their frozen autoencoder as the ``vae`` pretrained part, take it as the constructor argument
    ``vae``, set ``self.autoencoder`` and ``self.options``, and hand their deep-supervised latent mapping model to
    :meth:`set_mapping`, which keeps only the supervised heads and ``out`` and initialises them.
    """

    size_multiple = 8
    autoencoder: nn.Module
    mapping: nn.Module

    def __init__(
        self,
        image_size: int,
        supervised_heads: Sequence[str],
        latent_weight: float,
        dice_weight: float,
        head_init: str,
    ) -> None:
        super().__init__(image_size)
        check_choice("head_init", head_init, HEAD_INITS)
        self.head_init = head_init
        self.supervised_heads = tuple(supervised_heads)
        self.latent_weight = latent_weight
        self.dice_weight = dice_weight
        self.dice_loss = DiceLoss()

    def frozen_modules(self) -> dict[str, nn.Module]:
        return {"vae": self.autoencoder}

    def used_heads(self) -> tuple[str, ...]:
        """The heads that enter the losses, and ``out``, the one that predicts."""
        return tuple(dict.fromkeys((*self.supervised_heads, "out")))

    def set_mapping(self, mapping: nn.Module) -> None:
        """Use ``mapping`` with only the heads in :meth:`used_heads`, initialised as ``head_init`` says."""
        mapping.keep_heads(self.used_heads())
        if self.head_init == "zeros":
            mapping.zero_heads()
        self.mapping = mapping

    def decode_proba(self, latents: torch.Tensor) -> torch.Tensor:
        """Frozen decoder output averaged over RGB: a probability map in [0, 1]."""
        return self.autoencoder.decode(latents).mean(dim=1, keepdim=True).clamp(0.0, 1.0)

    def encode_masks_and_images(self, masks: torch.Tensor, images: torch.Tensor) -> tuple[Any, Any]:
        """The frozen encoder's output for binary masks ``(B,1,H,W)`` (as grey RGB images) and for the images, from
        one batched call without gradient: each step needs both, and one call of twice the batch is cheaper."""
        with torch.no_grad():
            output = self.autoencoder.encode(torch.cat([masks.expand(-1, 3, -1, -1), images]))
        if isinstance(output, tuple):  # the SD VAE's posterior (mean, logvar)
            return tuple(zip(*(part.chunk(2) for part in output), strict=True))
        return tuple(output.chunk(2))

    def mapping_losses(
        self, heads: dict[str, torch.Tensor], masks: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted latent MSE (against ``target``, the masks' latent) + image-space Dice over the supervised heads,
        and the unweighted parts."""
        latent_mse = sum(F.mse_loss(heads[name], target) for name in self.supervised_heads)
        # One decoder call per head: one call for all heads keeps three times the full-resolution activations alive
        # at once (Wave-GMS at 224², batch 12: 1.1 GB more peak memory) and was no faster.
        dice = sum(self.dice_loss(self.decode_proba(heads[name]), masks) for name in self.supervised_heads)
        loss = self.latent_weight * latent_mse + self.dice_weight * dice
        return loss, {"latent_mse": latent_mse, "dice": dice}
