"""Shared fixtures: the optional ``../shared`` folder (real data and weights) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("GENMEDSEG_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: real data and weights live in ../shared beside the repository")
    return path


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (GMS-layout datasets), or skip."""
    return _shared_path("data")


@pytest.fixture
def shared_weights() -> Path:
    """``../shared/weights`` (TAEF2 tiny autoencoder), or skip."""
    return _shared_path("weights")


# --- tiny random-weight parts, so that every generic test runs in seconds --------------------------------------------

TINY_OPTIONS = {
    "wave-gms": {"encoder_channels": 8, "mapping_channels": 16},
    "gms": {"mapping_channels": 16},
    "unet": {"features": [8, 8, 16, 16, 32, 8]},
    "medsegdiff": {"model_channels": 16, "channel_mult": [1, 2], "highway_pools": 2, "attention_resolutions": [2]},
    "seg-guided-diffusion": {
        "block_channels": [8, 16],
        "attention_levels": [1],
        "layers_per_block": 1,
        "norm_groups": 4,
        "train_steps": 100,
    },
    "i-medsam": {"coarse_hidden": [32, 16], "fine_hidden": [16, 16, 8], "feature_dim": 8, "chunk_pixels": 512},
}

TINY_SAM_DECODER = {"dim": 32, "depth": 2, "num_heads": 8, "mlp_dim": 32, "mask_channels": 4}
TINY_SAM_CONFIGS = {
    "tiny-vit": {
        "encoder": {
            "kind": "tiny-vit",
            "embed_dims": [8, 16, 24, 32],
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 2, 4],
            "window_sizes": [7, 7, 7, 7],
            "mlp_ratio": 2.0,
            "out_channels": 32,
        },
        "decoder": TINY_SAM_DECODER,
        "input_size": 256,
    },
    "vit": {
        "encoder": {
            "kind": "vit",
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "patch_size": 16,
            "pos_grid": 4,
            "window_size": 2,
            "global_blocks": [1],
            "mlp_ratio": 2.0,
            "out_channels": 32,
        },
        "decoder": TINY_SAM_DECODER,
        "input_size": 64,
    },
}
"""Tiny SAM-family models in LiteMedSAM's (TinyViT) and SAM's (ViT) checkpoint layouts."""


def save_tiny_sam(path: Path, kind: str = "tiny-vit", seed: int = 0) -> Path:
    """A random SAM-family checkpoint (a plain ``torch.save`` state dict, as LiteMedSAM and SAM ship them)."""
    import torch

    from genmedseg.sam import FrozenSAM

    torch.manual_seed(seed)
    sam = FrozenSAM.from_config(TINY_SAM_CONFIGS[kind])
    for name, buffer in sam.named_buffers():  # BatchNorm statistics away from their defaults, so loading shows
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buffer.normal_(0.0, 0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def save_tiny_vae(folder: Path, latent_channels: int = 4, use_midblock_gn: bool = False, seed: int = 0) -> Path:
    """A random TAESD-format ``tiny_encoder.pth`` / ``tiny_decoder.pth`` pair of width 8 in ``folder``."""
    import torch

    from genmedseg.vae import FrozenTinyVAE

    torch.manual_seed(seed)
    vae = FrozenTinyVAE(latent_channels=latent_channels, use_midblock_gn=use_midblock_gn, channels=8)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(vae.encoder.state_dict(), folder / "tiny_encoder.pth")
    torch.save(vae.decoder.state_dict(), folder / "tiny_decoder.pth")
    return folder


def save_tiny_sd_vae(folder: Path, seed: int = 0) -> Path:
    """A random diffusers ``AutoencoderKL`` folder with the SD VAE's layout (1/8 size, 4 latent channels), width 8."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    blocks = 4
    AutoencoderKL(
        block_out_channels=(8,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vae(tmp_path_factory.mktemp("tiny_vae"))


@pytest.fixture(scope="session")
def tiny_sd_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd_vae(tmp_path_factory.mktemp("tiny_sd_vae"))


@pytest.fixture(scope="session")
def tiny_sam_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("tiny_sam") / "tiny_lite_medsam.pth", "tiny-vit")


@pytest.fixture(scope="session")
def tiny_vit_sam_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sam(tmp_path_factory.mktemp("tiny_sam_vit") / "tiny_sam_vit.pth", "vit")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic GMS-layout dataset (8 train, 4 val, 4 test images of 48 x 48)."""
    from genmedseg.data import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", n_train=8, n_val=4, n_test=4, size=48)
