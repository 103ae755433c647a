"""Find and load the frozen autoencoders: a local file or folder first, then a Hugging Face hub id.

Sources, in the order they are tried:

- a folder with one ``<name>_encoder.pth`` + ``<name>_decoder.pth`` pair (github.com/madebyollin/taesd), or
  the path of the ``*_encoder.pth`` file itself when a folder holds several pairs (tiny VAE only);
- a diffusers model folder (``config.json`` + weights), directly or in a ``vae/`` subfolder;
- a single SD 1.x/2.x ``.ckpt`` / ``.safetensors`` file, full model or first stage only (SD VAE only);
- a hub id ``owner/name`` or ``owner/name/subfolder`` (needs internet or a filled hub cache).

With no source, the environment variable (``GENMEDSEG_VAE`` / ``GENMEDSEG_SD_VAE``) is used, else the
default hub id (:data:`TINY_VAE` and :data:`SD_VAE` are these parts as methods declare them). Every failure raises
:class:`WeightsError` saying how to supply the weights; offline, an uncached hub id fails at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from genmedseg.errors import WeightsError
from genmedseg.pretrained import PretrainedPart, ensure_hub_reachable
from genmedseg.vae.sd_vae import FrozenSDVAE
from genmedseg.vae.taesd import FrozenTinyVAE

TINY_VAE_ENV = "GENMEDSEG_VAE"
DEFAULT_TINY_VAE = "madebyollin/taesd"
SD_VAE_ENV = "GENMEDSEG_SD_VAE"
DEFAULT_SD_VAE = "stabilityai/stable-diffusion-2/vae"
DIFFUSERS_SUBFOLDER = "vae"
FULL_MODEL_VAE_PREFIX = "first_stage_model."
# Every convolution of an LDM/SD autoencoder normalises with 32 groups; the tensor shapes cannot tell it.
LDM_NORM_GROUPS = 32

_HUB_ID = re.compile(r"^[\w][\w.-]*/[\w][\w.-]*(/[\w][\w.-]*)*$")

TINY_VAE_HELP = (
    "Supply tiny-autoencoder weights in one of these ways: `--vae DIR` (short for `--pretrained vae=DIR`) where DIR "
    "holds one <name>_encoder.pth + <name>_decoder.pth pair from github.com/madebyollin/taesd (taesd, taesdxl, "
    "taesd3, taef1 or taef2; or pass the *_encoder.pth file itself); `--vae DIR` with a diffusers AutoencoderTiny "
    f"folder (config.json + diffusion_pytorch_model.safetensors); the environment variable {TINY_VAE_ENV} set to "
    f"either; or go online so that the hub id '{DEFAULT_TINY_VAE}' can be downloaded."
)
SD_VAE_HELP = (
    "Supply Stable Diffusion VAE weights with `--vae SOURCE` (short for `--pretrained vae=SOURCE`), SOURCE being "
    "a diffusers AutoencoderKL folder (config.json + "
    "diffusion_pytorch_model.safetensors, directly or in a vae/ subfolder); a single SD 1.x/2.x .ckpt or "
    ".safetensors file (a full model, or a first-stage file such as GMS's 768-v-ema-first-stage-VAE.ckpt); the "
    f"environment variable {SD_VAE_ENV} set to either; or go online so that a hub id such as "
    f"'{DEFAULT_SD_VAE}' or 'stabilityai/sd-vae-ft-mse' can be downloaded."
)


def load_tiny_vae(source: str | Path | None = None) -> FrozenTinyVAE:
    """Load a frozen TAESD-family autoencoder (float32, eval mode) from a folder, file or hub id.

    ``source`` may be a folder with a ``*_encoder.pth`` / ``*_decoder.pth`` pair, the ``*_encoder.pth``
    file itself, a diffusers ``AutoencoderTiny`` folder, or a hub id such as ``madebyollin/taesd`` (the
    paper's choice). ``None`` means ``$GENMEDSEG_VAE``, else ``madebyollin/taesd``. The latent channels and
    the mid-block GroupNorm variant are read from the weights.
    """
    return TINY_VAE.load(source)


def _load_tiny_vae_from(text: str) -> FrozenTinyVAE:
    path = Path(text).expanduser()
    if path.is_file():
        return _tiny_from_pth_pair(path, _decoder_beside(path))
    if path.is_dir():
        model_folder = _diffusers_model_folder(path)
        if model_folder is None:
            return _tiny_from_pth_pair(*_find_pth_pair(path))
        return _tiny_from_diffusers(str(model_folder), subfolder=None)
    return _tiny_from_diffusers(*_parse_hub_id(text, TINY_VAE_HELP), hub=True)


def load_sd_vae(source: str | Path | None = None, config: Mapping[str, Any] | None = None) -> FrozenSDVAE:
    """Load a frozen Stable Diffusion VAE (float32, eval mode) from a folder, single file or hub id.

    ``source`` may be a diffusers ``AutoencoderKL`` folder (with or without a ``vae/`` subfolder), a single
    SD 1.x/2.x ``.ckpt`` / ``.safetensors`` file (keys prefixed ``first_stage_model.``, or a first-stage
    file with unprefixed ``encoder.*`` / ``decoder.*`` / ``quant_conv.*`` keys, under ``state_dict`` or not),
    or a hub id such as ``stabilityai/sd-vae-ft-mse`` or ``stabilityai/stable-diffusion-2/vae``. ``None``
    means ``$GENMEDSEG_SD_VAE``, else ``stabilityai/stable-diffusion-2/vae`` (the VAE GMS uses).
    For a single file the architecture is read from the tensor shapes; ``config`` overrides entries of the
    ``AutoencoderKL`` config that shapes cannot tell (``norm_num_groups``, ``scaling_factor``).
    """
    return FrozenSDVAE(_sd_vae_from(SD_VAE.resolve(source).source, config or {}))


def _sd_vae_from(text: str, config: Mapping[str, Any]) -> Any:
    path = Path(text).expanduser()
    if path.is_file():
        return _sd_from_single_file(path, config)
    if path.is_dir():
        model_folder = _diffusers_model_folder(path)
        if model_folder is None:
            raise WeightsError(f"{path} holds no config.json (neither directly nor in vae/). {SD_VAE_HELP}")
        return _diffusers_from_pretrained("AutoencoderKL", str(model_folder), None, SD_VAE_HELP)
    repo_id, subfolder = _parse_hub_id(text, SD_VAE_HELP)
    return _diffusers_from_pretrained("AutoencoderKL", repo_id, subfolder, SD_VAE_HELP, hub=True)


def _parse_hub_id(text: str, help_text: str) -> tuple[str, str | None]:
    """``owner/name[/subfolder]`` -> (repo id, subfolder); anything else is a missing local path."""
    if not _HUB_ID.match(text):
        raise WeightsError(f"{text} does not exist (and is not a Hugging Face hub id 'owner/name'). {help_text}")
    owner, name, *subfolder = text.split("/")
    return f"{owner}/{name}", "/".join(subfolder) or None


def _diffusers_model_folder(folder: Path) -> Path | None:
    """``folder`` or its vae/ subfolder, whichever holds a diffusers config.json; None if neither does."""
    for candidate in (folder, folder / DIFFUSERS_SUBFOLDER):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _find_pth_pair(folder: Path) -> tuple[Path, Path]:
    encoders = sorted(folder.glob("*_encoder.pth"))
    pairs = [(encoder, _decoder_path(encoder)) for encoder in encoders if _decoder_path(encoder).is_file()]
    if len(pairs) == 1:
        return pairs[0]
    if not pairs:
        found = ", ".join(path.name for path in sorted(folder.iterdir())[:10]) or "nothing"
        raise WeightsError(
            f"{folder} holds no <name>_encoder.pth + <name>_decoder.pth pair and no diffusers config.json "
            f"(found: {found}). {TINY_VAE_HELP}"
        )
    raise WeightsError(
        f"{folder} holds several encoder/decoder pairs ({', '.join(encoder.name for encoder, _ in pairs)}): "
        f"choose one by passing its encoder file, e.g. {pairs[0][0]}"
    )


def _decoder_path(encoder: Path) -> Path:
    return encoder.with_name(encoder.name.removesuffix("_encoder.pth") + "_decoder.pth")


def _decoder_beside(encoder: Path) -> Path:
    if not encoder.name.endswith("_encoder.pth"):
        raise WeightsError(f"{encoder} is not a <name>_encoder.pth file. {TINY_VAE_HELP}")
    decoder = _decoder_path(encoder)
    if not decoder.is_file():
        raise WeightsError(f"{decoder} is missing: the decoder must lie beside {encoder.name}. {TINY_VAE_HELP}")
    return decoder


def _tiny_from_pth_pair(encoder: Path, decoder: Path) -> FrozenTinyVAE:
    states = []
    for path in (encoder, decoder):
        try:
            states.append(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # torch raises many types for unreadable files; all mean the same here
            raise WeightsError(f"cannot read {path} as a PyTorch state dict: {error}. {TINY_VAE_HELP}") from error
    try:
        return FrozenTinyVAE.from_taesd_state_dicts(*states)
    except WeightsError as error:
        raise WeightsError(f"{encoder} / {decoder.name}: {error}") from error


def _tiny_from_diffusers(name: str, subfolder: str | None, hub: bool = False) -> FrozenTinyVAE:
    autoencoder = _diffusers_from_pretrained("AutoencoderTiny", name, subfolder, TINY_VAE_HELP, hub)
    return FrozenTinyVAE.from_diffusers(autoencoder)


def _diffusers_from_pretrained(
    class_name: str, name: str, subfolder: str | None, help_text: str, hub: bool = False
) -> Any:
    """``diffusers.<class_name>.from_pretrained`` in float32, with failures turned into WeightsError.

    ``hub``: ``name`` is a hub id, which must be in the local cache or reachable (checked at once).
    """
    import diffusers

    cached = hub and ensure_hub_reachable(name, subfolder, help_text)
    try:
        return getattr(diffusers, class_name).from_pretrained(
            name, subfolder=subfolder, torch_dtype=torch.float32, local_files_only=cached
        )
    except Exception as error:  # hub, network, file and config errors come in many types; all mean "no weights"
        where = f"{name} (subfolder {subfolder})" if subfolder else name
        raise WeightsError(f"cannot load a diffusers {class_name} from {where}: {error}. {help_text}") from error


def _sd_from_single_file(path: Path, config_overrides: Mapping[str, Any]) -> Any:
    """An ``AutoencoderKL`` from an LDM-format checkpoint, converted with diffusers' own single-file utilities."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        create_vae_diffusers_config_from_ldm,
        load_single_file_checkpoint,
    )

    try:
        checkpoint = load_single_file_checkpoint(str(path))
    except Exception as error:  # torch / safetensors raise many types for unreadable files
        raise WeightsError(f"cannot read {path} as a checkpoint: {error}. {SD_VAE_HELP}") from error
    ddconfig = _ldm_vae_ddconfig(checkpoint, path)
    config = create_vae_diffusers_config_from_ldm(
        {"model": {"params": {"first_stage_config": {"params": {"ddconfig": ddconfig}}}}}, checkpoint
    )
    config["norm_num_groups"] = LDM_NORM_GROUPS
    config.update(config_overrides)
    autoencoder = AutoencoderKL.from_config(config)
    try:
        autoencoder.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, config))
    except RuntimeError as error:
        raise WeightsError(f"{path} does not fit the AutoencoderKL read from its shapes ({config}): {error}") from error
    return autoencoder


