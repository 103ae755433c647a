"""Frozen autoencoders: TAESD-family architecture and loading, SD VAE wrapper, frozen semantics, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genmedseg.errors import ConfigError, WeightsError
from genmedseg.vae import FrozenSDVAE, FrozenTinyVAE, detect_tiny_vae_config, load_sd_vae, load_tiny_vae, loading

TINY_WIDTH = 8
VARIANTS = [
    pytest.param({"latent_channels": 4, "use_midblock_gn": False}, id="taesd"),
    pytest.param({"latent_channels": 32, "use_midblock_gn": True}, id="taef2"),
]


def _tiny_vae(seed: int = 0, **config: object) -> FrozenTinyVAE:
    torch.manual_seed(seed)
    return FrozenTinyVAE(channels=TINY_WIDTH, **config)


def _save_pth_pair(vae: FrozenTinyVAE, folder: Path, name: str = "tiny") -> Path:
    """Write the pair as the original files are: plain fp16 state dicts of the two Sequentials."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in ("encoder", "decoder"):
        state = {key: value.half() for key, value in getattr(vae, part).state_dict().items()}
        torch.save(state, folder / f"{name}_{part}.pth")
    return folder


def _round_to_fp16(vae: FrozenTinyVAE) -> FrozenTinyVAE:
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.copy_(parameter.half().float())
    return vae


def _images(height: int = 32, width: int = 32, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _dice(prediction: torch.Tensor, target: torch.Tensor) -> float:
    prediction, target = prediction > 0.5, target > 0.5
    return 2.0 * (prediction & target).sum().item() / (prediction.sum() + target.sum()).item()


# --- architecture ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "encoder_params", "decoder_params"),
    [
        ({"latent_channels": 4}, 1_222_532, 1_222_531),  # TAESD, counts from the Wave-GMS spec
        ({"latent_channels": 32, "use_midblock_gn": True}, 1_338_528, 1_338_499),  # TAEF2, counts of the .pth
    ],
)
def test_parameter_counts_match_the_released_weights(config: dict, encoder_params: int, decoder_params: int) -> None:
    vae = FrozenTinyVAE(**config)
    assert sum(p.numel() for p in vae.encoder.parameters()) == encoder_params
    assert sum(p.numel() for p in vae.decoder.parameters()) == decoder_params


def test_key_names_follow_the_original_sequentials() -> None:
    vae = _tiny_vae(latent_channels=32, use_midblock_gn=True)
    encoder_keys, decoder_keys = set(vae.encoder.state_dict()), set(vae.decoder.state_dict())
    assert {"0.weight", "1.conv.0.weight", "2.weight", "11.pool.0.weight", "11.pool.1.bias", "14.bias"} <= encoder_keys
    assert "2.bias" not in encoder_keys  # the stride-2 convolutions have no bias
    assert {key.split(".")[0] for key in encoder_keys if ".pool." in key} == {"11", "12", "13"}
    assert {"1.weight", "3.pool.3.weight", "7.weight", "19.bias"} <= decoder_keys
    assert {key.split(".")[0] for key in decoder_keys if ".pool." in key} == {"3", "4", "5"}


def test_shapes_for_sizes_multiple_of_8() -> None:
    vae = _tiny_vae(latent_channels=4)
    latents = vae.encode(_images(40, 56))
    assert latents.shape == (2, 4, 5, 7)
    images = vae.decode(latents)
    assert images.shape == (2, 3, 40, 56)
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_wrong_shapes_say_what_was_expected() -> None:
    vae = _tiny_vae(latent_channels=4)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(_images(36, 40))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        vae.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
        vae.decode(torch.rand(1, 16, 4, 4))


def test_soft_clamp_bounds_latents_before_decoding() -> None:
    vae = _tiny_vae(latent_channels=4)
    clamp = vae.decoder[0]
    values = torch.tensor([0.0, 3.0, 1e6])
    assert torch.allclose(clamp(values), torch.tensor([0.0, 3.0 * float(np.tanh(1.0)), 3.0]))


