"""Frozen Stable Diffusion VAE (diffusers ``AutoencoderKL``) with [0, 1] images and scaled latents, as GMS uses it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from genmedseg.vae.frozen import FrozenModule

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


# The architecture of the Stable Diffusion 1.x/2.x VAE (~84 M parameters) and a tiny one of the same layout.
SD_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}
TINY_SD_VAE_CONFIG: dict[str, Any] = {
    **SD_VAE_CONFIG,
    "block_out_channels": [8] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


class FrozenSDVAE(FrozenModule):
    """Frozen KL autoencoder of Stable Diffusion 1.x/2.x: 3-channel images in [0, 1] <-> scaled latents at 1/8 size.

    The scaling factor and optional shift come from the autoencoder's own config (``scaling_factor`` is
    0.18215 for the SD 1.x/2.x VAE and is diffusers' default). Parameters never receive gradients and the
    module stays in eval mode, but gradients flow through :meth:`decode` to its input.

    Example::

        vae = load_sd_vae("stabilityai/sd-vae-ft-mse")
        mean, logvar = vae.encode(torch.rand(1, 3, 224, 224))  # (1, 4, 28, 28) each
        images = vae.decode(mean)                               # (1, 3, 224, 224) in [0, 1]
    """

    def __init__(self, autoencoder: AutoencoderKL) -> None:
        super().__init__()
        self.autoencoder = autoencoder.float()
        self.freeze()

    @property
    def scaling_factor(self) -> float:
        """Factor that brings the latents to about unit variance (0.18215 for SD 1.x/2.x)."""
        return float(self.autoencoder.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        """Latent offset removed before scaling (0 for SD 1.x/2.x, whose config has none)."""
        return float(self.autoencoder.config.get("shift_factor") or 0.0)

    @property
    def downscale_factor(self) -> int:
        """Ratio between image and latent size (8 for the SD VAE)."""
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the latent (4 for the SD VAE)."""
        return int(self.autoencoder.config.latent_channels)

    @property
    def config(self) -> dict[str, Any]:
        """The ``AutoencoderKL`` config; ``FrozenSDVAE.from_config(vae.config)`` rebuilds it with random weights."""
        # keys starting with "_" are diffusers' bookkeeping, not architecture
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in self.autoencoder.config.items()
            if not key.startswith("_")
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FrozenSDVAE:
        """Build the ``AutoencoderKL`` described by ``config`` with random weights."""
        from diffusers import AutoencoderKL

        return cls(AutoencoderKL.from_config(dict(config)))

    def encode(self, images01: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior of images (B, 3, H, W) in [0, 1]: ``(mean * scaling_factor, logvar)``, each (B, C, H/8, W/8)."""
        posterior = self.autoencoder.encode(images01 * 2.0 - 1.0).latent_dist
        return (posterior.mean - self.shift_factor) * self.scaling_factor, posterior.logvar

    def decode(self, latents_scaled: Tensor) -> Tensor:
        """Images (B, 3, 8h, 8w) clamped to [0, 1] from scaled latents (B, C, h, w)."""
        images = self.autoencoder.decode(latents_scaled / self.scaling_factor + self.shift_factor).sample
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)
