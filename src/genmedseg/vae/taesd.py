"""The TAESD family of tiny autoencoders (TAESD, TAESDXL, TAESD3, TAEF1, TAEF2), written from its spec.

Encoder and decoder are plain ``nn.Sequential`` stacks whose indices match the original state dicts, so
the ``<name>_encoder.pth`` / ``<name>_decoder.pth`` files of github.com/madebyollin/taesd load strictly.
Images are in [0, 1]; latents are raw (no scaling) at 1/8 of the image size.

Example::

    vae = FrozenTinyVAE(latent_channels=4)
    latents = vae.encode(torch.rand(2, 3, 256, 256))  # (2, 4, 32, 32)
    images = vae.decode(latents)                      # (2, 3, 256, 256) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from genmedseg.errors import ConfigError, WeightsError
from genmedseg.vae.frozen import FrozenConv2d, FrozenModule, MaskedReLU

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny

BLOCKS_PER_STAGE = 3
NUM_STAGES = 3
# diffusers' DecoderTiny applies the soft clamp in forward(), so its Sequential lacks our index 0.
DIFFUSERS_DECODER_INDEX_SHIFT = 1


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return FrozenConv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """``tanh(z / magnitude) * magnitude``: bounds latents smoothly before decoding."""

    def __init__(self, magnitude: float = 3.0) -> None:
        super().__init__()
        self.magnitude = magnitude

    def forward(self, latents: Tensor) -> Tensor:
        """Squash ``latents`` into (-magnitude, magnitude), close to identity near zero."""
        return torch.tanh(latents / self.magnitude) * self.magnitude


class TinyBlock(nn.Module):
    """Residual block: three 3x3 convolutions with ReLU between them, identity skip, ReLU after the sum.

    With ``use_midblock_gn`` (TAEF2) a pointwise bottleneck ``conv1x1(c -> expansion*c) -> GroupNorm ->
    ReLU -> conv1x1(expansion*c -> c)`` is first added to the input. Its GroupNorm is the only layer of the
    family that sees statistics of the whole image, hence the original name ``pool``. The group count is
    not stored in the weights; 4 is the value with which the TAEF2 weights reconstruct (38 dB PSNR on an
    ISIC image against 24-32 dB with 1, 2, 8 or 16 groups).
    """

    def __init__(self, channels: int, use_midblock_gn: bool = False, gn_groups: int = 4, gn_expansion: int = 4) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3x3(channels, channels),
            MaskedReLU(),
            _conv3x3(channels, channels),
            MaskedReLU(),
            _conv3x3(channels, channels),
        )
        hidden = channels * gn_expansion
        self.pool = (
            nn.Sequential(
                FrozenConv2d(channels, hidden, kernel_size=1, bias=False),
                nn.GroupNorm(gn_groups, hidden),
                MaskedReLU(),
                FrozenConv2d(hidden, channels, kernel_size=1, bias=False),
            )
            if use_midblock_gn
            else None
        )
        self.activation = MaskedReLU()

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block; spatial size and channel count are unchanged."""
        if self.pool is not None:
            x = x + self.pool(x)
        return self.activation(self.conv(x) + x)


def build_tiny_encoder(latent_channels: int = 4, channels: int = 64, use_midblock_gn: bool = False) -> nn.Sequential:
    """TAESD encoder: [0, 1] image (B, 3, H, W) -> raw latents (B, latent_channels, H/8, W/8)."""
    layers: list[nn.Module] = [_conv3x3(3, channels), TinyBlock(channels)]
    for stage in range(NUM_STAGES):
        deepest = stage == NUM_STAGES - 1
        layers.append(_conv3x3(channels, channels, stride=2, bias=False))
        layers += [TinyBlock(channels, use_midblock_gn and deepest) for _ in range(BLOCKS_PER_STAGE)]
    layers.append(_conv3x3(channels, latent_channels))
    return nn.Sequential(*layers)