# --- frozen semantics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vae_factory", [lambda: _tiny_vae(latent_channels=4), lambda: FrozenSDVAE(_tiny_kl())], ids=["tiny", "sd"]
)
def test_frozen_parameters_eval_mode_and_gradient_to_the_decoder_input(vae_factory) -> None:
    vae = vae_factory()
    parent = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), vae)
    parent.train()
    assert not any(p.requires_grad for p in vae.parameters())
    assert not any(module.training for module in vae.modules())
    assert parent[0].training

    latents = (torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5).requires_grad_()
    vae.decode(latents).mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def _decoder_input_gradient(vae: FrozenTinyVAE, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Decoded images, the gradient of a fixed projection of them with respect to ``latents``, and the bytes that the
    autograd graph keeps for the backward pass."""
    kept = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += tensor.numel() * tensor.element_size()
        return tensor

    latents = latents.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        images = vae.decoder(latents)
    projection = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    (images * projection).sum().backward()
    return images.detach(), latents.grad, kept


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_memory_lean_frozen_layers_give_the_plain_layers_gradient_and_keep_far_less(memory_format) -> None:
    """The frozen decoder's convolutions keep no input and its ReLUs a boolean mask: the same images and input
    gradient as plain nn.Conv2d / nn.ReLU (which they become once their weights are trainable), under a third of the
    memory kept for backward."""
    vae = _tiny_vae(latent_channels=4, use_midblock_gn=True).to(memory_format=memory_format)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latents = latents.contiguous(memory_format=memory_format)
    lean_images, lean_gradient, lean_kept = _decoder_input_gradient(vae, latents)
    vae.requires_grad_(True)
    plain_images, plain_gradient, plain_kept = _decoder_input_gradient(vae, latents)
    assert torch.equal(lean_images, plain_images)
    assert torch.allclose(lean_gradient, plain_gradient, rtol=1e-5, atol=1e-7)
    assert lean_kept < plain_kept / 3
    assert lean_gradient.is_contiguous(memory_format=memory_format)  # backward in the forward's layout: no reorders


def test_memory_lean_frozen_layers_under_bf16_autocast_give_a_float32_gradient() -> None:
    vae = _tiny_vae(latent_channels=4)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean_images, lean_gradient, _ = _decoder_input_gradient(vae, latents)
        vae.requires_grad_(True)
        plain_images, plain_gradient, _ = _decoder_input_gradient(vae, latents)
    assert lean_gradient.dtype == torch.float32
    assert torch.equal(lean_images, plain_images) and torch.allclose(lean_gradient, plain_gradient, rtol=1e-2)


# --- config ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", VARIANTS)
def test_config_rebuilds_the_architecture(config: dict) -> None:
    vae = _tiny_vae(**config)
    saved = json.loads(json.dumps(vae.config))
    assert saved == {**config, "channels": TINY_WIDTH}
    rebuilt = FrozenTinyVAE.from_config(saved)
    rebuilt.load_state_dict(vae.state_dict())
    images = _images()
    assert torch.equal(rebuilt.decode(rebuilt.encode(images)), vae.decode(vae.encode(images)))


def test_unknown_config_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="latent_chanels"):
        FrozenTinyVAE.from_config({"latent_chanels": 4})


# --- .pth pair format --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", VARIANTS)
def test_pth_pair_round_trip_is_strict_and_exact(config: dict, tmp_path: Path) -> None:
    original = _round_to_fp16(_tiny_vae(**config))
    loaded = load_tiny_vae(_save_pth_pair(original, tmp_path))
    assert loaded.config == original.config
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    images = _images()
    assert torch.equal(loaded.encode(images), original.encode(images))
    latents = original.encode(images)
    assert torch.equal(loaded.decode(latents), original.decode(latents))


@pytest.mark.parametrize("config", VARIANTS)
def test_config_is_detected_from_the_state_dicts(config: dict) -> None:
    vae = FrozenTinyVAE(channels=16, **config)
    assert detect_tiny_vae_config(vae.encoder.state_dict(), vae.decoder.state_dict()) == {**config, "channels": 16}


def test_detection_rejects_mismatched_or_foreign_state_dicts() -> None:
    four, thirty_two = _tiny_vae(latent_channels=4), _tiny_vae(latent_channels=32)
    with pytest.raises(WeightsError, match="writes 4 latent channels but the decoder reads 32"):
        detect_tiny_vae_config(four.encoder.state_dict(), thirty_two.decoder.state_dict())
    with pytest.raises(WeightsError, match="not a TAESD-family encoder/decoder pair"):
        detect_tiny_vae_config({"conv.weight": torch.zeros(1)}, {})


def test_strict_loading_reports_missing_keys(tmp_path: Path) -> None:
    folder = _save_pth_pair(_tiny_vae(latent_channels=32, use_midblock_gn=True), tmp_path)
    decoder = torch.load(folder / "tiny_decoder.pth", weights_only=True)
    del decoder["4.pool.1.weight"]
    torch.save(decoder, folder / "tiny_decoder.pth")
    with pytest.raises(WeightsError, match=r"(?s)tiny_encoder\.pth.*Missing key.*4\.pool\.1\.weight"):
        load_tiny_vae(folder)


# --- diffusers AutoencoderTiny -----------------------------------------------------------------------------------


def _tiny_diffusers(seed: int = 0, **overrides: object):
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    widths = (TINY_WIDTH,) * 4
    return AutoencoderTiny(encoder_block_out_channels=widths, decoder_block_out_channels=widths, **overrides).eval()


@pytest.mark.parametrize("subfolder", ["", "vae"])
def test_diffusers_folder_gives_the_same_outputs_as_diffusers(subfolder: str, tmp_path: Path) -> None:
    reference = _tiny_diffusers(latent_channels=4)
    reference.save_pretrained(tmp_path / subfolder)
    vae = load_tiny_vae(tmp_path)
    assert vae.config == {"latent_channels": 4, "use_midblock_gn": False, "channels": TINY_WIDTH}

    images = _images()
    with torch.no_grad():
        expected_latents = reference.encode(images * 2 - 1).latents  # diffusers takes [-1, 1]
        expected_images = ((reference.decode(expected_latents).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(vae.encode(images), expected_latents, rtol=0, atol=1e-6)
    torch.testing.assert_close(vae.decode(expected_latents), expected_images, rtol=0, atol=1e-6)


def test_diffusers_and_pth_formats_hold_the_same_weights(tmp_path: Path) -> None:
    reference = _tiny_diffusers(latent_channels=16)
    reference.save_pretrained(tmp_path / "diffusers")
    from_diffusers = _round_to_fp16(load_tiny_vae(tmp_path / "diffusers"))
    from_pth = load_tiny_vae(_save_pth_pair(from_diffusers, tmp_path / "pth"))
    images = _images()
    assert from_pth.config == from_diffusers.config
    assert torch.equal(from_pth.decode(from_pth.encode(images)), from_diffusers.decode(from_diffusers.encode(images)))


def test_foreign_autoencoder_tiny_config_is_refused() -> None:
    with pytest.raises(WeightsError, match=r"act_fn='silu' \(expected 'relu'\)"):
        FrozenTinyVAE.from_diffusers(_tiny_diffusers(act_fn="silu"))


# --- sources: hub id, environment variable, errors ---------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """Replace ``from_pretrained`` of both diffusers autoencoders by an offline stand-in that records its calls."""
    import diffusers

    calls: list[tuple[str, str | None]] = []

    def tiny(name: str, subfolder: str | None = None, **_: object):
        calls.append((name, subfolder))
        return _tiny_diffusers()

    def kl(name: str, subfolder: str | None = None, **_: object):
        calls.append((name, subfolder))
        return _tiny_kl()

    monkeypatch.setattr(diffusers.AutoencoderTiny, "from_pretrained", tiny)
    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", kl)
    monkeypatch.setattr(loading, "ensure_hub_reachable", lambda *_: False)  # "online, nothing cached"
    return calls


def test_default_source_is_the_papers_hub_id(fake_hub: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENMEDSEG_VAE", raising=False)
    assert load_tiny_vae().latent_channels == 4
    assert fake_hub == [("madebyollin/taesd", None)]


def test_environment_variable_names_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_pth_pair(_tiny_vae(latent_channels=32, use_midblock_gn=True), tmp_path / "taef2")
    _save_pth_pair(_tiny_vae(latent_channels=4), tmp_path / "taesd")
    monkeypatch.setenv("GENMEDSEG_VAE", str(tmp_path / "taef2"))
    assert load_tiny_vae().latent_channels == 32
    assert load_tiny_vae(tmp_path / "taesd").latent_channels == 4  # an explicit source wins


def test_unreachable_hub_says_how_to_supply_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    def offline(*_: object, **__: object):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(diffusers.AutoencoderTiny, "from_pretrained", offline)
    monkeypatch.setattr(loading, "ensure_hub_reachable", lambda *_: False)
    with pytest.raises(WeightsError) as error:
        load_tiny_vae("madebyollin/taesd")
    message = str(error.value)
    for hint in (
        "couldn't connect",
        "--vae DIR",
        "_encoder.pth",
        "github.com/madebyollin/taesd",
        "config.json",
        "GENMEDSEG_VAE",
        "go online",
        "'madebyollin/taesd'",
    ):
        assert hint in message


def test_offline_a_missing_hub_part_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and an empty hub cache: the error that says how to supply weights comes in under 2 seconds."""
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("GENMEDSEG_VAE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")  # resolves nowhere, online or not
    started = time.perf_counter()
    with pytest.raises(WeightsError, match=r"madebyollin/taesd is not in the local Hugging Face cache.*--vae DIR"):
        load_tiny_vae()
    assert time.perf_counter() - started < 2.0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        load_tiny_vae("madebyollin/taesd")


def test_missing_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"does not exist .*--vae DIR"):
        load_tiny_vae(tmp_path / "nowhere")


