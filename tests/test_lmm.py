"""Latent mapping models: published parameter counts, shapes at any latent size, attention math, SKFF and SFT."""

from __future__ import annotations

import math

import pytest
import torch

from genmedseg.errors import ConfigError
from genmedseg.models.lmm import HEAD_NAMES, SKFF, ResAttnUNetDS, SFTLayer, SFTUNetDS, SpatialSelfAttention
from genmedseg.models.wavelet import haar_pyramid


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def starved_parameters(module: torch.nn.Module) -> list[str]:
    return [name for name, parameter in module.named_parameters() if parameter.grad is None or not parameter.grad.any()]


def test_published_parameter_counts() -> None:
    lmm = ResAttnUNetDS(in_channels=4, out_channels=4)
    assert count_parameters(lmm) == 1_564_976
    assert count_parameters(lmm.heads) == 9_728
    assert count_parameters(SFTUNetDS(in_channels=4, out_channels=4)) == 2_995_712
    assert count_parameters(SKFF()) == 13


@pytest.mark.parametrize(("height", "width"), [(8, 8), (12, 16), (28, 28)])
def test_resattn_unet_returns_four_heads_at_the_latent_size(height: int, width: int) -> None:
    outputs = ResAttnUNetDS()(torch.randn(1, 4, height, width))
    assert list(outputs) == list(HEAD_NAMES)
    assert all(output.shape == (1, 4, height, width) for output in outputs.values())


def test_both_lmms_handle_32_channel_latents() -> None:
    latents = torch.randn(2, 32, 12, 16)
    assert ResAttnUNetDS(32, 32, channels=8)(latents)["out"].shape == (2, 32, 12, 16)
    assert SFTUNetDS(32, 32, channels=8)(latents, torch.randn(2, 3, 12, 16))["out"].shape == (2, 32, 12, 16)


def test_attention_equals_the_explicit_softmax_formula() -> None:
    torch.manual_seed(0)
    attention = SpatialSelfAttention(8)
    for parameter in attention.parameters():
        torch.nn.init.normal_(parameter)  # non-trivial norm affine and biases
    x = torch.randn(2, 8, 3, 5)
    normed = attention.norm(x).flatten(2)
    query, key, value = (
        layer.weight[:, :, 0, 0] @ normed + layer.bias[:, None]
        for layer in (attention.query, attention.key, attention.value)
    )
    weights = torch.softmax(query.transpose(1, 2) @ key / math.sqrt(8), dim=-1)  # (B, query pos, key pos)
    attended = (value @ weights.transpose(1, 2)).reshape(x.shape)
    expected = x + attention.proj(attended)
    # float32 rounding differs between CPU kernels (AVX2, AVX-512) by about 1e-5 here; a wrong formula by O(1).
    torch.testing.assert_close(attention(x), expected, atol=1e-4, rtol=1e-4)


def test_resattn_unet_init_is_kaiming_fan_out_with_zero_biases() -> None:
    torch.manual_seed(0)
    lmm = ResAttnUNetDS()
    convolutions = [module for module in lmm.modules() if isinstance(module, torch.nn.Conv2d)]
    assert all(not conv.bias.any() for conv in convolutions if conv.bias is not None)
    deepest = lmm.encoder[3].residual.body[-1]  # 128 -> 128 conv3x3, 147,456 weights
    assert deepest.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.02)


def test_gradients_reach_every_parameter_of_both_lmms_and_skff() -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 64, 64)
    # The inverted image has negated detail bands, so SKFF's PReLU sees a negative input and its slope a gradient.
    images = torch.cat([image, 1 - image])
    resattn = ResAttnUNetDS()
    sum(output.mean() for output in resattn(torch.randn(2, 4, 8, 8)).values()).backward()
    assert starved_parameters(resattn) == []

    skff, sft_unet = SKFF(), SFTUNetDS()
    guidance = skff(haar_pyramid(images, levels=(3,))[0][:, 3:])
    sum(output.mean() for output in sft_unet(torch.randn(2, 4, 8, 8), guidance).values()).backward()
    assert starved_parameters(sft_unet) == []
    assert starved_parameters(skff) == []


def test_lmm_is_deterministic_under_a_seed() -> None:
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    outputs = []
    for _ in range(2):
        torch.manual_seed(0)
        outputs.append(ResAttnUNetDS(channels=8)(latents)["out"])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


def test_skff_weights_the_bands_by_a_softmax() -> None:
    horizontal, vertical, diagonal = 1.0, 2.0, 6.0
    bands = torch.cat([torch.full((1, 3, 4, 4), value) for value in (horizontal, vertical, diagonal)], dim=1)
    skff = SKFF()
    with torch.no_grad():
        for expand in skff.expand:
            expand.weight.zero_()
    torch.testing.assert_close(skff(bands), torch.full((1, 3, 4, 4), 3.0))  # uniform weights: the band mean

    with torch.no_grad():
        skff.squeeze[0].weight.fill_(1.0)  # descriptor 1 + 2 + 6 = 9 > 0, PReLU passes it unchanged
        skff.expand[2].weight.fill_(10.0)
    torch.testing.assert_close(skff(bands), torch.full((1, 3, 4, 4), diagonal))


def test_sft_is_scale_times_features_plus_shift() -> None:
    sft = SFTLayer(channels=4, guidance_channels=3, hidden=8)
    with torch.no_grad():
        for conv, bias in ((sft.gamma, 2.0), (sft.beta, 0.5)):
            conv.weight.zero_()
            conv.bias.fill_(bias)
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(sft(x, torch.randn(2, 3, 5, 6)), 2.0 * x + 0.5)


def test_lmms_reject_bad_configuration_and_guidance() -> None:
    with pytest.raises(ConfigError, match="ch_mult needs 4 entries"):
        ResAttnUNetDS(ch_mult=(1, 2, 4))
    with pytest.raises(ValueError, match=r"guidance must have shape \(1, 3, 8, 8\)"):
        SFTUNetDS(channels=8)(torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16, 16))
