"""The shared diffusion process: every sampler recovers a known clean sample from an exact denoiser."""

from __future__ import annotations

import pytest
import torch

from genmedseg.errors import ConfigError
from genmedseg.models.base import image_generators
from genmedseg.models.diffusion import SAMPLERS, GaussianDiffusion


def oracle(diffusion: GaussianDiffusion, clean: torch.Tensor):
    """The exact noise prediction for data that is always ``clean``: eps = (x_t - sqrt(ab) x_0) / sqrt(1 - ab)."""
    alphas = diffusion.scheduler.alphas_cumprod

    def denoise(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        bar = alphas[t].view(-1, 1, 1, 1).to(noisy)
        return (noisy - bar.sqrt() * clean) / (1 - bar).sqrt()

    return denoise


@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 1000), ("ddpm", 50), ("ddim", 20), ("dpm-solver", 10)])
def test_samplers_recover_the_clean_sample(sampler: str, steps: int) -> None:
    diffusion = GaussianDiffusion()
    clean = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4).repeat(3, 1, 1, 1)
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sample = diffusion.sample(oracle(diffusion, clean), noise, image_generators(0, "abc"), sampler, steps)
    assert torch.allclose(sample, clean, atol=0.02)


def test_one_generator_per_sample_makes_samples_independent_of_their_batch() -> None:
    diffusion = GaussianDiffusion()
    zero = torch.zeros(1, 1, 4, 4)

    def denoise(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * noisy  # anything: the ancestral noise is what differs

    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    together = diffusion.sample(denoise, noise, image_generators(0, ["a", "b"]), "ddpm", 20)
    alone = diffusion.sample(denoise, noise[1:], image_generators(0, ["b"]), "ddpm", 20)
    assert torch.equal(together[1:], alone) and not torch.equal(together[:1], zero)


def test_learned_variance_output_is_accepted_by_every_sampler() -> None:
    diffusion = GaussianDiffusion(learned_variance=True)
    clean = torch.full((1, 1, 4, 4), 0.5)
    exact = oracle(diffusion, clean)

    def denoise(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([exact(noisy, t), torch.zeros_like(noisy)], dim=1)  # v = 0: the smaller variance

    for sampler in SAMPLERS:
        sample = diffusion.sample(denoise, torch.randn(1, 1, 4, 4), image_generators(0, "a"), sampler, 25)
        assert torch.allclose(sample, clean, atol=0.05), sampler


def test_model_evaluations_and_bad_settings() -> None:
    diffusion = GaussianDiffusion()
    assert diffusion.model_evaluations("dpm-solver", 20) == 20
    assert diffusion.model_evaluations("ddpm", 1000) == 1000
    with pytest.raises(ConfigError, match="choose one of ddpm, ddim, dpm-solver"):
        diffusion.make_sampler("euler", 10)
    with pytest.raises(ConfigError, match="choose 1 to 1000"):
        diffusion.make_sampler("ddim", 0)