def test_folder_without_weights_lists_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "taesd_encoder.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"holds no <name>_encoder\.pth \+ <name>_decoder\.pth pair.*taesd_encoder"):
        load_tiny_vae(tmp_path)


def test_several_pairs_ask_for_the_encoder_file(tmp_path: Path) -> None:
    _save_pth_pair(_tiny_vae(latent_channels=4), tmp_path, "taesd")
    _save_pth_pair(_tiny_vae(latent_channels=32, use_midblock_gn=True), tmp_path, "taef2")
    with pytest.raises(WeightsError, match=r"several encoder/decoder pairs \(taef2_encoder\.pth, taesd_encoder\.pth\)"):
        load_tiny_vae(tmp_path)
    assert load_tiny_vae(tmp_path / "taef2_encoder.pth").config["use_midblock_gn"]


def test_encoder_file_without_its_decoder(tmp_path: Path) -> None:
    _save_pth_pair(_tiny_vae(latent_channels=4), tmp_path, "taesd")
    (tmp_path / "taesd_decoder.pth").unlink()
    with pytest.raises(WeightsError, match=r"taesd_decoder\.pth is missing"):
        load_tiny_vae(tmp_path / "taesd_encoder.pth")


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    _save_pth_pair(_tiny_vae(latent_channels=4), tmp_path, "taesd")
    (tmp_path / "taesd_decoder.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read .*taesd_decoder\.pth"):
        load_tiny_vae(tmp_path)


