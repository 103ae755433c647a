"""Haar pyramid against PyWavelets and hand-computed bands; LiteVAE-style encoder sizes, shapes and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from genmedseg.errors import ConfigError
from genmedseg.models.wavelet import ChannelUNet, ResBlock, WaveletEncoder, group_norm, haar_pyramid


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_haar_pyramid_matches_pywavelets_coarsest_coefficients_divided_by_two_to_the_level() -> None:
    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    pyramid = haar_pyramid(images, levels=(1, 2, 3))
    for level, bands in zip((1, 2, 3), pyramid, strict=True):
        approximation, details = pywt.wavedec2(images.double().numpy(), "haar", level=level, axes=(-2, -1))[:2]
        expected = np.concatenate([approximation, *details], axis=1) / 2**level
        assert bands.shape == (2, 12, 16 // 2**level, 24 // 2**level)
        np.testing.assert_allclose(bands.numpy(), expected, atol=1e-5)


def test_haar_pyramid_runs_in_bfloat16() -> None:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for full, half in zip(haar_pyramid(images), haar_pyramid(images.bfloat16()), strict=True):
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), full, atol=2e-2, rtol=2e-2)


def test_haar_bands_are_band_major_and_hand_computed() -> None:
    # Two colour channels of one 2x2 image [[a, b], [c, d]]: LL = mean, H = (a+b-c-d)/4, V = (a-b+c-d)/4,
    # D = (a-b-c+d)/4 after the level-1 division by 2.
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [0.0, 0.0]]]])
    (bands,) = haar_pyramid(images, levels=(1,))
    #                         LL(c0, c1)  H(c0, c1)    V(c0, c1)   D(c0, c1)
    expected = torch.tensor([2.5, 0.5, -1.0, 0.5, -0.5, 0.0, 0.0, 0.0])
    torch.testing.assert_close(bands.flatten(), expected)


def test_constant_image_gives_its_intensity_as_ll_and_zero_details_at_every_level() -> None:
    intensities = torch.tensor([0.2, 0.5, 0.9])
    images = intensities.view(1, 3, 1, 1).expand(2, 3, 32, 16)
    for bands in haar_pyramid(images):
        torch.testing.assert_close(bands[:, :3], intensities.view(1, 3, 1, 1).expand_as(bands[:, :3]))
        assert bands[:, 3:].abs().max() < 1e-6


def test_haar_pyramid_carries_no_gradient() -> None:
    images = torch.rand(1, 3, 8, 8, requires_grad=True)
    assert not any(bands.requires_grad for bands in haar_pyramid(images))


def test_haar_pyramid_names_the_size_and_the_fix_when_sides_are_not_divisible() -> None:
    with pytest.raises(ValueError, match=r"divisible by 8, got 36x32.*40x32"):
        haar_pyramid(torch.rand(1, 3, 36, 32))
    with pytest.raises(ValueError, match="strictly increasing"):
        haar_pyramid(torch.rand(1, 3, 8, 8), levels=(2, 1))


def test_group_norm_groups_divide_narrow_widths() -> None:
    assert [group_norm(channels, 16).num_groups for channels in (8, 12, 32, 96)] == [8, 4, 16, 16]


def test_resblock_skip_is_identity_or_one_by_one_convolution() -> None:
    assert isinstance(ResBlock(16, 16).skip, torch.nn.Identity)
    assert ResBlock(16, 32).skip.kernel_size == (1, 1)


def test_channel_unet_keeps_the_spatial_size() -> None:
    unet = ChannelUNet(5, 7, model_channels=8, ch_mult=(1, 2))
    assert unet(torch.rand(2, 5, 6, 10)).shape == (2, 7, 6, 10)


def test_wavelet_encoder_has_the_published_parameter_counts() -> None:
    encoder = WaveletEncoder(latent_channels=4)
    assert [count_parameters(extractor) for extractor in encoder.extractors] == [258_204] * 3
    assert count_parameters(encoder.aggregator) == 261_080
    assert count_parameters(encoder) == 1_035_692


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 48)])
def test_wavelet_encoder_latent_is_an_eighth_of_the_image(height: int, width: int) -> None:
    encoder = WaveletEncoder(model_channels=8, ch_mult=(1, 2))
    mean, logvar = encoder(torch.rand(2, 3, height, width))
    assert encoder.downsample_factor == 8
    assert mean.shape == logvar.shape == (2, 4, height // 8, width // 8)


def test_wavelet_encoder_clamps_logvar() -> None:
    encoder = WaveletEncoder(model_channels=8, ch_mult=(1,))
    with torch.no_grad():
        encoder.aggregator.out_conv.bias[4:] = 100.0
    _, logvar = encoder(torch.rand(1, 3, 16, 16))
    assert torch.all(logvar == 20.0)


def test_wavelet_encoder_rejects_bad_configuration_and_input() -> None:
    with pytest.raises(ConfigError, match="levels"):
        WaveletEncoder(levels=(0, 1))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        WaveletEncoder(model_channels=8, ch_mult=(1,))(torch.rand(1, 1, 16, 16))


def test_gradients_reach_every_encoder_parameter() -> None:
    torch.manual_seed(0)
    encoder = WaveletEncoder()
    mean, logvar = encoder(torch.rand(2, 3, 16, 16))
    (mean.square().mean() + logvar.mean()).backward()
    parameters = encoder.named_parameters()
    starved = [name for name, parameter in parameters if parameter.grad is None or not parameter.grad.any()]
    assert starved == []


def _saved_bytes_and_gradients(encoder: WaveletEncoder, images: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Bytes the encoder's forward keeps for the backward pass, and the gradients of a loss."""
    saved: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    encoder.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        mean, logvar = encoder(images)
    (mean.square().mean() + logvar.mean()).backward()
    return sum(saved.values()), [parameter.grad.clone() for parameter in encoder.parameters()]


def test_gradient_checkpointing_gives_the_same_gradients_from_a_fraction_of_the_activations() -> None:
    torch.manual_seed(0)
    encoder = WaveletEncoder(model_channels=8)
    images = torch.rand(2, 3, 64, 64)
    kept, gradients = _saved_bytes_and_gradients(encoder, images)
    for unet in (*encoder.extractors, encoder.aggregator):
        unet.gradient_checkpointing = True
    kept_checkpointed, gradients_checkpointed = _saved_bytes_and_gradients(encoder, images)
    for gradient, gradient_checkpointed in zip(gradients, gradients_checkpointed, strict=True):
        torch.testing.assert_close(gradient_checkpointed, gradient, rtol=0, atol=0)
    assert kept_checkpointed < kept / 3


def test_encoder_is_deterministic_under_a_seed() -> None:
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        outputs.append(WaveletEncoder(model_channels=8, ch_mult=(1, 2))(images))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_sample_uses_the_generator_and_the_variance() -> None:
    mean = torch.full((1, 4, 100, 100), 3.0)
    logvar = torch.full_like(mean, float(np.log(4.0)))
    draws = [WaveletEncoder.sample(mean, logvar, torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    assert abs(draws[0].mean().item() - 3.0) < 0.05
    assert abs(draws[0].std().item() - 2.0) < 0.05
    torch.testing.assert_close(WaveletEncoder.sample(mean, torch.full_like(mean, -30.0)), mean)
