"""Frozen pretrained autoencoders: the TAESD family (Wave-GMS) and the Stable Diffusion VAE (GMS).

``load_tiny_vae`` / ``load_sd_vae`` find the weights (local folder or file, then Hugging Face hub id) and
return modules whose ``encode`` takes images in [0, 1] and whose ``decode`` returns images in [0, 1].
"""

from genmedseg.vae.frozen import FrozenModule
from genmedseg.vae.loading import SD_VAE, TINY_VAE, load_sd_vae, load_tiny_vae
from genmedseg.vae.sd_vae import SD_VAE_CONFIG, TINY_SD_VAE_CONFIG, FrozenSDVAE
from genmedseg.vae.taesd import FrozenTinyVAE, detect_tiny_vae_config

__all__ = [
    "SD_VAE",
    "SD_VAE_CONFIG",
    "TINY_SD_VAE_CONFIG",
    "TINY_VAE",
    "FrozenModule",
    "FrozenSDVAE",
    "FrozenTinyVAE",
    "detect_tiny_vae_config",
    "load_sd_vae",
    "load_tiny_vae",
]