# --- Stable Diffusion VAE ----------------------------------------------------------------------------------------

SD_SCALING = 0.18215


def _tiny_kl(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()


def _ldm_state(diffusers_state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Rename diffusers AutoencoderKL keys to the original LDM ones (inverse of diffusers' single-file mapping)."""
    renames = [
        (r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}"),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"down_blocks\.(\d)\.resnets\.", r"down.\1.block."),
        (r"down_blocks\.(\d)\.downsamplers\.0\.", r"down.\1.downsample."),
        (r"up_blocks\.(\d)\.resnets\.", lambda m: f"up.{levels - 1 - int(m[1])}.block."),
        (r"up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m[1])}.upsample."),
        (r"conv_shortcut", "nin_shortcut"),
        (r"conv_norm_out", "norm_out"),
        (r"attn_1\.group_norm", "attn_1.norm"),
        (r"attn_1\.to_(q|k|v)\.", r"attn_1.\1."),
        (r"attn_1\.to_out\.0\.", "attn_1.proj_out."),
    ]
    ldm = {}
    for key, value in diffusers_state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        # LDM's attention projections are 1x1 convolutions
        ldm[key] = value[:, :, None, None] if ".attn_1." in key and value.ndim == 2 else value
    return ldm


def _assert_same_sd_vae(vae: FrozenSDVAE, reference) -> None:
    images = _images()
    with torch.no_grad():
        posterior = reference.encode(images * 2 - 1).latent_dist
        expected_images = ((reference.decode(posterior.mean).sample + 1) / 2).clamp(0, 1)
    mean, logvar = vae.encode(images)
    torch.testing.assert_close(mean, posterior.mean * SD_SCALING, rtol=0, atol=1e-6)
    torch.testing.assert_close(logvar, posterior.logvar, rtol=0, atol=1e-6)
    # decode divides by the scaling factor again: float32 rounding of mean * s / s
    torch.testing.assert_close(vae.decode(mean), expected_images, rtol=0, atol=1e-5)


def test_inverse_key_mapping_of_the_test_is_exact() -> None:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    reference = _tiny_kl()
    state = reference.state_dict()
    converted = convert_ldm_vae_checkpoint(_ldm_state(state, levels=2), dict(reference.config))
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[key], state[key]) for key in state)


@pytest.mark.parametrize("subfolder", ["", "vae"])
def test_sd_vae_from_diffusers_folder(subfolder: str, tmp_path: Path) -> None:
    reference = _tiny_kl()
    reference.save_pretrained(tmp_path / subfolder)
    vae = load_sd_vae(tmp_path)
    assert vae.scaling_factor == SD_SCALING and vae.latent_channels == 4 and vae.downscale_factor == 2
    _assert_same_sd_vae(vae, reference)


def test_sd_vae_from_first_stage_ckpt(tmp_path: Path) -> None:
    reference = _tiny_kl()
    path = tmp_path / "768-v-ema-first-stage-VAE.ckpt"
    torch.save({"state_dict": _ldm_state(reference.state_dict(), levels=2)}, path)
    vae = load_sd_vae(path, config={"norm_num_groups": 8})
    assert vae.config["block_out_channels"] == [8, 16] and vae.config["layers_per_block"] == 1
    _assert_same_sd_vae(vae, reference)


def test_sd_vae_from_full_model_safetensors(tmp_path: Path) -> None:
    reference = _tiny_kl()
    state = {f"first_stage_model.{key}": value for key, value in _ldm_state(reference.state_dict(), 2).items()}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, 4, 3, 3)
    path = tmp_path / "sd.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    _assert_same_sd_vae(load_sd_vae(path, config={"norm_num_groups": 8}), reference)