def build_tiny_decoder(latent_channels: int = 4, channels: int = 64, use_midblock_gn: bool = False) -> nn.Sequential:
    """TAESD decoder: raw latents (B, latent_channels, h, w) -> image (B, 3, 8h, 8w), roughly in [0, 1]."""
    layers: list[nn.Module] = [SoftClamp(), _conv3x3(latent_channels, channels), MaskedReLU()]
    for stage in range(NUM_STAGES):
        first = stage == 0
        layers += [TinyBlock(channels, use_midblock_gn and first) for _ in range(BLOCKS_PER_STAGE)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(channels, channels, bias=False)]
    layers += [TinyBlock(channels), _conv3x3(channels, 3)]
    return nn.Sequential(*layers)


def detect_tiny_vae_config(encoder_state: Mapping[str, Tensor], decoder_state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Read the architecture arguments of :class:`FrozenTinyVAE` from TAESD-format state dicts.

    The latent channel count is the output of the encoder's last convolution (and must equal the input of
    the decoder's first); the mid-block GroupNorm variant is recognised by its ``pool`` weights. Raises
    :class:`WeightsError` when the dicts do not look like a TAESD encoder/decoder pair.
    """
    try:
        channels = encoder_state["0.weight"].shape[0]
        last_index = max(int(key.split(".")[0]) for key in encoder_state)
        latent_channels = encoder_state[f"{last_index}.weight"].shape[0]
        decoder_latent_channels = decoder_state["1.weight"].shape[1]
    except (KeyError, ValueError, IndexError, AttributeError) as error:
        raise WeightsError(
            "the state dicts are not a TAESD-family encoder/decoder pair (expected nn.Sequential keys such as "
            f"'0.weight' in the encoder and '1.weight' in the decoder; problem: {error!r}); use the "
            "*_encoder.pth / *_decoder.pth files from github.com/madebyollin/taesd"
        ) from error
    if latent_channels != decoder_latent_channels:
        raise WeightsError(
            f"the encoder writes {latent_channels} latent channels but the decoder reads {decoder_latent_channels}: "
            "the two files come from different autoencoders; use an encoder and decoder of the same name"
        )
    use_midblock_gn = any(".pool." in key for key in (*encoder_state, *decoder_state))
    return {"latent_channels": latent_channels, "use_midblock_gn": use_midblock_gn, "channels": channels}


class FrozenTinyVAE(FrozenModule):
    """Frozen TAESD-family autoencoder with [0, 1] images on both sides.

    Args:
        latent_channels: channels of the latent (4 for TAESD/TAESDXL, 16 for TAESD3/TAEF1, 32 for TAEF2).
        use_midblock_gn: add the GroupNorm bottleneck branch of TAEF2 to the blocks at 1/8 resolution.
        channels: width of every hidden layer (64 in all released weights; smaller for fast tests).

    Parameters never receive gradients and the module stays in eval mode, but gradients flow through
    :meth:`decode` (and :meth:`encode`) to their inputs.
    """

    downscale_factor: int = 2**NUM_STAGES
    config_keys: tuple[str, ...] = ("latent_channels", "use_midblock_gn", "channels")

    def __init__(self, latent_channels: int = 4, use_midblock_gn: bool = False, channels: int = 64) -> None:
        super().__init__()
        if latent_channels < 1 or channels < 1:
            raise ConfigError(
                f"FrozenTinyVAE needs positive latent_channels and channels, got {latent_channels} and {channels}"
            )
        self.latent_channels = latent_channels
        self.use_midblock_gn = use_midblock_gn
        self.channels = channels
        self.encoder = build_tiny_encoder(latent_channels, channels, use_midblock_gn)
        self.decoder = build_tiny_decoder(latent_channels, channels, use_midblock_gn)
        self.freeze()

    @property
    def config(self) -> dict[str, Any]:
        """Architecture arguments; ``FrozenTinyVAE.from_config(vae.config)`` rebuilds it with random weights."""
        return {key: getattr(self, key) for key in self.config_keys}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FrozenTinyVAE:
        """Build the architecture described by ``config`` (as written by :attr:`config`), random weights."""
        unknown = set(config) - set(cls.config_keys)
        if unknown:
            raise ConfigError(
                f"unknown FrozenTinyVAE config keys {sorted(unknown)}; valid keys: {', '.join(cls.config_keys)}"
            )
        return cls(**config)

    @classmethod
    def from_taesd_state_dicts(
        cls, encoder_state: Mapping[str, Tensor], decoder_state: Mapping[str, Tensor]
    ) -> FrozenTinyVAE:
        """Build the architecture detected from TAESD-format state dicts and load them strictly as float32."""
        vae = cls(**detect_tiny_vae_config(encoder_state, decoder_state))
        try:
            vae.encoder.load_state_dict(encoder_state)
            vae.decoder.load_state_dict(decoder_state)
        except RuntimeError as error:
            raise WeightsError(
                f"TAESD weights do not fit the architecture detected from them ({vae.config}): {error}"
            ) from error
        return vae

    @classmethod
    def from_diffusers(cls, autoencoder: AutoencoderTiny) -> FrozenTinyVAE:
        """Copy the weights of a diffusers ``AutoencoderTiny`` into this architecture.

        diffusers keeps the same layer order (its decoder applies the soft clamp outside its Sequential),
        so only the key prefixes change. Raises :class:`WeightsError` for configurations this architecture
        does not have (other activations, widths varying across stages, other block counts).
        """
        config = autoencoder.config
        width = config.encoder_block_out_channels[0]
        expected = {
            "in_channels": 3,
            "out_channels": 3,
            "act_fn": "relu",
            "upsample_fn": "nearest",
            "upsampling_scaling_factor": 2,
            "num_encoder_blocks": (1,) + (BLOCKS_PER_STAGE,) * NUM_STAGES,
            "num_decoder_blocks": (BLOCKS_PER_STAGE,) * NUM_STAGES + (1,),
            "encoder_block_out_channels": (width,) * (NUM_STAGES + 1),
            "decoder_block_out_channels": (width,) * (NUM_STAGES + 1),
        }
        mismatched = [
            f"{key}={config[key]!r} (expected {value!r})"
            for key, value in expected.items()
            if (tuple(config[key]) if isinstance(value, tuple) else config[key]) != value
        ]
        if mismatched:
            raise WeightsError(
                f"this AutoencoderTiny is not a TAESD-family architecture: {', '.join(mismatched)}; use a TAESD, "
                "TAESDXL, TAESD3 or TAEF1 model"
            )
        vae = cls(latent_channels=config.latent_channels, channels=width)
        state = autoencoder.state_dict()
        vae.encoder.load_state_dict(_renumbered(state, "encoder.layers.", index_shift=0))
        vae.decoder.load_state_dict(_renumbered(state, "decoder.layers.", DIFFUSERS_DECODER_INDEX_SHIFT))
        return vae

    def encode(self, images01: Tensor) -> Tensor:
        """Raw latents (B, latent_channels, H/8, W/8) of images (B, 3, H, W) in [0, 1]; H, W multiples of 8."""
        if images01.ndim != 4 or images01.shape[1] != 3:
            raise ValueError(f"encode expects images of shape (B, 3, H, W), got {tuple(images01.shape)}")
        if images01.shape[-2] % self.downscale_factor or images01.shape[-1] % self.downscale_factor:
            raise ValueError(
                f"encode expects H and W multiples of {self.downscale_factor}, got {tuple(images01.shape[-2:])}; "
                "resize or pad the images"
            )
        return self.encoder(images01)

    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, 3, 8h, 8w) clamped to [0, 1] from raw latents (B, latent_channels, h, w)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"decode expects latents of shape (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        return self.decoder(latents).clamp(0.0, 1.0)


def _renumbered(state: Mapping[str, Tensor], prefix: str, index_shift: int) -> dict[str, Tensor]:
    """Keys ``<prefix><i>.<rest>`` -> ``<i + index_shift>.<rest>``, other keys dropped."""
    renamed = {}
    for key, value in state.items():
        if key.startswith(prefix):
            index, rest = key[len(prefix) :].split(".", 1)
            renamed[f"{int(index) + index_shift}.{rest}"] = value
    return renamed
