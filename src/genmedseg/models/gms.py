"""GMS: a latent mapping model between the frozen Stable Diffusion VAE's image and mask latents (arXiv 2403.18198).

The frozen SD VAE encodes the image (posterior mean, scaled by 0.18215); ``ResAttnUNetDS`` maps it to the mask's
latent; the frozen decoder turns the prediction into a probability map. Losses: latent MSE and image-space Dice on
the ``level2``, ``level1`` and ``out`` heads.

Latent noise augmentation: with probability 0.5 per batch the training input is a posterior sample instead of the
mean. ``latent_noise="posterior"`` (default) samples in the scaled latent space, ``mean + 0.18215 * sigma * eps``,
which is the posterior the paper describes. The original code adds the *unscaled* ``sigma * eps`` to the scaled
mean, noise about 5.5 times larger relative to the latent; ``latent_noise="original"`` reproduces that, and
``"none"`` turns the augmentation off.

No SD VAE weights ship with genmedseg: pass ``vae=`` a diffusers folder, an SD 1.x/2.x ``.ckpt``/``.safetensors``
file (also the first-stage checkpoint the GMS authors distribute) or a hub id (default
``stabilityai/stable-diffusion-2/vae``; see ``genmedseg.vae.load_sd_vae``).
"""

from __future__ import annotations

from typing import Any

import torch

from genmedseg.errors import check_choice
from genmedseg.models.latent import LatentSegmentationMethod
from genmedseg.models.lmm import ResAttnUNetDS
from genmedseg.vae import SD_VAE, SD_VAE_CONFIG, TINY_SD_VAE_CONFIG, FrozenSDVAE

LATENT_NOISE = ("posterior", "original", "none")


class GMS(LatentSegmentationMethod):
    """GMS with the frozen SD VAE; 1.56 M trainable parameters.

    Args:
        vae: the frozen Stable Diffusion VAE.
        image_size: side of the square input (a multiple of 8).
        mapping_channels, mapping_mult: width and multipliers of ``ResAttnUNetDS`` (32, (1, 2, 4, 4)).
        latent_noise: ``"posterior"``, ``"original"`` or ``"none"`` (see the module docstring).
        noise_probability: chance per batch of training on a posterior sample (0.5).
        supervised_heads, latent_weight, dice_weight, head_init: as in Wave-GMS.
    """

    name = "gms"
    pretrained_parts = {"vae": SD_VAE}

    def __init__(
        self,
        vae: FrozenSDVAE,
        image_size: int = 224,
        mapping_channels: int = 32,
        mapping_mult: tuple[int, ...] = (1, 2, 4, 4),
        latent_noise: str = "posterior",
        noise_probability: float = 0.5,
        supervised_heads: tuple[str, ...] = ("level2", "level1", "out"),
        latent_weight: float = 1.0,
        dice_weight: float = 1.0,
        head_init: str = "published",
    ) -> None:
        super().__init__(image_size, supervised_heads, latent_weight, dice_weight, head_init)
        check_choice("latent_noise", latent_noise, LATENT_NOISE)
        self.options = {
            "image_size": image_size,
            "mapping_channels": mapping_channels,
            "mapping_mult": list(mapping_mult),
            "latent_noise": latent_noise,
            "noise_probability": noise_probability,
            "supervised_heads": list(supervised_heads),
            "latent_weight": latent_weight,
            "dice_weight": dice_weight,
            "head_init": head_init,
        }
        self.autoencoder = vae
        channels = vae.latent_channels
        self.set_mapping(ResAttnUNetDS(channels, channels, channels=mapping_channels, ch_mult=tuple(mapping_mult)))

    @classmethod
    def with_random_weights(cls, tiny: bool = False, **options: Any) -> GMS:
        return cls(FrozenSDVAE.from_config(TINY_SD_VAE_CONFIG if tiny else SD_VAE_CONFIG), **options)

    def noisy_latent(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """The training input: the mean, or with ``noise_probability`` a posterior sample (one coin per batch)."""
        mode = self.options["latent_noise"]
        if mode == "none" or torch.rand(()) >= self.options["noise_probability"]:
            return mean
        sigma = torch.exp(0.5 * logvar)
        if mode == "posterior":
            sigma = sigma * self.autoencoder.scaling_factor
        return mean + sigma * torch.randn_like(mean)

    def training_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        (target, _), (mean, logvar) = self.encode_masks_and_images(batch["mask"], batch["image"])
        with torch.no_grad():
            latent = self.noisy_latent(mean, logvar)
        loss, parts = self.mapping_losses(self.mapping(latent), batch["mask"], target)
        return {"loss": loss, **parts}

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_proba(self.mapping(self.autoencoder.encode(images)[0])["out"])