def test_sd_vae_config_rebuilds_the_architecture() -> None:
    vae = FrozenSDVAE(_tiny_kl())
    rebuilt = FrozenSDVAE.from_config(json.loads(json.dumps(vae.config)))
    rebuilt.load_state_dict(vae.state_dict())
    _assert_same_sd_vae(rebuilt, vae.autoencoder)


def test_sd_vae_hub_id_with_subfolder(fake_hub: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENMEDSEG_SD_VAE", raising=False)
    load_sd_vae()
    load_sd_vae("stabilityai/sd-vae-ft-mse")
    assert fake_hub == [("stabilityai/stable-diffusion-2", "vae"), ("stabilityai/sd-vae-ft-mse", None)]


def test_sd_vae_errors_say_how_to_supply_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"does not exist .*single SD 1\.x/2\.x \.ckpt"):
        load_sd_vae(tmp_path / "missing.ckpt")
    with pytest.raises(WeightsError, match=r"holds no config\.json"):
        load_sd_vae(tmp_path)
    torch.save({"state_dict": {"model.diffusion_model.out.weight": torch.zeros(1)}}, tmp_path / "unet.ckpt")
    with pytest.raises(WeightsError, match=r"unet\.ckpt holds no Stable Diffusion VAE"):
        load_sd_vae(tmp_path / "unet.ckpt")


# --- real weights ------------------------------------------------------------------------------------------------


def test_taef2_weights_keep_a_binary_disc(shared_weights: Path) -> None:
    vae = load_tiny_vae(shared_weights / "taesd")
    assert vae.config == {"latent_channels": 32, "use_midblock_gn": True, "channels": 64}
    rows, cols = np.mgrid[:256, :256]
    disc = torch.from_numpy(((rows - 128) ** 2 + (cols - 128) ** 2 < 64**2).astype(np.float32))[None, None]
    with torch.no_grad():
        latents = vae.encode(disc.expand(1, 3, 256, 256))
        reconstruction = vae.decode(latents).mean(dim=1, keepdim=True)
    assert latents.shape == (1, 32, 32, 32)
    dice = _dice(reconstruction, disc)
    assert dice > 0.99
    assert dice == pytest.approx(0.9995, abs=5e-4)


def test_taef2_weights_reconstruct_a_dermoscopy_image(shared_weights: Path, shared_data: Path) -> None:
    """PSNR separates the right mid-block GroupNorm (4 groups: 38 dB) from near misses (8 groups: 32 dB)."""
    from PIL import Image

    vae = load_tiny_vae(shared_weights / "taesd")
    image = Image.open(shared_data / "isic2017" / "images" / "test_0001.png").convert("RGB").resize((256, 256))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        reconstruction = vae.decode(vae.encode(pixels))
    psnr = 10 * torch.log10(1.0 / ((reconstruction - pixels) ** 2).mean()).item()
    assert psnr == pytest.approx(37.96, abs=0.05)
