"""Wave-GMS: a trainable Haar-wavelet encoder and a latent mapping model around a frozen tiny VAE.

The image goes through a LiteVAE-style multi-resolution wavelet encoder to a latent the size of the tiny VAE's
(1/8 resolution); a latent mapping model (``ResAttnUNetDS``, or ``SFTUNetDS`` guided by the level-3 Haar detail
bands) maps it to the latent of the mask, and the frozen VAE decoder turns that into a probability map. Training
uses three losses (Wave-GMS, arXiv 2510.03216):

* latent MSE between the ``level2``, ``level1`` and ``out`` heads and the VAE latent of the mask,
* soft Dice between the mask and each of those heads decoded by the frozen decoder (gradients flow through it),
* alignment of the wavelet latent with the VAE's own image latent: ``0.9 * (1 - cos) + 0.1 * SmoothL1``.

Deviations from the original code, on purpose: inference uses the *mean* latent (the original samples, so its
predictions change from run to run); the training latent is sampled as in the paper. The ablation of the paper's
Table 3 is available with ``image_encoder="tiny-vae"`` (the frozen VAE encoder gives the image latent, no alignment
loss) and ``mapping="sft"``.

Example::

    >>> from genmedseg.vae import FrozenTinyVAE
    >>> model = WaveGMS(FrozenTinyVAE.from_config({"latent_channels": 4, "channels": 8}), image_size=64)
    >>> model.predict_proba(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from genmedseg.errors import check_choice
from genmedseg.models.latent import LatentSegmentationMethod
from genmedseg.models.lmm import SKFF, ResAttnUNetDS, SFTUNetDS
from genmedseg.models.wavelet import WaveletEncoder, haar_pyramid
from genmedseg.vae import TINY_VAE, FrozenTinyVAE

IMAGE_ENCODERS = ("wavelet", "tiny-vae")
MAPPINGS = ("resattn", "sft")


class WaveGMS(LatentSegmentationMethod):
    """Wave-GMS with a frozen tiny VAE (TAESD family); ~2.6 M trainable parameters with a 4-channel VAE.

    Args:
        vae: the frozen tiny autoencoder (its latent channels set the latent width of everything else).
        image_size: side of the square input (a multiple of 8).
        image_encoder: ``"wavelet"`` (the paper's LiteVAE-S encoder) or ``"tiny-vae"`` (the frozen VAE encoder).
        mapping: ``"resattn"`` (ResAttnUNet_DS) or ``"sft"`` (SFT_UNet_DS guided by SKFF-fused Haar details).
        encoder_channels, encoder_mult: width and multipliers of the wavelet encoder (LiteVAE-S: 16, (1, 2, 2)).
        mapping_channels, mapping_mult: width and multipliers of the latent mapping model (32, (1, 2, 4, 4)).
        supervised_heads: the deep-supervision heads that enter the losses (the paper leaves ``level3`` out, and
            genmedseg does not build it then: 4,864 of the paper's 2,600,668 parameters are that untrained head).
        latent_weight, dice_weight, align_weight: loss weights (all 1 in the paper).
        head_init: ``"published"`` (the original code's initialisation of the heads) or ``"zeros"`` (their last
            convolution starts at zero; see ``genmedseg.models.latent``).
        align_cosine_share: share of the cosine term in the alignment loss (0.9; SmoothL1 gets the rest).
        gradient_checkpointing: recompute the wavelet encoder's ResBlocks in the backward pass instead of keeping
            their activations: the same gradients, about 1.5 GB less peak memory at 224², batch 12, for 2 % more
            FLOPs per step (benchmarks/README.md). No effect with ``image_encoder="tiny-vae"``.
    """

    name = "wave-gms"
    pretrained_parts = {"vae": TINY_VAE}

    def __init__(
        self,
        vae: FrozenTinyVAE,
        image_size: int = 224,
        image_encoder: str = "wavelet",
        mapping: str = "resattn",
        encoder_channels: int = 16,
        encoder_mult: tuple[int, ...] = (1, 2, 2),
        mapping_channels: int = 32,
        mapping_mult: tuple[int, ...] = (1, 2, 4, 4),
        supervised_heads: tuple[str, ...] = ("level2", "level1", "out"),
        latent_weight: float = 1.0,
        dice_weight: float = 1.0,
        align_weight: float = 1.0,
        align_cosine_share: float = 0.9,
        head_init: str = "published",
        gradient_checkpointing: bool = True,
    ) -> None:
        super().__init__(image_size, supervised_heads, latent_weight, dice_weight, head_init)
        check_choice("image_encoder", image_encoder, IMAGE_ENCODERS)
        check_choice("mapping", mapping, MAPPINGS)
        self.options = {
            "image_size": image_size,
            "image_encoder": image_encoder,
            "mapping": mapping,
            "encoder_channels": encoder_channels,
            "encoder_mult": list(encoder_mult),
            "mapping_channels": mapping_channels,
            "mapping_mult": list(mapping_mult),
            "supervised_heads": list(supervised_heads),
            "latent_weight": latent_weight,
            "dice_weight": dice_weight,
            "align_weight": align_weight,
            "align_cosine_share": align_cosine_share,
            "head_init": head_init,
            "gradient_checkpointing": gradient_checkpointing,
        }
        self.autoencoder = vae
        latent = vae.latent_channels
        self.encoder = (
            WaveletEncoder(
                latent_channels=latent,
                model_channels=encoder_channels,
                ch_mult=tuple(encoder_mult),
                gradient_checkpointing=gradient_checkpointing,
            )
            if image_encoder == "wavelet"
            else None
        )
        if mapping == "sft":
            self.guidance = SKFF()
            self.set_mapping(SFTUNetDS(latent, latent, channels=mapping_channels, ch_mult=tuple(mapping_mult)))
        else:
            self.guidance = None
            self.set_mapping(ResAttnUNetDS(latent, latent, channels=mapping_channels, ch_mult=tuple(mapping_mult)))

    @classmethod
    def with_random_weights(cls, tiny: bool = False, **options: Any) -> WaveGMS:
        return cls(FrozenTinyVAE(latent_channels=4, channels=8 if tiny else 64), **options)

    def image_latent(self, images: torch.Tensor, sample: bool) -> torch.Tensor:
        """Latent of the images: a posterior sample of the wavelet encoder in training, its mean otherwise."""
        if self.encoder is None:
            return self.autoencoder.encode(images)
        mean, logvar = self.encoder(images)
        return self.encoder.sample(mean, logvar) if sample else mean

    def map_latent(self, latent: torch.Tensor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Deep-supervision heads of the latent mapping model."""
        if self.guidance is None:
            return self.mapping(latent)
        details = haar_pyramid(images, levels=(3,))[0][:, images.shape[1] :]
        return self.mapping(latent, self.guidance(details))

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images, masks = batch["image"], batch["mask"]
        # The VAE's latents of the masks (the target) and of the images (the alignment teacher, or the tiny-vae
        # variant's input): one frozen-encoder call.
        target, teacher = self.encode_masks_and_images(masks, images)
        latent = self.image_latent(images, sample=True) if self.encoder is not None else teacher
        loss, parts = self.mapping_losses(self.map_latent(latent, images), masks, target)
        if self.encoder is not None and self.options["align_weight"]:
            parts["align"] = self.alignment_loss(latent, teacher)
            loss = loss + self.options["align_weight"] * parts["align"]
        return {"loss": loss, **parts}

    def alignment_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-position cosine distance plus SmoothL1 between the wavelet latent and the VAE's image latent."""
        cosine = 1.0 - F.cosine_similarity(student, teacher, dim=1).mean()
        share = self.options["align_cosine_share"]
        return share * cosine + (1.0 - share) * F.smooth_l1_loss(student, teacher)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        latent = self.image_latent(images, sample=False)
        return self.decode_proba(self.map_latent(latent, images)["out"])
