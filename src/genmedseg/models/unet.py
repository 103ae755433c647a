"""A discriminative baseline: MONAI's ``BasicUNet`` trained with Dice + binary cross-entropy.

It runs in the same trainer, evaluator and benchmark as the generative methods, so every comparison has the plain
answer beside it.

Example::

    >>> model = UNet(image_size=64)
    >>> model.predict_proba(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet

from genmedseg.models.base import SegmentationMethod


class UNet(SegmentationMethod):
    """U-Net (MONAI ``BasicUNet``, four 2x down-samplings) with a sigmoid output.

    Args:
        image_size: side of the square input (a multiple of 16).
        features: channels of the five encoder levels and of the last decoder level (MONAI's default).
        dropout: dropout probability inside the blocks.
    """

    name = "unet"
    size_multiple = 16

    def __init__(
        self, image_size: int = 224, features: tuple[int, ...] = (32, 32, 64, 128, 256, 32), dropout: float = 0.0
    ) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size, "features": list(features), "dropout": dropout}
        self.network = BasicUNet(
            spatial_dims=2, in_channels=3, out_channels=1, features=tuple(features), dropout=dropout
        )
        # Dice on sigmoid probabilities + BCE on logits (MONAI >= 1.3 computes BCE for one-channel outputs).
        self.loss = DiceCELoss(sigmoid=True)

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.network(batch["image"]), batch["mask"])}

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.network(images))