def _ldm_vae_ddconfig(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The LDM ``ddconfig`` of the autoencoder in ``checkpoint``, read from its tensor shapes."""
    prefix = FULL_MODEL_VAE_PREFIX if any(key.startswith(FULL_MODEL_VAE_PREFIX) for key in checkpoint) else ""
    vae_state = {key.removeprefix(prefix): value for key, value in checkpoint.items() if key.startswith(prefix)}
    try:
        stem = vae_state["encoder.conv_in.weight"]
        base_channels = stem.shape[0]
        levels = sorted({int(key.split(".")[2]) for key in vae_state if key.startswith("encoder.down.")})
        blocks = {int(key.split(".")[4]) for key in vae_state if key.startswith("encoder.down.0.block.")}
        level_channels = [vae_state[f"encoder.down.{level}.block.0.conv2.weight"].shape[0] for level in levels]
        z_channels = vae_state["decoder.conv_in.weight"].shape[1]
        out_channels = vae_state["decoder.conv_out.weight"].shape[0]
    except (KeyError, IndexError, ValueError) as error:
        raise WeightsError(
            f"{path} holds no Stable Diffusion VAE (expected keys such as 'encoder.conv_in.weight' and "
            f"'encoder.down.0.block.0.conv2.weight', with or without the prefix '{FULL_MODEL_VAE_PREFIX}'; "
            f"missing {error}). {SD_VAE_HELP}"
        ) from error
    return {
        "in_channels": stem.shape[1],
        "out_ch": out_channels,
        "ch": base_channels,
        "ch_mult": [channels // base_channels for channels in level_channels],
        "num_res_blocks": len(blocks),
        "z_channels": z_channels,
    }


TINY_VAE = PretrainedPart(
    description="frozen tiny autoencoder (TAESD family)",
    loader=_load_tiny_vae_from,
    architecture=FrozenTinyVAE.from_config,
    environment=TINY_VAE_ENV,
    default=DEFAULT_TINY_VAE,
    help=TINY_VAE_HELP,
)
SD_VAE = PretrainedPart(
    description="frozen Stable Diffusion VAE",
    loader=lambda source: FrozenSDVAE(_sd_vae_from(source, {})),
    architecture=FrozenSDVAE.from_config,
    environment=SD_VAE_ENV,
    default=DEFAULT_SD_VAE,
    help=SD_VAE_HELP,
)
